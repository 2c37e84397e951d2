"""How much a policy explores: what it samples at temperature T on val intents.

    python benchmarks/explore_stats.py --checkpoint serve/assets/compressor_10m --data data/default \
        [--split val] [--n 200] [--draws 8] [--temperature 1.0] [--out docs/bench/explore_X.json]

For the first N intents of the split, G draws each (one thread, seeded) and the greedy program:
- ``entropy_nats_per_token``: mean of -log p(sampled token) over every sampled token (an unbiased
  estimate of the policy's per-token entropy at T, <eos> included);
- ``sample_pass_rate``: the share of draws that pass the validator (fidelity hash included);
- ``distinct_valid_forms``: distinct valid texts per intent among its draws (mean), and
  ``distinct_valid_lengths``: distinct IR-token counts among them;
- ``shorter_than_greedy``: the share of intents with a valid draw shorter than the greedy program;
- ``reaches_minimal``: the share with a valid draw as short as the intent's minimal form;
- greedy pass rate and IR tokens, beside the minimal forms' tokens on the same rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.policy import load_policy  # noqa: E402
from rollout.datagen.dataset import read_split  # noqa: E402
from rollout.sampler import Sampler  # noqa: E402
from validator_actors.tokens import TokenCounter  # noqa: E402
from validator_actors.validator import Validator  # noqa: E402


def explore_stats(checkpoint: str, data: str, split: str = "val", n: int = 200, draws: int = 8,
                  temperature: float = 1.0, batch: int = 16, seed: int = 0) -> dict:
    model, tok, _ = load_policy(checkpoint)
    rows = read_split(data, split).to_pylist()[:n]
    count, validator = TokenCounter(Path(data) / "tokenizer"), Validator()
    sampler = Sampler(model, tok, temperature=temperature)
    gen = torch.Generator().manual_seed(seed)
    nll, n_tok, per_intent = 0.0, 0, []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        intents = [r["intent"] for r in chunk]
        out = sampler.sample(intents, draws, generator=gen)
        nll -= float(out.logprobs[out.mask].sum())
        n_tok += int(out.mask.sum())
        greedy = sampler.sample(intents, 1, greedy=True).texts
        for j, r in enumerate(chunk):
            texts = out.texts[j * draws : (j + 1) * draws]
            valid = [t for t in texts if validator.validate(t, r["reference_hash"]).valid]
            lengths = count(valid) if valid else []
            g_len = count([greedy[j]])[0]
            min_len = count([r["minimal"]])[0]
            per_intent.append({
                "valid": len(valid), "forms": len(set(valid)), "lengths": len(set(lengths)),
                "greedy_pass": validator.validate(greedy[j], r["reference_hash"]).valid,
                "greedy_tokens": g_len, "minimal_tokens": min_len,
                "shorter": bool(lengths) and min(lengths) < g_len,
                "minimal": bool(lengths) and min(lengths) <= min_len,
            })
    mean = lambda key: round(statistics.fmean(float(p[key]) for p in per_intent), 4)  # noqa: E731
    return {
        "checkpoint": checkpoint, "split": split, "intents": len(rows), "draws": draws,
        "temperature": temperature, "entropy_nats_per_token": round(nll / n_tok, 4),
        "sample_pass_rate": round(sum(p["valid"] for p in per_intent) / (draws * len(rows)), 4),
        "distinct_valid_forms": mean("forms"), "distinct_valid_lengths": mean("lengths"),
        "shorter_than_greedy": mean("shorter"), "reaches_minimal": mean("minimal"),
        "greedy_pass_rate": mean("greedy_pass"), "greedy_ir_tokens": mean("greedy_tokens"),
        "minimal_ir_tokens": mean("minimal_tokens"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report = explore_stats(args.checkpoint, args.data, args.split, args.n, args.draws, args.temperature)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
