"""Plot SFT curves (val pass rate and val loss against step) from sft_log.jsonl files.

    python benchmarks/plot_sft.py --out docs/img/sft_curves.png LABEL=path/to/sft_log.jsonl ...
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+", help="LABEL=path/to/sft_log.jsonl")
    a = p.parse_args()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for run in a.runs:
        label, path = run.split("=", 1)
        rows = [json.loads(line) for line in open(path)]
        steps = [r["step"] for r in rows]
        ax1.plot(steps, [r["val_pass_rate"] for r in rows], marker="o", label=label)
        ax2.plot(steps, [r["val_loss"] for r in rows], marker="o", label=label)
    ax1.set(xlabel="step", ylabel="val pass rate (greedy, fidelity hash)", ylim=(0, 1))
    ax2.set(xlabel="step", ylabel="val loss (completion tokens)", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Supervised warm start on the H100 (batch 128)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
