"""``tinycompress demo``: the main job end to end on the embedded default.

Generate the data (or reuse it), score the rule-based baseline on test and held-out,
evaluate the shipped 10m warm-start compressor on the first test intents beside it, then run
a few GRPO steps from it on an embedded local Ray (rollout, validator and learner actors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_COMPRESSOR = ROOT / "serve" / "assets" / "compressor_10m"
GRPO_CONFIG = ROOT / "tune_configs" / "10m.yaml"


def _demo(args: argparse.Namespace) -> int:
    from rollout.baseline import RuleBasedCompressor, evaluate_compressor
    from rollout.datagen.dataset import build_dataset, read_split
    from validator_actors.tokens import TokenCounter

    log = lambda m: print(f"[demo] {m}", file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out)
    if (out / "stats.json").exists() and not args.rebuild:
        log(f"reusing the data in {out} (--rebuild to regenerate)")
        stats = json.loads((out / "stats.json").read_text())
    else:
        stats = build_dataset(out, n=args.n, seed=args.seed, progress=log)
    count = TokenCounter(out / "tokenizer")
    baseline = RuleBasedCompressor()
    figures = {"data": str(out), "reference_compression": {
        s: stats["splits"][s]["compression_mean"] for s in ("train", "val", "test", "heldout")}}
    for split in ("test", "heldout"):
        log(f"scoring the rule-based baseline on {split}")
        rows = read_split(out, split).to_pylist()
        figures[f"baseline_{split}"] = evaluate_compressor(
            baseline.compress, rows, count, progress=f"rule-based, {split}")
    if args.model_rows and SHIPPED_COMPRESSOR.exists():
        import torch

        from learner.evaluate import evaluate_checkpoint

        torch.set_num_threads(1)  # fastest at batch 1 on a small, possibly busy machine
        log(f"evaluating the shipped 10m compressor on the first {args.model_rows} test intents")
        report = evaluate_checkpoint(SHIPPED_COMPRESSOR, out, "test", limit=args.model_rows, progress=True)
        figures["compressor_10m_test"] = report["model"]
        figures["baseline_same_rows"] = report["baseline"]
    if args.grpo_steps and SHIPPED_COMPRESSOR.exists():
        figures["grpo"] = _grpo(out, Path(args.run), args.grpo_steps, log)
    print(json.dumps(figures, indent=2))
    return 0


def _grpo(data: Path, run: Path, steps: int, log) -> dict:
    """A short GRPO run from the shipped warm start: the training job's whole Ray path."""
    import dataclasses
    import shutil

    import ray

    from cluster.controller import GRPOController
    from cluster.runtime import init_ray
    from learner.config import RunConfig

    cfg = RunConfig.from_yaml(GRPO_CONFIG)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=steps, prompts_per_step=4, group_size=4, eval_every=steps, eval_samples=16,
        checkpoint_every=steps, patience=0))
    shutil.rmtree(run, ignore_errors=True)
    joined = init_ray(log_to_driver=False)  # the cluster in RAY_ADDRESS, else an embedded instance
    log(f"GRPO: {steps} steps from the shipped compressor on {'the Ray cluster' if joined else 'an embedded Ray'} "
        f"-> {run}")
    try:
        result = GRPOController(cfg, data, SHIPPED_COMPRESSOR, run, log=log).run()
    finally:
        ray.shutdown()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    keep = ("reward_mean", "pass_rate", "ir_tokens", "val_pass_rate", "val_ir_tokens", "t_generate",
            "t_score", "t_update", "t_sync", "step_time")
    return {**result, "run": str(run), "last_step": {k: round(last[k], 4) for k in keep if k in last}}


def register(sub: argparse._SubParsersAction) -> None:
    from validator_actors.cli_args import count

    p = sub.add_parser("demo", help="run the main job end to end on the embedded default")
    p.add_argument("--out", default="data/default", help="data folder")
    p.add_argument("--n", type=count(30), default=10000, help="intents in train+val+test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="regenerate the data even if present")
    p.add_argument("--model-rows", type=count(0), default=200,
                   help="test intents to run the shipped compressor on (0 = skip the model)")
    p.add_argument("--grpo-steps", type=count(0), default=2, help="GRPO steps on an embedded Ray (0 = skip)")
    p.add_argument("--run", default="runs/demo_grpo", help="run folder of the GRPO steps")
    p.set_defaults(func=_demo)
