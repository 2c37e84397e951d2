"""The PNG figures of ``tinycompress report``, each drawn from ``report.json``'s content only.

Pass rate against IR tokens (a Pareto plot with 95% intervals), pass rate by intent feature,
latency against parameters, learning curves against wall time, and the scaling trend with
its extrapolation marked as such.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from learner import report_analysis as an


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return str(path)


def pareto(report: dict, path: Path) -> str:
    """Test (filled) and held-out (hollow) pass rate with its interval against mean IR tokens;
    the line joins the test points no other arm beats on both axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    front = []
    for i, (name, info) in enumerate(report["arms"].items()):
        colour = f"C{i % 10}"
        for split, face in (("test", colour), ("heldout", "none")):
            s = info["splits"].get(split)
            if s is None:
                continue
            lo, hi = s["ci95"]
            ax.errorbar(s["ir_tokens_mean"], s["pass_rate"], yerr=[[s["pass_rate"] - lo], [hi - s["pass_rate"]]],
                        fmt="s" if info["kind"] == "recorded" else "o", color=colour, mfc=face, capsize=3,
                        label=f"{info['label']} ({split}, n={s['n']})")
            if split == "test":
                front.append((s["ir_tokens_mean"], s["pass_rate"]))
    frontier = [p for p in front if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in front)]
    if frontier:
        xs, ys = zip(*sorted(frontier))
        ax.plot(xs, ys, "k:", lw=1, label="Pareto front (test)")
    ax.axhline(an.FLOORS["pass_rate"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("IR tokens per intent (mean)"), ax.set_ylabel("pass rate (95% Wilson interval)")
    ax.set_title("Pass rate against IR tokens", fontsize=10)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, never on them
    return _save(fig, path)


def features(report: dict, path: Path) -> str:
    """Pass rate of each measured arm on the rows with each intent feature (both splits)."""
    plt = _plt()
    table = report["features"]
    names = list(table)
    arms = [a for a in report["arms"] if report["arms"][a]["kind"] != "recorded"]
    fig, ax = plt.subplots(figsize=(8.5, 0.16 * len(names) * max(1, len(arms)) + 1.5))
    height = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        vals = [table[f].get(arm, {}).get("pass_rate", np.nan) for f in names]
        ax.barh(np.arange(len(names)) + j * height, vals, height, label=report["arms"][arm]["label"])
    ax.set_yticks(np.arange(len(names)) + height * (len(arms) - 1) / 2)
    ax.set_yticklabels([f"{f} (n={max(c['n'] for c in table[f].values())})" for f in names], fontsize=7)
    ax.axvline(an.HANDLED, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1), ax.set_xlabel("pass rate (test + heldout)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def latency(report: dict, path: Path) -> str:
    """Batch-1 latency p50 (marker) to p95 (bar top) against parameters; rules as lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, info) in enumerate(report["arms"].items()):
        lat = info["splits"]["test"]["latency_ms"] if "test" in info["splits"] else None
        if lat is None:
            continue
        if info["params"] == 0:
            ax.axhline(lat["p50"], color=f"C{i % 10}", ls="-.", lw=1, label=f"{info['label']} p50")
            continue
        ax.errorbar(info["params"], lat["p50"], yerr=[[0], [lat["p95"] - lat["p50"]]], capsize=3,
                    fmt="s" if info["kind"] == "recorded" else "o", color=f"C{i % 10}",
                    label=info["label"] if info["kind"] == "recorded" else f"{info['label']} ({info['device']})")
    ax.axhline(an.FLOORS["latency_p50_ms"], color="grey", lw=0.8, ls="--", label="floor")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("parameters"), ax.set_ylabel("latency per intent, ms (p50, bar to p95)")
    ax.set_title("Greedy batch-1 latency on test", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def curves(report: dict, path: Path) -> str:
    """Validation pass rate against each run's cumulative wall seconds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in report["curves"]:
        xs, ys = zip(*c["points"])
        ax.plot(xs, ys, marker=".", label=f"{c['name']} ({c['stage']}, {c['device'] or 'device not logged'})")
    ax.set_xlabel("training wall time, s"), ax.set_ylabel("validation pass rate")
    ax.set_title("Learning curves", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def scaling(report: dict, path: Path) -> str:
    """Test pass rate and IR tokens against parameters, the fitted trend, and (dashed, shaded)
    its extrapolation to the target size."""
    plt = _plt()
    points, fit = report["scaling"]["points"], report["scaling"]["fit"]
    target = report["thresholds"]["target_params"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "pass_rate", "test pass rate"), (axes[1], "ir_tokens_mean", "IR tokens")):
        for p in points:
            ax.plot(p["params"], p[key], "s" if p["kind"] == "recorded" else "o", color="C0")
            ax.annotate(p["label"], (p["params"], p[key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if fit:
            lo, hi = min(p["params"] for p in points), max(p["params"] for p in points)
            inside = np.logspace(math.log10(lo), math.log10(hi), 20)
            beyond = np.logspace(math.log10(hi), math.log10(max(target, hi)), 20)
            ax.plot(inside, [an.predict(fit, x)[key] for x in inside], "C1-", label="fitted trend")
            ax.plot(beyond, [an.predict(fit, x)[key] for x in beyond], "C1--", label="extrapolation")
            ax.axvspan(hi, max(target, hi), color="C1", alpha=0.08)
        ax.set_xscale("log"), ax.set_xlabel("parameters"), ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def draw_all(report: dict, folder: Path) -> dict[str, str]:
    """Every figure the report's content allows, by name -> PNG path."""
    drawn = {"pareto": pareto(report, folder / "pareto.png"),
             "features": features(report, folder / "features.png"),
             "latency": latency(report, folder / "latency_params.png"),
             "scaling": scaling(report, folder / "scaling.png")}
    if report["curves"]:
        drawn["curves"] = curves(report, folder / "learning_curves.png")
    return drawn
