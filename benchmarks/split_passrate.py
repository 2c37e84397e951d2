"""Greedy pass rate and IR tokens of checkpoints on a whole split, overall and split by whether
the intent's minimal form writes a complete set as one token (``I*?``, ``C*!``).

    python benchmarks/split_passrate.py --data data/default --split val CKPT [CKPT ...]

One JSON line per checkpoint: pass, tokens, the project's reward (+1 pass / -1 fail - 0.01 per
IR token), set_pass over the set intents (n_set), other_pass over the rest. Session 6 chose
GRPO checkpoints with it (docs/BENCHMARKS.md, "Session 6").
"""

from __future__ import annotations

import argparse
import json

import torch

from learner.policy import load_policy
from rollout.datagen.dataset import read_split
from rollout.sampler import Sampler
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator, score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by `tinycompress data`")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("checkpoints", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = read_split(a.data, a.split).to_pylist()
    validator, count = Validator(), TokenCounter(f"{a.data}/tokenizer")
    is_set = ["*" in r["minimal"] for r in rows]
    for ckpt in a.checkpoints:
        model, tok, _ = load_policy(ckpt, device="cpu")
        sampler = Sampler(model, tok, max_new_tokens=96)
        texts = sampler.greedy([r["intent"] for r in rows], batch=50)
        scores = score([r["intent"] for r in rows], texts, [r["reference_hash"] for r in rows],
                       validator=validator, token_counter=count)
        ok = [s.valid for s in scores]
        n_set = sum(is_set)
        print(json.dumps({
            "checkpoint": ckpt, "split": a.split, "n": len(rows),
            "pass": sum(ok) / len(rows), "tokens": round(sum(s.tokens for s in scores) / len(rows), 3),
            "reward": round(sum(s.reward for s in scores) / len(rows), 4),
            "set_pass": sum(o for o, in_set in zip(ok, is_set) if in_set) / max(1, n_set), "n_set": n_set,
            "other_pass": sum(o for o, in_set in zip(ok, is_set) if not in_set) / max(1, len(rows) - n_set),
        }), flush=True)


if __name__ == "__main__":
    main()
