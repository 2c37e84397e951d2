"""Evaluate a checkpoint the way every later issue will, beside the rule-based baseline.

Quality (pass rate with the fidelity hash, compression, program tokens, failures by code)
comes from greedy decoding one intent at a time, which also gives the batch-1 latency
(p50/p95); throughput is measured separately at a larger batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from learner.policy import load_policy
from rollout.baseline import RuleBasedCompressor, evaluate_compressor
from rollout.datagen.dataset import read_split
from rollout.sampler import Sampler
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator


def checkpoint_size_mb(path: str | Path) -> float:
    """Size of the model weights on disk (``model*.safetensors``, every shard): not the optimizer
    state or RNG states a resumable GRPO checkpoint also holds."""
    return round(sum(p.stat().st_size for p in Path(path).glob("model*.safetensors")) / 2**20, 2)


@torch.no_grad()
def throughput(sampler: Sampler, intents: list[str], batch: int) -> dict:
    """Greedy intents/s and completion tokens/s at ``batch`` (one warm-up batch first)."""
    sampler.sample(intents[:batch], 1, greedy=True)
    n_tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(intents), batch):
        n_tokens += sampler.sample(intents[i : i + batch], 1, greedy=True).num_tokens
    seconds = time.perf_counter() - t0
    return {"batch": batch, "intents_per_s": round(len(intents) / seconds, 1),
            "tokens_per_s": round(n_tokens / seconds, 1)}


def greedy_sampler(checkpoint: str | Path, warm_up: str, *, device: str = "cpu",
                   max_new_tokens: int = 96) -> tuple[Sampler, dict]:
    """(sampler, meta) of a policy checkpoint, one greedy decode of ``warm_up`` already run (so a
    latency measured next does not include the first call's set-up)."""
    model, tok, meta = load_policy(checkpoint, device=device)
    sampler = Sampler(model, tok, max_new_tokens=max_new_tokens)
    sampler.greedy([warm_up])
    return sampler, meta


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "test", *,
                        limit: int = 0, device: str = "cpu", throughput_batch: int = 64,
                        max_new_tokens: int = 96, progress: bool = False) -> dict:
    """The JSON report of ``tinycompress eval`` (``progress``: bars on a terminal's stderr)."""
    rows = read_split(data_dir, split).to_pylist()
    rows = rows[:limit] if limit else rows
    counter = TokenCounter(Path(data_dir) / "tokenizer")
    validator = Validator()
    sampler, meta = greedy_sampler(checkpoint, rows[0]["intent"], device=device, max_new_tokens=max_new_tokens)
    model = sampler.model
    compress = lambda intent: sampler.greedy([intent])[0]  # noqa: E731
    model_figs = evaluate_compressor(compress, rows, counter, validator, progress="model" if progress else None)
    intents = [r["intent"] for r in rows][: max(throughput_batch * 4, 256)]
    model_figs["throughput"] = throughput(sampler, intents, throughput_batch)
    model_figs["size_mb"] = checkpoint_size_mb(checkpoint)
    model_figs["params"] = meta.get("params", sum(p.numel() for p in model.parameters()))
    base = RuleBasedCompressor()
    return {
        "checkpoint": str(checkpoint), "split": split, "device": device,
        "threads": torch.get_num_threads(), "policy": meta.get("policy", {}).get("name"),
        "model": model_figs,
        "baseline": evaluate_compressor(base.compress, rows, counter, validator,
                                        progress="rule-based" if progress else None),
    }
