"""PPO (RLlib, token-level environment) against GRPO (ours): curves and a throughput table.

Reads two run folders (``metrics.jsonl`` and ``warm_start_eval.json`` of a ``tinycompress
train`` run; ``metrics.jsonl`` of a ``tinycompress ppo`` run) and draws greedy val pass rate
and IR tokens against programs sampled and against CPU hours (summed training ``step_time``,
evaluations not counted, times the cores both runs held). Prints one JSON line per run:
programs and env steps (tokens) sampled, wall seconds, programs/s, and for PPO where an
iteration's time went (sampling vs learning, RLlib's smoothed timers as medians; per env step,
the env and the module's forward).

    python benchmarks/plot_ppo_vs_grpo.py --grpo runs/cmp/grpo --ppo runs/cmp/ppo \\
        --out docs/img/ppo_vs_grpo.png --json docs/bench/ppo_vs_grpo.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def grpo_points(folder: Path) -> tuple[list[dict], dict]:
    """(val points with programs and seconds so far, totals) of a ``tinycompress train`` run."""
    rows, points, programs, seconds = read(folder), [], 0, 0.0
    start = folder / "warm_start_eval.json"
    if start.exists():
        w = json.loads(start.read_text())
        points.append({"programs": 0, "seconds": 0.0, "pass": w["val_pass_rate"], "tokens": w["val_ir_tokens"]})
    tokens = 0.0
    for r in rows:
        n = round(r["samples_per_s"] * r["step_time"])  # programs sampled this step
        programs, seconds, tokens = programs + n, seconds + r["step_time"], tokens + n * r["ir_tokens"]
        if "val_pass_rate" in r:
            points.append({"programs": programs, "seconds": seconds, "pass": r["val_pass_rate"],
                           "tokens": r["val_ir_tokens"]})
    totals = {"steps": len(rows), "programs": programs, "seconds": round(seconds, 1),
              "programs_per_s": round(programs / seconds, 2) if seconds else None,
              "t_generate_share": round(sum(r["t_generate"] for r in rows) / seconds, 3) if seconds else None,
              "t_update_share": round(sum(r["t_update"] for r in rows) / seconds, 3) if seconds else None}
    return points, totals


def ppo_points(folder: Path, warm: dict | None) -> tuple[list[dict], dict]:
    """The same for a ``tinycompress ppo`` run (``warm``: the shared warm start's val point)."""
    rows, points, seconds = read(folder), ([warm] if warm else []), 0.0
    for r in rows:
        seconds += r["step_time"]
        if r.get("val_pass_rate") is not None:
            points.append({"programs": r["episodes"], "seconds": seconds, "pass": r["val_pass_rate"],
                           "tokens": r["val_ir_tokens"]})
    last = rows[-1] if rows else {}
    programs, steps = last.get("episodes", 0), last.get("env_steps", 0)

    def med(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    totals = {"iterations": len(rows), "programs": programs, "env_steps": steps, "seconds": round(seconds, 1),
              "programs_per_s": round(programs / seconds, 3) if seconds else None,
              "env_steps_per_s": round(steps / seconds, 2) if seconds else None,
              # RLlib's timers are smoothed over iterations: medians, not per-iteration sums
              "step_time_median": med("step_time"), "t_sample_median": med("t_sample"),
              "t_update_median": med("t_update"),
              "env_step_ms_median": med("env_step_ms"), "inference_ms_median": med("inference_ms")}
    return points, totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grpo", required=True, type=Path, help="a tinycompress train run folder")
    p.add_argument("--ppo", required=True, type=Path, help="a tinycompress ppo run folder")
    p.add_argument("--cores", type=float, default=2, help="cores each run held (wall hours x cores = CPU hours)")
    p.add_argument("--out", required=True, help="PNG of the four panels")
    p.add_argument("--json", help="also write the points and totals here")
    a = p.parse_args()
    grpo, grpo_tot = grpo_points(a.grpo)
    warm = grpo[0] if grpo and grpo[0]["programs"] == 0 else None
    ppo, ppo_tot = ppo_points(a.ppo, warm)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for label, points, colour in (("GRPO (ours)", grpo, "tab:blue"), ("PPO (RLlib)", ppo, "tab:orange")):
        for row, key in enumerate(("pass", "tokens")):
            for col, x in enumerate(("programs", "cpu_h")):
                xs = [q["programs"] if x == "programs" else q["seconds"] * a.cores / 3600 for q in points]
                axes[row][col].plot(xs, [q[key] for q in points], "o-", color=colour, label=label, ms=3)
    for col, name in enumerate(("programs sampled", "CPU hours (training steps only)")):
        axes[1][col].set_xlabel(name)
        for row in range(2):
            axes[row][col].set_xscale("symlog", linthresh=100 if col == 0 else 0.01)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy val pass rate")
    axes[1][0].set_ylabel("greedy val IR tokens")
    axes[0][0].legend()
    fig.suptitle("PPO vs GRPO from the same warm start, same intents, same reward")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(json.dumps({"grpo": grpo_tot}))
    print(json.dumps({"ppo": ppo_tot}))
    if a.json:
        Path(a.json).write_text(json.dumps({"grpo": {"totals": grpo_tot, "points": grpo},
                                            "ppo": {"totals": ppo_tot, "points": ppo}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
