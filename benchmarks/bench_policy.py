"""Policy benchmarks, side by side in one run.

1. Sampling: our KV-cache group sampler vs ``model.generate`` on the same B x G prompts
   (completion tokens/s, alternating runs, ratio).
2. Latency: greedy decoding at batch 1 (p50/p95 ms over test intents) and throughput at 64.
3. Training: SFT steps in fp32 vs bf16 autocast from the same init on the same batches
   (tokens/s, achieved model FLOP/s against the measured matmul peak, loss after K steps).

    python benchmarks/bench_policy.py --data data/default --checkpoint runs/sft_10m \
        --out docs/bench_policy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from learner.config import RunConfig
from learner.policy import count_params, load_policy
from learner.sft import SFTTrainer, batches, collate
from rollout.datagen.dataset import read_split
from rollout.sampler import Sampler, encode_prompts, left_pad


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def bench_sampling(model, tok, intents, group, temperature, top_p, max_new, rounds):
    sampler = Sampler(model, tok, max_new_tokens=max_new, temperature=temperature, top_p=top_p)
    ids, attn = left_pad(encode_prompts(tok, intents, 192), tok.pad_token_id, "cpu")
    ours, theirs = [], []
    for r in range(rounds):
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        out = sampler.sample(intents, group, generator=g)
        ours.append(out.num_tokens / (time.perf_counter() - t0))
        torch.manual_seed(r)
        t0 = time.perf_counter()
        gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature,
                             top_p=top_p, top_k=0, num_return_sequences=group, max_new_tokens=max_new,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             output_logits=True, return_dict_in_generate=True)
        new = gen.sequences[:, ids.shape[1]:]
        # generated tokens up to and including the first <eos>, as our sampler counts them
        ended = (new == tok.eos_token_id).int().cumsum(1)
        n_tokens = int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())
        theirs.append(n_tokens / (time.perf_counter() - t0))
    return {"B": len(intents), "G": group, "ours_tokens_per_s": round(statistics.median(ours), 1),
            "generate_tokens_per_s": round(statistics.median(theirs), 1),
            "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
            "rounds": rounds}


def bench_latency(model, tok, intents, n):
    sampler = Sampler(model, tok, max_new_tokens=96)
    sampler.sample(intents[:1], 1, greedy=True)
    times = []
    for intent in intents[:n]:
        t0 = time.perf_counter()
        sampler.sample([intent], 1, greedy=True)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    t0 = time.perf_counter()
    out = sampler.sample(intents[:64], 1, greedy=True)
    dt = time.perf_counter() - t0
    return {"batch1_p50_ms": round(times[len(times) // 2], 2),
            "batch1_p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
            "batch64_intents_per_s": round(64 / dt, 1), "batch64_tokens_per_s": round(out.num_tokens / dt, 1)}


def bench_training(data, preset, steps, batch_size):
    results = {}
    for precision in ("fp32", "bf16"):
        cfg = RunConfig.from_dict({"model": {"preset": preset},
                                   "sft": {"precision": precision, "batch_size": batch_size,
                                           "warmup_steps": 10, "max_steps": steps, "lr": 1e-3,
                                           "paraphrases": False}})
        threads = torch.get_num_threads()
        tr = SFTTrainer(cfg, data, "/tmp/bench_sft_unused", device="cpu", log=lambda m: None)
        torch.set_num_threads(threads)  # the trainer takes every core; keep the bench's choice
        import random
        stream = batches(tr.train, batch_size, random.Random(0))
        losses, tokens = [], 0
        tr.step(collate(next(stream), tr.tok.pad_token_id))  # warm-up step, not timed
        t0 = time.perf_counter()
        for _ in range(steps):
            b = collate(next(stream), tr.tok.pad_token_id)
            losses.append(tr.step(b))
            tokens += int(b["attention_mask"].sum())
        dt = time.perf_counter() - t0
        params = count_params(tr.model)
        results[precision] = {"tokens_per_s": round(tokens / dt, 1),
                              "model_flops_per_s": round(6 * params * tokens / dt / 1e9, 1),
                              "loss_last10": round(statistics.fmean(losses[-10:]), 4),
                              "seconds": round(dt, 1)}
    results["bf16_speedup"] = round(results["bf16"]["tokens_per_s"] / results["fp32"]["tokens_per_s"], 2)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--preset", default="10m", help="preset for the training benchmark")
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-n", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = every core)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    model, tok, _ = load_policy(a.checkpoint)
    intents = [r["intent"] for r in read_split(a.data, "test").to_pylist()]
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_avg_at_start": os.getloadavg()[0],
              "matmul_peak_gflops": {"fp32": round(matmul_peak(torch.float32) / 1e9, 1),
                                     "bf16": round(matmul_peak(torch.bfloat16) / 1e9, 1)}}
    print(json.dumps(report), flush=True)
    report["sampling_T1.0"] = bench_sampling(model, tok, intents[:32], 8, 1.0, 1.0, 96, a.rounds)
    print(json.dumps(report["sampling_T1.0"]), flush=True)
    report["latency"] = bench_latency(model, tok, intents, a.latency_n)
    print(json.dumps(report["latency"]), flush=True)
    report["training"] = bench_training(a.data, a.preset, a.train_steps, a.train_batch)
    print(json.dumps(report["training"]), flush=True)
    report["load_avg_at_end"] = os.getloadavg()[0]
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
