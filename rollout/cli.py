"""``tinycompress data`` and ``tinycompress baseline``."""

from __future__ import annotations

import argparse
import json
import sys


def _data(args: argparse.Namespace) -> int:
    from validator_actors.cli_args import UsageError, need_data, staged_dir

    def progress(message: str) -> None:
        print(f"[data] {message}", file=sys.stderr, flush=True)

    if args.rl_only:
        if not args.rl:
            raise UsageError("--rl-only writes rl.parquet: give its size with --rl N (N >= 1)")
        need_data(args.out, "train.parquet", "val.parquet", "test.parquet", flag="--out")
        from rollout.datagen.dataset import build_rl_prompts

        stats = build_rl_prompts(args.out, args.rl, seed=args.seed, new_programs=args.rl_new_programs,
                                 set_share=args.rl_set_share, progress=progress)
        print(json.dumps({"out": str(args.out), "rl": {"count": stats["count"]}}, indent=2))
        return 0

    from rollout.datagen.dataset import build_dataset, build_rl_prompts

    with staged_dir(args.out) as tmp:  # a failure leaves --out as it was
        stats = build_dataset(tmp, n=args.n, seed=args.seed, vocab_size=args.vocab_size,
                              paraphrases=args.paraphrases, progress=progress)
        if args.rl:
            stats["splits"]["rl"] = build_rl_prompts(tmp, args.rl, seed=args.seed,
                                                     new_programs=args.rl_new_programs,
                                                     set_share=args.rl_set_share, progress=progress)
    summary = {split: {k: s[k] for k in ("count", "compression_mean", "compression_minimal_mean")}
               | {"intent_tokens_mean": s["intent_tokens"]["mean"],
                  "program_tokens_mean": s["program_tokens"]["mean"]}
               for split, s in stats["splits"].items()}
    print(json.dumps({"out": str(args.out), "splits": summary, "corrupt": stats["corrupt"]["count"]}, indent=2))
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from rollout.baseline import RuleBasedCompressor, evaluate_compressor
    from rollout.datagen.dataset import read_split
    from validator_actors.tokens import TokenCounter
    from validator_actors.cli_args import need_data

    need_data(args.data, f"{args.split}.parquet")
    rows = read_split(args.data, args.split).to_pylist()
    if args.limit:
        rows = rows[: args.limit]
    count = TokenCounter(f"{args.data}/tokenizer")
    base = RuleBasedCompressor()
    compress = base.compress_minimal if args.minimal else base.compress
    result = evaluate_compressor(compress, rows, count, progress="rule-based")
    name = "rule-based, minimal form" if args.minimal else "rule-based"
    print(json.dumps({"compressor": name, "split": args.split} | result, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from validator_actors.cli_args import count, fraction

    p = sub.add_parser("data", help="generate the intent dataset, corrupt set, tokenizer and stats")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=count(30), default=10000, help="intents in train+val+test (80/10/10)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    p.add_argument("--vocab-size", type=count(64), default=2048, help="BPE vocabulary size")
    p.add_argument("--paraphrases", type=count(0), default=4,
                   help="extra wordings per train request in train_paraphrases.parquet (0 = none)")
    p.add_argument("--rl", type=count(0), default=0,
                   help="also write rl.parquet: N GRPO intents that supervised training never saw (0 = none)")
    p.add_argument("--rl-only", action="store_true",
                   help="write only rl.parquet (--rl N) into an existing dataset folder --out")
    p.add_argument("--rl-new-programs", action="store_true",
                   help="rl.parquet without any train program either (every intent a new combination)")
    p.add_argument("--rl-set-share", type=fraction, default=None, metavar="F",
                   help="fraction of rl.parquet intents whose minimal form writes a complete set as "
                        "one star token (default: as drawn, about 0.11)")
    p.set_defaults(func=_data)
    p = sub.add_parser("baseline", help="score the rule-based compressor on a split")
    p.add_argument("--data", required=True, help="folder written by `tinycompress data`")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "heldout"])
    p.add_argument("--limit", type=count(0), default=0, help="score only the first N rows (0 = all)")
    p.add_argument("--minimal", action="store_true",
                   help="print each program the baseline writes in its minimal form (ir.minimal)")
    p.set_defaults(func=_baseline)
