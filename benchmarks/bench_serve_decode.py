"""The model hop alone, in process: GRPO's ``transformers`` sampler against the serving decoder.

Same intents, same weights, one torch thread (as a replica runs), interleaved A B A B in
``--rounds`` rounds after one dropped warm-up round; each figure is the median over rounds of
the milliseconds per call. Batch 1 is what one client sees; batch 16 is what the replica decodes
under load. ``k`` candidates per intent (k = 1 greedy; k > 1: greedy + k-1 sampled for the
serving decoder, k sampled for the sampler). Also times the whole ``Compressor.compress`` (decode,
validation, shortest form, choice) at batch 1.

    python benchmarks/bench_serve_decode.py --out docs/bench/serve_decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=16, help="calls per case per round")
    p.add_argument("--threads", default="1", help="torch threads to compare, e.g. 1,2")
    p.add_argument("--data", default="data/default")
    p.add_argument("--accuracy", type=int, default=400, help="test and held-out rows for fp32 vs int8 (0: skip)")
    p.add_argument("--out")
    args = p.parse_args()

    import torch

    from rollout.sampler import Sampler
    from serve.compressor import Compressor, CompressorConfig, candidate_generator
    from serve.decode import Row, StaticDecoder

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_serve import intents

    torch.set_num_threads(1)
    comp = Compressor(CompressorConfig(cache_size=0))
    model, tok = comp.model, comp.tok
    sampler = Sampler(model, tok, max_new_tokens=96, temperature=0.7)
    decoder = StaticDecoder(model, tok, max_new_tokens=96)
    decoder8 = StaticDecoder(model, tok, max_new_tokens=96, int8=True)
    from serve.compressor import DEFAULT_COMPRESSOR
    from serve.onnx_decode import OnnxDecoder

    onnx8 = OnnxDecoder(model, tok, DEFAULT_COMPRESSOR / "model.safetensors", max_new_tokens=96, int8=True)
    served = Compressor(CompressorConfig(cache_size=0, int8=True, runtime="onnx"))
    pool = intents(args.calls * 16 * (args.rounds + 1) * 8, seed=5)
    at = 0

    def take(n: int) -> list[str]:
        nonlocal at
        at += n
        return pool[at - n:at]

    def hf(texts: list[str], k: int):
        return sampler.sample(texts, k, greedy=k == 1, generator=torch.Generator().manual_seed(0))

    def rows(texts: list[str], k: int) -> list:
        return [Row(i, None if j == 0 else candidate_generator(t, j)) for i, t in enumerate(texts) for j in range(k)]

    def ours(texts: list[str], k: int):
        return decoder.generate(texts, rows(texts, k), temperature=0.7)

    def ours8(texts: list[str], k: int):
        return decoder8.generate(texts, rows(texts, k), temperature=0.7)

    def onnx(texts: list[str], k: int):
        return onnx8.generate(texts, rows(texts, k), temperature=0.7)

    threads = [int(t) for t in args.threads.split(",")]
    cases = [(name, fn, b, k, t) for t in threads for b, k in ((1, 1), (1, 4), (16, 1), (16, 4))
             for name, fn in (("transformers sampler", hf), ("serving decoder", ours), ("serving decoder int8", ours8),
                              ("ONNX Runtime decoder int8", onnx))]
    cases += [("Compressor.compress (all of it), torch fp32", lambda texts, k: comp.compress(texts, k), 1, 1, t)
              for t in threads]
    cases += [("Compressor.compress (all of it), served: ONNX int8", lambda texts, k: served.compress(texts, k), 1, 1,
               t) for t in threads]
    figures: dict[tuple, list[float]] = {}
    for r in range(args.rounds + 1):
        for name, fn, b, k, t in cases:
            torch.set_num_threads(t)
            times = []
            for _ in range(max(1, args.calls // b)):
                texts = take(b) if b > 1 else take(1)
                t0 = time.perf_counter()
                fn(texts, k)
                times.append((time.perf_counter() - t0) * 1000)
            if r:  # round 0 warms up
                figures.setdefault((name, b, k, t), []).append(statistics.median(times))
    rows = [{"decoder": name, "batch": b, "k": k, "threads": t, "ms_per_call": round(statistics.median(v), 2),
             "intents_per_s": round(1000 * b / statistics.median(v), 1)} for (name, b, k, t), v in figures.items()]
    print("| decoder | batch | k | threads | ms per call | intents/s |\n|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['decoder']} | {row['batch']} | {row['k']} | {row['threads']} | {row['ms_per_call']} | "
              f"{row['intents_per_s']} |")
    ms = {key: statistics.median(v) for key, v in figures.items()}
    speedups = {f"{other} b={b} k={k} threads={t}": round(ms[("transformers sampler", b, k, t)] /
                                                           ms[(other, b, k, t)], 2)
                for other in ("serving decoder", "serving decoder int8", "ONNX Runtime decoder int8")
                for t in threads for b, k in ((1, 1), (1, 4), (16, 1), (16, 4))}
    print("sampler / serving decoder:", speedups, "load average:", os.getloadavg())
    quality = accuracy(comp, {"fp32": decoder, "int8": decoder8, "onnx_int8": onnx8}, args.data,
                       args.accuracy) if args.accuracy else None
    print("greedy programs against torch fp32:", quality)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "rows": rows, "speedup": speedups,
                       "quality": quality, "loadavg": os.getloadavg()}, f, indent=2)
    return 0


def accuracy(comp, decoders: dict, data: str, limit: int) -> dict:
    """Greedy programs of each decoder on the first ``limit`` rows of test and held-out: how many
    are the same as the first decoder's, and how many mean the reference (its sha256)."""
    import pyarrow.parquet as pq

    from serve.decode import Row

    out = {}
    for split in ("test", "heldout"):
        rows = pq.read_table(f"{data}/{split}.parquet", columns=["intent", "reference_hash"]).to_pylist()[:limit]
        right, same = dict.fromkeys(decoders, 0), dict.fromkeys(decoders, 0)
        for at in range(0, len(rows), 16):
            chunk = rows[at:at + 16]
            texts = [r["intent"] for r in chunk]
            programs = {name: dec.texts(dec.generate(texts, [Row(i) for i in range(len(texts))]))
                        for name, dec in decoders.items()}
            first = next(iter(programs.values()))
            for name, got in programs.items():
                same[name] += sum(x == y for x, y in zip(first, got))
                right[name] += sum(comp.validator.validate(p).hash == r["reference_hash"] for p, r in zip(got, chunk))
        out[split] = {"n": len(rows), **{f"same_as_{next(iter(decoders))}_{k}": v for k, v in same.items()},
                      **{f"right_{k}": v for k, v in right.items()}}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
