"""``tinycompress demo``: the main job end to end on the embedded default.

Generate the data (or reuse it), score the rule-based baseline on test and held-out, then
evaluate the shipped 10m warm-start compressor on the first test intents beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHIPPED_COMPRESSOR = Path(__file__).resolve().parent.parent / "serve" / "assets" / "compressor_10m"


def _demo(args: argparse.Namespace) -> int:
    from rollout.baseline import RuleBasedCompressor, evaluate_compressor
    from rollout.dataset import build_dataset, read_split
    from rollout.tokenizer import count_tokens, load_bpe

    log = lambda m: print(f"[demo] {m}", file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out)
    if (out / "stats.json").exists() and not args.rebuild:
        log(f"reusing the data in {out} (--rebuild to regenerate)")
        stats = json.loads((out / "stats.json").read_text())
    else:
        stats = build_dataset(out, n=args.n, seed=args.seed, progress=log)
    tok = load_bpe(out / "tokenizer")
    baseline = RuleBasedCompressor()
    figures = {"data": str(out), "reference_compression": {
        s: stats["splits"][s]["compression_mean"] for s in ("train", "val", "test", "heldout")}}
    for split in ("test", "heldout"):
        log(f"scoring the rule-based baseline on {split}")
        rows = read_split(out, split).to_pylist()
        figures[f"baseline_{split}"] = evaluate_compressor(
            baseline.compress, rows, lambda t: count_tokens(tok, t))
    if args.model_rows and SHIPPED_COMPRESSOR.exists():
        import torch

        from learner.evaluate import evaluate_checkpoint

        torch.set_num_threads(1)  # fastest at batch 1 on a small, possibly busy machine
        log(f"evaluating the shipped 10m compressor on the first {args.model_rows} test intents")
        report = evaluate_checkpoint(SHIPPED_COMPRESSOR, out, "test", limit=args.model_rows)
        figures["compressor_10m_test"] = report["model"]
        figures["baseline_same_rows"] = report["baseline"]
    print(json.dumps(figures, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on the embedded default")
    p.add_argument("--out", default="data/default", help="data folder")
    p.add_argument("--n", type=int, default=10000, help="intents in train+val+test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="regenerate the data even if present")
    p.add_argument("--model-rows", type=int, default=200,
                   help="test intents to run the shipped compressor on (0 = skip the model)")
    p.set_defaults(func=_demo)
