"""GRPO throughput on Ray, side by side in one run.

1. Steps: samples/s and per-phase times (generate, score, update, sync) for 1 and 2 rollout
   workers, sync vs async, on the same config and warm start. Variants run in rounds, in
   alternating order (ABCD, DCBA, ...), so machine drift hits them alike; the first step of
   each run (actor warm-up) is dropped.
2. Weight sync: learner.weights() put once in the object store, copied into every rollout
   worker, for the 10m and 50m presets (median of repeats).

    python benchmarks/bench_grpo.py --data data/default --init serve/assets/compressor_10m \
        --out docs/bench/grpo_throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import ray

PHASES = ("t_generate", "t_score", "t_update", "t_sync", "step_time", "samples_per_s")


def bench_variant(cfg, data: str, init: str, mode: str, workers: int, steps: int, out: Path) -> list[dict]:
    from cluster.controller import GRPOController

    train = dataclasses.replace(cfg.train, mode=mode, rollout_workers=workers, steps=steps,
                                eval_every=10**6, checkpoint_every=10**6, tensorboard=False, patience=0)
    ctl = GRPOController(dataclasses.replace(cfg, train=train), data, init, out, log=lambda m: None)
    rows = []
    try:
        while ctl.step < steps:
            rows.append(ctl.train_step())
    finally:
        ctl.shutdown()
    return rows[1:]  # the first step pays for actor warm-up


def summarize(rows: list[dict]) -> dict:
    out = {k: round(statistics.mean(r[k] for r in rows), 3) for k in PHASES}
    samples = sum(r["samples_per_s"] * r["step_time"] for r in rows)  # B*G per step
    out["samples_per_s"] = round(samples / sum(r["step_time"] for r in rows), 2)
    out["steps"] = len(rows)
    out["staleness_max"] = max(r["staleness"] for r in rows)
    return out


def bench_sync(preset: str, repeats: int, workers: int = 2) -> dict:
    """Seconds to publish the learner's weights and copy them into ``workers`` rollout actors."""
    from transformers import AutoTokenizer

    from cluster.actors import LearnerActor, RolloutActor
    from learner.grpo_learner import GRPOConfig
    from learner.policy import PRESETS, build_policy, count_params, save_policy

    tok = AutoTokenizer.from_pretrained("serve/assets/compressor_10m")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_policy(PRESETS[preset], tok)
        params = count_params(model)
        save_policy(model, tok, PRESETS[preset], tmp, {"stage": "init"})
        del model
        learner = LearnerActor.options(num_cpus=0.5).remote(tmp, GRPOConfig())
        actors = [RolloutActor.options(num_cpus=0.5).remote(tmp) for _ in range(workers)]
        ray.get([a.version.remote() for a in actors] + [learner.device.remote()], timeout=600)
        times, put = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ref = learner.weights.remote()
            ray.wait([ref], timeout=600)
            t1 = time.perf_counter()
            ray.get([a.set_weights.remote(ref) for a in actors], timeout=600)
            times.append(time.perf_counter() - t0)
            put.append(t1 - t0)
            del ref
        for a in [learner, *actors]:
            ray.kill(a)
    return {"preset": preset, "params": params, "megabytes_fp32": round(params * 4 / 2**20, 1),
            "workers": workers, "sync_s_median": round(statistics.median(times), 4),
            "publish_s_median": round(statistics.median(put), 4), "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tune_configs/10m.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--init", default="serve/assets/compressor_10m")
    ap.add_argument("--steps", type=int, default=6, help="steps per run (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sync-repeats", type=int, default=5)
    ap.add_argument("--variants", default="sync/1,sync/2,async/1,async/2", help="MODE/WORKERS, comma-separated")
    ap.add_argument("--no-weight-sync", action="store_true", help="skip the 10m/50m weight sync part")
    ap.add_argument("--out", default="docs/bench/grpo_throughput.json")
    args = ap.parse_args()
    from learner.config import RunConfig

    cfg = RunConfig.from_yaml(args.config)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    variants = [(v.split("/")[0], int(v.split("/")[1])) for v in args.variants.split(",")]
    runs: dict[str, list[dict]] = {f"{m}/{w}": [] for m, w in variants}
    rounds: dict[str, list[float]] = {}  # samples/s of each variant per round (drift shows here)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode, workers in (variants if r % 2 == 0 else variants[::-1]):
                t0 = time.perf_counter()
                rows = bench_variant(cfg, args.data, args.init, mode, workers, args.steps,
                                     Path(tmp) / f"{mode}_{workers}_{r}")
                runs[f"{mode}/{workers}"] += rows
                rounds.setdefault(f"{mode}/{workers}", []).append(summarize(rows)["samples_per_s"])
                print(f"[bench] round {r} {mode:5s} workers={workers}: {summarize(rows)} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    table = {k: summarize(v) for k, v in runs.items()}
    base_key = next(iter(runs))
    for v in table.values():
        v[f"speedup_vs_{base_key}"] = round(v["samples_per_s"] / table[base_key]["samples_per_s"], 3)
    sync = [] if args.no_weight_sync else [bench_sync(p, args.sync_repeats) for p in ("10m", "50m")]
    ray.shutdown()
    result = {"machine": f"{platform.machine()} {os.cpu_count()} logical CPUs, {platform.platform()}",
              "config": args.config, "B": cfg.train.prompts_per_step, "G": cfg.train.group_size,
              "steps_per_run": args.steps, "rounds": args.rounds, "variants": table,
              "samples_per_s_by_round": rounds, "weight_sync": sync}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
