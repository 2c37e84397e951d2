"""Plot GRPO curves from run folders: reward, pass rate and IR tokens against step.

Training curves (sampled programs, rolling mean over ``--window`` steps) on the left three
panels; greedy val (with the warm start as step 0, from ``warm_start_eval.json``) on the right.

    python benchmarks/plot_grpo.py --out docs/img/grpo_curves.png LABEL=runs/grpo_10m ...

``--frontier PNG`` also draws every greedy val evaluation of every run as a point (IR tokens
against pass rate) with the warm start marked: a run that shortens at an equal pass rate
has points left of the warm start and no lower.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


COLORS = [plt.get_cmap("tab20")(i) for i in range(0, 20, 2)] + [plt.get_cmap("tab20")(i) for i in range(1, 20, 2)]
MARKERS = "osD^v"  # a run past the 20 colours gets the next marker, never dropped


def style(i: int) -> tuple:
    """(colour, marker) of the i-th run."""
    return COLORS[i % len(COLORS)], MARKERS[(i // len(COLORS)) % len(MARKERS)]


def rolling(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--frontier", help="also write the val pass rate vs IR tokens scatter here")
    p.add_argument("--time", help="also write greedy val pass rate and IR tokens against training hours here")
    p.add_argument("--cores", type=float, default=2,
                   help="cores the runs held, to turn wall hours into CPU hours on --time's axis")
    p.add_argument("--from-step", type=int, default=0,
                   help="plot the curves from this step on (runs resumed from one checkpoint share what came before)")
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (holding metrics.jsonl; the last = splits)")
    a = p.parse_args()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    panels = [("reward_mean", "reward (sampled)"), ("pass_rate", "pass rate (sampled)"),
              ("ir_tokens", "IR tokens (sampled)")]
    val = [("val_reward", "val reward (greedy)"), ("val_pass_rate", "val pass rate (greedy)"),
           ("val_ir_tokens", "val IR tokens (greedy)")]
    runs = [(label, [json.loads(line) for line in open(Path(folder) / "metrics.jsonl")], Path(folder))
            for label, folder in (run.rsplit("=", 1) for run in a.runs)]
    for i, (label, rows, folder) in enumerate(runs):
        color, marker = style(i)
        rows = [r for r in rows if r["step"] >= a.from_step]
        steps = [r["step"] for r in rows]
        for ax, (key, name) in zip(axes[0], panels):
            ax.plot(steps, rolling([r[key] for r in rows], a.window), color=color,
                    label=f"{label} (mean of {a.window})")
            ax.set(xlabel="step", ylabel=name)
        evals = val_evals(rows, folder)
        warm = next((e for e in evals if e["step"] == 0), None)
        if a.from_step > 0:  # the warm start as a line, not a point far to the left
            evals = [e for e in evals if e["step"] >= a.from_step]
        for ax, (key, name) in zip(axes[1], val):
            ax.plot([r["step"] for r in evals], [r[key] for r in evals], marker=marker, color=color, label=label)
            ax.set(xlabel="step (0 = warm start)", ylabel=name)
            if a.from_step > 0 and warm and i == 0:
                ax.axhline(warm[key], color="k", linestyle="--", alpha=0.5, label="warm start")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("GRPO from the 10m warm start (CPU; each run's B, G and lr in its config.yaml)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    if a.frontier:
        frontier(runs, a.frontier)
    if a.time:
        against_time(runs, a.time, a.cores)


def val_evals(rows: list[dict], folder: Path) -> list[dict]:
    """The run's greedy val evaluations, the warm start (step 0) first when it was saved."""
    start = folder / "warm_start_eval.json"
    return ([json.loads(start.read_text())] if start.exists() else []) + [r for r in rows if "val_pass_rate" in r]


def against_time(runs: list[tuple[str, list[dict], Path]], out: str, cores: float) -> None:
    """Greedy val pass rate and IR tokens against CPU hours: the summed ``step_time`` of the
    steps before each evaluation (evaluation itself not counted) times ``cores``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, rows, folder) in enumerate(runs):
        color, marker = style(i)
        hours, elapsed = {0: 0.0}, 0.0
        for r in rows:
            elapsed += r.get("step_time", 0.0)
            hours[r["step"]] = elapsed * cores / 3600
        evals = [e for e in val_evals(rows, folder) if e["step"] in hours]
        for ax, key, name in zip(axes, ("val_pass_rate", "val_ir_tokens"),
                                 ("val pass rate (greedy)", "val IR tokens (greedy)")):
            ax.plot([hours[e["step"]] for e in evals], [e[key] for e in evals], marker=marker,
                    color=color, label=label)
            ax.set(xlabel=f"CPU hours ({cores:g} cores x wall hours of training steps)", ylabel=name)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def frontier(runs: list[tuple[str, list[dict], Path]], out: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    warm = None
    for i, (label, rows, folder) in enumerate(runs):
        color, marker = style(i)
        evals = val_evals(rows, folder)
        warm = next((e for e in evals if e["step"] == 0), warm)
        later = [e for e in evals if e["step"] > 0]
        ax.plot([e["val_ir_tokens"] for e in later], [e["val_pass_rate"] for e in later], marker=marker,
                linestyle=":", alpha=0.8, color=color, label=label)
    if warm:
        ax.plot([warm["val_ir_tokens"]], [warm["val_pass_rate"]], marker="*", markersize=16, color="k",
                linestyle="none", label="warm start")
        ax.axhline(warm["val_pass_rate"], color="k", alpha=0.3)
        ax.axvline(warm["val_ir_tokens"], color="k", alpha=0.3)
    ax.set(xlabel="val IR tokens (greedy, lower is shorter)", ylabel="val pass rate (greedy)",
           title="Every greedy val evaluation: the target is up and to the left of the star")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
