"""The study's figures (matplotlib, Agg): EM against K, EM per length bucket, training curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from learner.latent.data import FAMILIES

STYLE = {"latent": ("C3", "o", "-"), "shared": ("C1", "s", "-"), "query": ("C5", "P", "-"), "bm25": ("C0", "^", "--"),
         "last": ("C2", "v", "--"), "first": ("C7", "<", "--"), "mean": ("C4", "D", "--")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, axes, path: Path) -> None:
    """Label the EM panels (y axis on the first, legend on the last) and write the PNG."""
    axes[0].set_ylabel("test exact match (%)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(summary: dict, row: str, ks, metric: str) -> tuple[list, list, list]:
    xs, ys, es = [], [], []
    for k in ks:
        m = summary["table"].get(row, {}).get(k, {}).get(metric)
        if m and math.isfinite(m["mean"]):
            xs.append(k)
            ys.append(100 * m["mean"])
            es.append(0.0 if math.isnan(m["ci"]) else 100 * m["ci"])
    return xs, ys, es


def k_figure(summary: dict, budgets, path: Path) -> None:
    """Test EM overall and per family against K, one line per row (mean ± 95% t interval)."""
    plt = _plt()
    metrics = ["em", *[f"em.{f}" for f in FAMILIES]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), sharey=True)
    for ax, metric in zip(axes, metrics):
        for row, (color, marker, line) in STYLE.items():
            xs, ys, es = _series(summary, row, budgets, metric)
            if xs:
                ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, linestyle=line, capsize=3, label=row)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(budgets), [str(k) for k in budgets])
        ax.set_xlabel("K (latent vectors or tokens)")
        ax.set_title("all families" if metric == "em" else metric.split(".", 1)[1])
        ax.grid(alpha=0.3)
    _save(plt, fig, axes, path)


def bucket_figure(summary: dict, budgets, path: Path) -> None:
    """Test EM per context-length bucket, one panel per K; the full context where it fits."""
    from learner.latent.report import BUCKETS

    plt = _plt()
    fig, axes = plt.subplots(1, len(budgets), figsize=(4 * len(budgets), 3.4), sharey=True)
    axes = list(axes) if len(budgets) > 1 else [axes]
    for ax, k in zip(axes, budgets):
        for row, (color, marker, line) in STYLE.items():
            pts = [summary["table"].get(row, {}).get(k, {}).get(f"em.{b}") for b in BUCKETS]
            ys = [100 * p["mean"] if p else math.nan for p in pts]
            ax.plot(range(len(BUCKETS)), ys, color=color, marker=marker, linestyle=line, label=row)
        full = summary["table"].get("full", {}).get(0, {}).get(f"em.{BUCKETS[0]}")
        if full:
            ax.plot([0], [100 * full["mean"]], "k*", markersize=12, label="full context")
        ax.set_xticks(range(len(BUCKETS)), BUCKETS)
        ax.set_xlabel("context tokens")
        ax.set_title(f"K = {k}")
        ax.grid(alpha=0.3)
    _save(plt, fig, axes, path)


def curve_figure(runs: Path, path: Path, names: list[str] | None = None, seed: int = 0) -> None:
    """Training answer loss (smoothed) and validation answer loss of the run folders ``names``
    under ``runs`` (default: every run of ``seed``)."""
    plt = _plt()
    names = names or sorted(p.name for p in runs.iterdir() if p.name.endswith(f"-s{seed}")
                            and (p / "curve.jsonl").exists())
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 3.6))
    for name in names:
        rows = [json.loads(line) for line in (runs / name / "curve.jsonl").read_text().splitlines() if line]
        train = [(r["step"], r["answer_loss"]) for r in rows if "answer_loss" in r]
        val = [(r["step"], r["val_answer_loss"]) for r in rows if "val_answer_loss" in r]
        if train:
            w = max(1, len(train) // 40)
            xs = [train[i][0] for i in range(0, len(train) - w + 1, w)]
            ys = [sum(v for _, v in train[i:i + w]) / w for i in range(0, len(train) - w + 1, w)]
            ax_t.plot(xs, ys, label=name)
        if val:
            ax_v.plot(*zip(*val), marker=".", label=name)
    ax_t.set_title("training answer loss")
    ax_v.set_title("validation answer loss")
    for ax in (ax_t, ax_v):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_v.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
