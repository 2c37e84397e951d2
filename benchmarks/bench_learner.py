"""The GRPO learner's update alone: shared-prefix scoring against the full-sequence path.

One real batch per case: B intents from the train split, G completions each sampled by the
shipped 10m warm start at temperature 1 (``rollout.sampler.Sampler``), scored by the project's
validator. Cases: ``10m`` (B=8, G=8), ``10m_long`` (the 8 intents with the longest reference
programs: long, ragged completions) and ``50m`` (B=4, G=8; a 50m policy built from its preset,
random weights, scoring the 10m's completions: the cost depends on shapes, not on weights).

Each variant (scoring path x precision x torch threads) runs ``GRPOLearner.update`` (policy
forward and backward, reference forward at ``grpo.beta`` 0.04, AdamW step) ``--steps`` times,
the first dropped; variants run in rounds, in alternating order (A B C D, D C B A, ...), so
drift in the machine's load hits them alike. Reported per variant: seconds per update, useful
tokens/s (each group's prompt once plus the completion tokens), model GFLOP/s
((6 + 2 with the reference) x parameters x useful tokens / time), and the share of a large
matmul's throughput measured in the same run at the same threads and dtype. The padded share of
each layout's positions, and (``--rss``) the peak RSS of a learner process running each path.

    python benchmarks/bench_learner.py --data data/default --out docs/bench/learner_update.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INIT = "serve/assets/compressor_10m"
CASES = {"10m": ("10m", 8, "first"), "10m_long": ("10m", 8, "longest"), "50m": ("50m", 4, "first")}


def real_batch(data: str, b: int, pick: str, g: int = 8, seed: int = 0):
    """A ScoredBatch of B train intents x G completions sampled by the shipped 10m."""
    import pyarrow.parquet as pq

    from rollout.batch import ScoredBatch
    from learner.policy import load_policy
    from rollout.sampler import Sampler
    from validator_actors.tokens import TokenCounter
    from validator_actors.validator import score

    rows = pq.read_table(Path(data) / "train.parquet").slice(0, 2000).to_pylist()
    if pick == "longest":
        rows = sorted(rows, key=lambda r: -r["program_tokens"])
    rows = rows[:b]
    model, tok, _ = load_policy(ROOT / INIT)
    ro = Sampler(model, tok, max_new_tokens=96, temperature=1.0).sample(
        [r["intent"] for r in rows], g, generator=torch.Generator().manual_seed(seed))
    scores = score([r["intent"] for r in rows for _ in range(g)], ro.texts,
                   [r["reference_hash"] for r in rows for _ in range(g)],
                   token_counter=TokenCounter(Path(data) / "tokenizer"))
    rewards = torch.tensor([s.reward for s in scores])
    return ScoredBatch(ro, rewards, torch.tensor([s.valid for s in scores])), tok


def policy_for(preset: str):
    from learner.policy import PRESETS, build_policy, load_policy

    model, tok, _ = load_policy(ROOT / INIT)
    if preset != "10m":
        model = build_policy(PRESETS[preset], tok, seed=0)
    return model.float(), tok


def layout_stats(batch) -> dict:
    from learner.grpo_learner import GRPOConfig
    from learner.scoring import full_sequence_padded_share, pack_groups

    ro = batch.rollout
    packed = pack_groups(ro.prompt_ids, ro.completion_ids, ro.mask, ro.group_size, 0,
                         max_row=GRPOConfig().max_row_tokens or None)
    prompt = sum(map(len, ro.prompt_ids))
    useful = prompt + int(ro.mask.sum())
    n, t = ro.completion_ids.shape
    full_positions = n * (max(map(len, ro.prompt_ids)) + t)
    return {"B": len(ro.prompt_ids), "G": ro.group_size, "useful_tokens": useful,
            "prompt_tokens_mean": round(prompt / len(ro.prompt_ids), 1),
            "completion_tokens_min_mean_max": [int(ro.lengths.min()), round(float(ro.lengths.float().mean()), 1),
                                               int(ro.lengths.max())],
            "full_sequence": {"positions": full_positions,
                              "padded_share": round(full_sequence_padded_share(ro.prompt_ids, ro.mask, ro.group_size), 3),
                              "positions_per_useful_token": round(full_positions / useful, 2)},
            "shared_prefix": {"positions": packed.positions, "rows": packed.input_ids.shape[0],
                              "padded_share": round(packed.padded_share, 3),
                              "positions_per_useful_token": round(packed.positions / useful, 2)}}


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul (best of ``repeats``) at ``threads`` and ``dtype``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_learners(model, tok, beta: float) -> dict:
    from learner.grpo_learner import GRPOConfig, GRPOLearner

    out = {}
    for scoring in ("full_sequence", "shared_prefix"):
        for precision in ("fp32", "bf16"):
            cfg = GRPOConfig(lr=1e-6, beta=beta, scoring=scoring, precision=precision)
            out[(scoring, precision)] = GRPOLearner(copy.deepcopy(model), tok, cfg)
    return out


def run_case(name: str, args) -> dict:
    from learner.policy import count_params

    preset, b, pick = CASES[name]
    batch, _ = real_batch(args.data, b, pick)
    model, tok = policy_for(preset)
    learners = make_learners(model, tok, args.beta)
    params = count_params(model)
    stats = layout_stats(batch)
    flops_per_token = (6 + (2 if args.beta > 0 else 0)) * params
    variants = [(s, p, t) for (s, p) in learners for t in args.threads]
    times: dict = {v: [] for v in variants}
    peaks = {(t, p): matmul_peak(t, torch.bfloat16 if p == "bf16" else torch.float32)
             for t in args.threads for p in ("fp32", "bf16")}
    for rnd in range(args.rounds):
        print(f"[{name}] round {rnd + 1}/{args.rounds}, load {os.getloadavg()[0]:.2f}", flush=True)
        for v in (variants if rnd % 2 == 0 else variants[::-1]):
            torch.set_num_threads(v[2])
            steps = [_timed(lambda: learners[v[:2]].update(batch)) for _ in range(args.steps)]
            times[v] += steps[1:]  # the first update of each run pays for warm-up
    rows = []
    for (scoring, precision, threads), ts in times.items():
        sec = statistics.median(ts)
        gflops = flops_per_token * stats["useful_tokens"] / sec / 1e9
        rows.append({"scoring": scoring, "precision": precision, "threads": threads,
                     "update_s_median": round(sec, 3), "update_s_all": [round(x, 3) for x in ts],
                     "useful_tokens_per_s": round(stats["useful_tokens"] / sec, 1),
                     "model_gflops": round(gflops, 2),
                     "matmul_peak_gflops": round(peaks[(threads, precision)], 1),
                     "share_of_peak": round(gflops / peaks[(threads, precision)], 3)})
    torch.set_num_threads(max(args.threads))
    agreement = precision_agreement(model, tok, batch, args.beta)
    return {"case": name, "preset": preset, "params": params, "beta": args.beta,
            "max_row_tokens": learners[("shared_prefix", "fp32")].cfg.max_row_tokens, "layout": stats,
            "variants": rows, "speedups": speedups(rows), "bf16_vs_fp32": agreement}


def speedups(rows: list[dict]) -> dict:
    """full_sequence / shared_prefix time at each precision and thread count, and the best of
    each path against the old default (full_sequence, fp32, 1 thread)."""
    t = {(r["scoring"], r["precision"], r["threads"]): r["update_s_median"] for r in rows}
    out = {f"{p}/{n}t": round(t[("full_sequence", p, n)] / t[("shared_prefix", p, n)], 2)
           for (s, p, n) in t if s == "shared_prefix"}
    old = t[("full_sequence", "fp32", 1)]
    best = min((v, k) for k, v in t.items() if k[0] == "shared_prefix")
    out["best_shared_prefix_vs_old_default"] = {"variant": "/".join(map(str, best[1])), "ratio": round(old / best[0], 2)}
    return out


def precision_agreement(model, tok, batch, beta: float) -> dict:
    """bf16 autocast against fp32 on the same weights and batch: the loss, the gradient's
    direction, the per-token log-probs and the share of clipped tokens (the sampler's fp32
    log-probs are the old policy, so bf16's rounding alone moves the importance ratio)."""
    from learner.grpo_learner import GRPOConfig, GRPOLearner

    out, grads = {}, {}
    for precision in ("fp32", "bf16"):
        learner = GRPOLearner(copy.deepcopy(model), tok, GRPOConfig(beta=beta, precision=precision))
        loss, metrics = learner.loss(batch)
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in learner.model.parameters()]).double()
        with torch.no_grad():
            logp, _ = learner.completion_logprobs(learner.model, batch.rollout)
        out[precision] = {"loss": float(loss.detach()), "clip_ratio": metrics["clip_ratio/region_mean"], "logp": logp}
    mask = batch.rollout.mask
    dlogp = (out["bf16"].pop("logp") - out["fp32"].pop("logp"))[mask].abs()
    return {**out, "grad_cosine": round(float(torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], 0)), 4),
            "grad_norm_ratio": round(float(grads["bf16"].norm() / grads["fp32"].norm()), 4),
            "logp_abs_diff_mean_max": [round(float(dlogp.mean()), 5), round(float(dlogp.max()), 4)]}


def high_water_mib() -> float:
    """This process's peak resident set (VmHWM, MiB). Unlike ``ru_maxrss``, which Linux keeps
    across ``execve`` (a child would report its parent's peak), VmHWM starts anew at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(case: str, scoring: str, data: str, steps: int) -> None:
    """Run ``steps`` updates of one path in this process and print its peak RSS (MiB)."""
    from learner.grpo_learner import GRPOConfig, GRPOLearner

    preset, b, pick = CASES[case]
    batch, _ = real_batch(data, b, pick)
    model, tok = policy_for(preset)
    torch.set_num_threads(1)
    learner = GRPOLearner(model, tok, GRPOConfig(lr=1e-6, beta=0.04, scoring=scoring))
    base = high_water_mib()
    for _ in range(steps):
        learner.update(batch)
    peak = high_water_mib()
    print(json.dumps({"peak_rss_mib": round(peak, 1), "before_updates_mib": round(base, 1)}))


def peak_rss(case: str, data: str) -> dict:
    out = {}
    for scoring in ("full_sequence", "shared_prefix"):
        proc = subprocess.run([sys.executable, __file__, "--data", data, "--rss-child", case, scoring],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        out[scoring] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--cases", default="10m,10m_long,50m", help=f"comma-separated, of {sorted(CASES)}")
    ap.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    ap.add_argument("--steps", type=int, default=4, help="updates per variant per round (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0 adds the reference forward)")
    ap.add_argument("--rss", action="store_true", help="also measure each path's peak RSS in a fresh process")
    ap.add_argument("--rss-child", nargs=2, metavar=("CASE", "SCORING"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default="docs/bench/learner_update.json")
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(*args.rss_child, args.data, steps=3)
    args.threads = [int(x) for x in args.threads.split(",")]
    report = {"command": " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "torch": torch.__version__, "load_before": os.getloadavg(), "cases": []}
    for case in args.cases.split(","):
        result = run_case(case, args)
        if args.rss:
            result["peak_rss"] = peak_rss(case, args.data)
        report["cases"].append(result)
        print(json.dumps({k: result[k] for k in ("case", "layout", "speedups", "bf16_vs_fp32")}, indent=1), flush=True)
    report["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    print("| case | scoring | precision | threads | update s | useful tok/s | GFLOP/s | of peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for case in report["cases"]:
        for r in case["variants"]:
            print(f"| {case['case']} | {r['scoring']} | {r['precision']} | {r['threads']} | {r['update_s_median']} | "
                  f"{r['useful_tokens_per_s']} | {r['model_gflops']} | {r['share_of_peak']:.1%} |")


if __name__ == "__main__":
    main()
