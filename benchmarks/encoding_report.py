"""Summary, table and figures of the embedding-compression study (benchmarks/encoding_study.py).

Per (task, arm, ratio): the mean over seeds and its 95% Student-t interval; per ratio, the
paired t-test over seeds of ``learned`` against each two-stage arm (the same seed means the
same batches). With one seed an interval or test is not computable and is written ``null``
with the reason, never a made-up number.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

METRICS = {"sft": ("val_loss", "val_pass_rate"), "lm": ("val_ppl",)}
LABELS = {"val_loss": "val loss (nats/token)", "val_pass_rate": "greedy val pass rate", "val_ppl": "val perplexity"}
ARM_ORDER = ("reference", "learned", "autoencoder", "svd")


def mean_interval(values: list[float]) -> dict:
    """Mean, 95% t interval and n; the interval is null for fewer than two values, and of zero
    width when all values are equal."""
    x = np.asarray(values, dtype=float)
    out = {"n": len(x), "mean": float(x.mean()), "values": [float(v) for v in x]}
    if len(x) < 2:
        return out | {"ci95": None, "why_no_ci": "one seed"}
    sem = stats.sem(x)
    lo, hi = (float(x.mean()), float(x.mean())) if sem == 0 else stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sem)
    return out | {"ci95": [float(lo), float(hi)]}


def paired(a: list[float], b: list[float]) -> dict:
    """a - b over paired seeds: mean difference, its 95% t interval, two-sided paired t-test p."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"n": len(d), "mean_diff": float(d.mean())}
    if len(d) < 2:
        return out | {"ci95": None, "p": None, "why_no_test": "one seed"}
    if np.all(d == d[0]):
        return out | {"ci95": [float(d[0])] * 2, "p": None,
                      "why_no_test": "every seed gave the same difference (no variance to test)"}
    ci = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return out | {"ci95": [float(ci[0]), float(ci[1])], "p": float(stats.ttest_rel(a, b).pvalue)}


def summarize(results: list[dict], settings: dict) -> dict:
    by = defaultdict(dict)  # (task, arm, ratio) -> {seed: cell}
    for c in results:
        by[(c["task"], c["arm"], c["ratio"])][c["seed"]] = c
    expected = {(t, "reference", 1) for t in METRICS} | {
        (t, a, r) for t in METRICS for a in ARM_ORDER[1:] for r in settings["ratios"]}
    cells = []
    for (task, arm, ratio), seeds in sorted(by.items(), key=lambda kv: (kv[0][0], ARM_ORDER.index(kv[0][1]), kv[0][2])):
        first = next(iter(seeds.values()))
        row = {"task": task, "arm": arm, "ratio": ratio, "d_enc": first["d_enc"], "params": first["params"],
               "seeds": sorted(seeds), "picked_steps": [seeds[s]["picked_step"] for s in sorted(seeds)],
               "cpu_s": round(sum(c["cpu_s"] for c in seeds.values()), 1)}
        if first["ae_rel_error"] is not None:
            row["rel_error"] = mean_interval([seeds[s]["ae_rel_error"] for s in sorted(seeds)])
        for m in METRICS[task]:
            row[m] = mean_interval([seeds[s]["metrics"][m] for s in sorted(seeds)])
        cells.append(row)
    tests = []
    for task, metrics in METRICS.items():
        for other in ("autoencoder", "svd"):
            for ratio in settings["ratios"]:
                a, b = by.get((task, "learned", ratio), {}), by.get((task, other, ratio), {})
                common = sorted(set(a) & set(b))
                if not common:
                    continue
                for m in metrics:
                    tests.append({"task": task, "ratio": ratio, "a": "learned", "b": other, "metric": m, "seeds": common,
                                  **paired([a[s]["metrics"][m] for s in common], [b[s]["metrics"][m] for s in common])})
    budget = defaultdict(set)  # (task, seed) -> {(steps, tokens)}: one element when every arm trained alike
    for c in results:
        budget[(c["task"], c["seed"])].add((c["steps"], c["tokens"]))
    missing = sorted(f"{t}/{a}/{r}/seed{s}" for t, a, r in expected for s in settings["seeds"] if s not in by.get((t, a, r), {}))
    return {"settings": settings, "complete": not missing, "n_cells": len(results), "missing": missing,
            "equal_budget": all(len(v) == 1 for v in budget.values()),
            "budget": {f"{t}/seed{s}": sorted(v) for (t, s), v in sorted(budget.items())},
            "cpu_s": round(sum(c["cpu_s"] for c in results), 1), "cells": cells, "paired": tests}


def _fmt(m: dict, pct: bool) -> str:
    """``mean [lo, hi]``; a rate's interval is shown clipped to [0, 100%]."""
    scale, f = (100, "{:.1f}") if pct else (1, "{:.3f}" if m["mean"] < 100 else "{:.1f}")
    text = f.format(m["mean"] * scale)
    if m["ci95"] is not None:
        lo, hi = (max(0.0, m["ci95"][0]), min(1.0, m["ci95"][1])) if pct else m["ci95"]
        text += " [" + ", ".join(f.format(v * scale) for v in (lo, hi)) + "]"
    return text + ("%" if pct else "")


def table_markdown(summary: dict) -> str:
    lines = []
    for task, metrics in METRICS.items():
        rows = [c for c in summary["cells"] if c["task"] == task]
        if not rows:
            continue
        head = ["arm", "ratio", "d_enc", "seeds", "embedding params (trainable)", "total params", "reconstruction error",
                *(LABELS[m] + ", mean [95% CI]" for m in metrics), "picked steps"]
        lines += [f"**{task}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in rows:
            p = c["params"]
            rec = _fmt(c["rel_error"], False) if "rel_error" in c else "—"
            lines.append(f"| {c['arm']} | {c['ratio']}:1 | {c['d_enc']} | {len(c['seeds'])} "
                         f"| {p['embedding']:,} ({p['embedding_trainable']:,}) "
                         f"| {p['total']:,} | {rec} | " + " | ".join(_fmt(c[m], m == "val_pass_rate") for m in metrics)
                         + f" | {', '.join(map(str, c['picked_steps']))} |")
        lines.append("")
    lines += ["**paired tests** (a − b over seeds; p: two-sided paired t-test)", "",
              "| task | metric | ratio | a − b | seeds | mean diff [95% CI] | p |", "|---|---|---|---|---|---|---|"]
    for t in summary["paired"]:
        ci = "" if t["ci95"] is None else " [" + ", ".join(f"{v:.4f}" for v in t["ci95"]) + "]"
        p = f"{t['p']:.3f}" if t["p"] is not None else f"— ({t['why_no_test']})"
        lines.append(f"| {t['task']} | {t['metric']} | {t['ratio']}:1 | {t['a']} − {t['b']} | {t['n']} "
                     f"| {t['mean_diff']:.4f}{ci} | {p} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, task: str, path: Path) -> None:
    """One panel per metric of ``task``: metric against ratio, one line per arm with its 95%
    interval; the reference as a dashed line and band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = METRICS[task]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for arm in ARM_ORDER:
            rows = sorted((c for c in summary["cells"] if c["task"] == task and c["arm"] == arm), key=lambda c: c["ratio"])
            if not rows:
                continue
            mean = [c[m]["mean"] for c in rows]
            lo = [c[m]["ci95"][0] if c[m]["ci95"] else c[m]["mean"] for c in rows]
            hi = [c[m]["ci95"][1] if c[m]["ci95"] else c[m]["mean"] for c in rows]
            if m == "val_pass_rate":  # a rate's interval clipped to [0, 1]
                lo, hi = [max(0.0, v) for v in lo], [min(1.0, v) for v in hi]
            if arm == "reference":
                ax.axhline(mean[0], color="k", ls="--", lw=1, label="reference (full width, tied)")
                ax.axhspan(lo[0], hi[0], color="k", alpha=0.08)
                continue
            x = [c["ratio"] for c in rows]
            line, = ax.plot(x, mean, marker="o", label=arm)
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
            one = [(r, v) for r, v, c in zip(x, mean, rows) if c[m]["n"] == 1]
            if one:  # a single seed: no interval, drawn hollow
                ax.plot(*zip(*one), ls="", marker="o", mfc="white", color=line.get_color())
        ax.set_xscale("log", base=2)
        ratios = summary["settings"]["ratios"]
        ax.set_xticks(ratios, [f"{r}:1" for r in ratios])
        ax.set_xlabel("embedding compression (d_model / d_enc)")
        ax.set_ylabel(LABELS[m])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle({"sft": "compressor's supervised objective", "lm": "next-token LM on the intents"}[task]
                 + "\nmean over seeds and 95% CI; hollow: one seed, no interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: list[dict], settings: dict, out: Path) -> dict:
    """OUT/summary.json, OUT/table.md, OUT/encoding_sft.png, OUT/encoding_lm.png."""
    out = Path(out)
    summary = summarize(results, json.loads(json.dumps(settings)))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    (out / "table.md").write_text(table_markdown(summary))
    for task in METRICS:
        if any(c["task"] == task for c in summary["cells"]):
            plot(summary, task, out / f"encoding_{task}.png")
    return summary


def finite(x) -> bool:
    """Every number in a nested JSON value is finite (tests use it)."""
    if isinstance(x, dict):
        return all(finite(v) for v in x.values())
    if isinstance(x, list | tuple):
        return all(finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)
