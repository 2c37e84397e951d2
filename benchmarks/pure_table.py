"""The table of the pure-GRPO study: every arm on test and heldout, with its training cost.

    python benchmarks/pure_table.py --data data/default [--runs runs/pure] [--bench docs/bench/pure]

Reads the ``tinycompress eval --out`` reports that ``benchmarks/grpo_10m_pure.sh`` writes
(``BENCH/{test,heldout}_{forms,minimal,pure}.json``), the shipped warm start's and the guided
recipe's recorded reports (``docs/bench/eval_10m_shipped_*`` and ``eval_grpo_try32_step580_*``),
scores the rule-based baseline plain and in minimal form on the same rows, and prints a
markdown table (also ``BENCH/table.json``). Training cost: the SFT runs' ``sft_summary.json``
seconds on the cores they held, GRPO's summed ``step_time`` up to the chosen step on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rollout.baseline import RuleBasedCompressor, evaluate_compressor  # noqa: E402
from rollout.datagen.dataset import read_split  # noqa: E402
from validator_actors.tokens import TokenCounter  # noqa: E402

SPLITS = ("test", "heldout")


def _figures(report: dict) -> dict:
    m = report.get("model", report)
    return {"pass_rate": m["pass_rate"], "tokens": m["program_tokens_mean"],
            "compression": m["compression_mean"], "n": m["n"]}


def _grpo_hours(run: Path, cores: float = 2.0) -> tuple[float, int]:
    """(CPU hours of training steps up to the best checkpoint, its step)."""
    best = json.loads((run / "best" / "tinycompress.json").read_text()).get("step", 0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(r.get("step_time", 0.0) for r in rows if r["step"] <= best) * cores / 3600, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", default="runs/pure")
    ap.add_argument("--bench", default="docs/bench/pure")
    ap.add_argument("--pure", required=True, help="the chosen pure-GRPO run folder")
    a = ap.parse_args()
    bench, runs = Path(a.bench), Path(a.runs)
    sft = {k: json.loads((runs / f"sft_10m_{k}" / "sft_summary.json").read_text()) for k in ("forms", "minimal")}
    sft_h = {k: v["seconds"] / 3600 for k, v in sft.items()}  # one torch thread each
    pure_h, pure_step = _grpo_hours(Path(a.pure))
    arms = {
        "(a) shipped warm start (SFT, surface forms)": (
            {s: _figures(json.load(open(f"docs/bench/eval_10m_shipped_{s}_cpu.json"))) for s in SPLITS},
            "299 s on one H100 (recorded)"),
        "(b) exploring warm start (a + SFT on drawn forms)": (
            {s: _figures(json.load(open(bench / f"{s}_forms.json"))) for s in SPLITS},
            f"(a) + {sft_h['forms']:.2f} CPU h ({sft['forms']['steps']} steps of 64)"),
        "(c) SFT on minimal forms (from a, same budget as b)": (
            {s: _figures(json.load(open(bench / f"{s}_minimal.json"))) for s in SPLITS},
            f"(a) + {sft_h['minimal']:.2f} CPU h ({sft['minimal']['steps']} steps of 64)"),
        "(d) pure GRPO from (b), reward only": (
            {s: _figures(json.load(open(bench / f"{s}_pure.json"))) for s in SPLITS},
            f"(b) + {pure_h:.2f} CPU h ({pure_step} steps of 8x8)"),
        "(e) guided GRPO (rewrites, imitation, unlikelihood; recorded)": (
            {s: _figures(json.load(open(f"docs/bench/eval_grpo_try32_step580_{s}_cpu.json"))) for s in SPLITS},
            "(a) + about 3 CPU h (590 steps, recorded)"),
    }
    count, base = TokenCounter(Path(a.data) / "tokenizer"), RuleBasedCompressor()
    for name, fn in (("(f) rule-based baseline", base.compress),
                     ("(f) rule-based baseline, minimal form", base.compress_minimal)):
        figs = {}
        for s in SPLITS:
            rows = read_split(a.data, s).to_pylist()
            r = evaluate_compressor(fn, rows, count)
            figs[s] = {"pass_rate": r["pass_rate"], "tokens": r["program_tokens_mean"],
                       "compression": r["compression_mean"], "n": r["n"]}
        arms[name] = (figs, "none")
    print("| arm | test pass | test IR tokens | test compression | heldout pass | heldout IR tokens "
          "| heldout compression | training cost |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, (f, cost) in arms.items():
        t, h = f["test"], f["heldout"]
        print(f"| {name} | {t['pass_rate']:.1%} | {t['tokens']:.2f} | {t['compression']:.1%} | "
              f"{h['pass_rate']:.1%} | {h['tokens']:.2f} | {h['compression']:.1%} | {cost} |")
    (bench / "table.json").write_text(json.dumps({k: {"figures": f, "cost": c} for k, (f, c) in arms.items()},
                                                 indent=2) + "\n")


if __name__ == "__main__":
    main()
