"""GRPO step time against the number of rollout workers, and what it projects to on a cluster.

1. Steps: the controller on ``--config`` (B intents x G samples a step) with 1, 2 and 4 rollout
   workers in one embedded Ray of ``--cpus`` logical CPUs (4 workers x 0.5 + learner 0.5 +
   validator 0.25 = 2.75 reserved: on a 2-core machine the logical CPUs outnumber the cores on
   purpose). Variants run in rounds in alternating order, the first step of each run dropped
   (``bench_grpo.bench_variant``).
2. Shards alone: one rollout worker generating a shard of B/W intents x G, W = 1, 2, 4, 8, with
   nothing else running: what each of W workers takes on a node of its own.
3. A projection from those measured phases (labelled as such in the output): the step time on
   N CPU nodes with one rollout worker each (shard of B/N + score + update + sync + the weights
   sent to each node at ``--net-gbps``), and the same with the update replaced by
   ``--gpu-update-s`` (a GPU learner; the default is an H100 SFT step of the 10m, see
   docs/CLUSTER.md).

    flock /tmp/tc_bench.lock python benchmarks/bench_scaling.py --data data/default \\
        --out docs/bench/grpo_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grpo import bench_variant, summarize  # noqa: E402

WORKERS = (1, 2, 4)
SHARDS = (1, 2, 4, 8)


def bench_shards(cfg, data: str, init: str, repeats: int) -> dict[int, float]:
    """Median seconds for one rollout worker, alone, to generate B/W intents x G, per W. Each
    repeat draws new intents (a batch decodes as long as its longest sample, so one batch of
    intents would stand for all)."""
    from cluster.actors import RolloutActor
    from rollout.datagen.dataset import read_split

    t, b = cfg.train, cfg.train.prompts_per_step
    rows = read_split(data, t.split).column("intent").to_pylist()
    worker = RolloutActor.options(num_cpus=0.5).remote(init, temperature=cfg.grpo.temperature, top_p=t.top_p,
                                                       max_new_tokens=t.max_new_tokens, seed=t.seed)
    ray.get(worker.generate.remote(rows[:1], t.group_size), timeout=600)  # warm-up
    times: dict[int, list[float]] = {w: [] for w in SHARDS}
    for r in range(repeats):  # alternating order, so that drift in the load hits every size alike
        intents = rows[(r + 1) * b : (r + 2) * b]
        for w in (SHARDS if r % 2 == 0 else SHARDS[::-1]):
            t0 = time.perf_counter()
            ray.get(worker.generate.remote(intents[: max(1, b // w)], t.group_size), timeout=600)
            times[w].append(time.perf_counter() - t0)
    ray.kill(worker)
    return {w: round(statistics.median(ts), 3) for w, ts in times.items()}


def weights_mb(init: str) -> float:
    """Megabytes a weight sync publishes: every parameter of ``init`` as fp32."""
    import math

    from safetensors import safe_open

    with safe_open(str(Path(init) / "model.safetensors"), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) * 4 / 1e6


def project(result: dict, net_gbps: float, gpu_update_s: float) -> dict:
    """Step time on N nodes, one rollout worker each, from the measured phases (a projection).

    generate = one worker's shard of B/N intents, alone; score and update = the median over
    every measured variant (neither depends on the number of workers); sync = as measured with
    one worker, plus the weights sent once to each of N nodes from the learner's, one after
    another at ``net_gbps`` (an upper bound: Ray can pull in parallel); a GPU learner's update
    = ``gpu_update_s``."""
    variants = result["workers"].values()
    update = statistics.median(v["t_update"] for v in variants)
    score = statistics.median(v["t_score"] for v in variants)
    sync = result["workers"]["1"]["t_sync"]
    rows = []
    for n in SHARDS:
        transfer = n * result["weights_mb"] * 8 / 1000 / net_gbps
        rest = result["shard_alone_s"][str(n)] + score + sync + transfer
        rows.append({"nodes": n, "generate_s": result["shard_alone_s"][str(n)], "transfer_s": round(transfer, 3),
                     "cpu_learner_step_s": round(rest + update, 2), "gpu_learner_step_s": round(rest + gpu_update_s, 2)})
    return {"label": "PROJECTION from measured phases, not a measurement", "update_s": round(update, 3),
            "score_s": round(score, 3), "sync_s": sync, "net_gbps": net_gbps, "gpu_update_s": gpu_update_s,
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tune_configs/10m.yaml")
    ap.add_argument("--data", required=True)
    ap.add_argument("--init", default="serve/assets/compressor_10m")
    ap.add_argument("--cpus", type=int, default=4, help="logical CPUs of the embedded Ray")
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-repeats", type=int, default=6)
    ap.add_argument("--net-gbps", type=float, default=10.0, help="assumed node-to-node bandwidth (projection)")
    ap.add_argument("--gpu-update-s", type=float, default=0.07, help="assumed GPU update time (projection)")
    ap.add_argument("--out", default="docs/bench/grpo_scaling.json")
    ap.add_argument("--project-only", action="store_true",
                    help="measure nothing: redo the projection of --out with these assumptions")
    args = ap.parse_args()
    if args.project_only:
        result = json.loads(Path(args.out).read_text())
        result["projection"] = project(result, args.net_gbps, args.gpu_update_s)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result["projection"], indent=2))
        return
    from learner.config import RunConfig

    cfg = RunConfig.from_yaml(args.config)
    load_before = os.getloadavg()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    runs: dict[int, list[dict]] = {w: [] for w in WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for w in (WORKERS if r % 2 == 0 else WORKERS[::-1]):
                rows = bench_variant(cfg, args.data, args.init, "sync", w, args.steps, Path(tmp) / f"w{w}_{r}")
                runs[w] += rows
                print(f"[bench] round {r} workers={w}: {summarize(rows)}", flush=True)
    shards = bench_shards(cfg, args.data, args.init, args.shard_repeats)
    ray.shutdown()
    table = {w: summarize(rows) for w, rows in runs.items()}
    base = table[WORKERS[0]]["samples_per_s"]
    for v in table.values():
        v["speedup_vs_1"] = round(v["samples_per_s"] / base, 3)
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
              "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
              "config": args.config, "B": cfg.train.prompts_per_step, "G": cfg.train.group_size,
              "logical_cpus": args.cpus, "steps_per_run": args.steps, "rounds": args.rounds,
              "workers": table, "shard_alone_s": shards, "weights_mb": round(weights_mb(args.init), 1)}
    result = json.loads(json.dumps(result))  # the keys as they are read back (str)
    result["projection"] = project(result, args.net_gbps, args.gpu_update_s)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
