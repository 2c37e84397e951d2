"""``tinycompress sft``, ``tinycompress eval`` and ``tinycompress report``."""

from __future__ import annotations

import argparse
import json
import sys


def checked_config(path: str, sets: list[str], init: str | None = None):
    """The run config of ``path`` with the ``--set`` overrides, and the warm start ``init`` (if
    any) checked to be a whole checkpoint of the config's preset: a UsageError otherwise (one
    line, exit 2, before any work). ``train`` and ``sft`` both start here."""
    from learner.config import RunConfig
    from learner.presets import check_init
    from validator_actors.cli_args import UsageError, need_checkpoint

    try:
        cfg = RunConfig.from_yaml(path, sets)
    except ValueError as e:
        raise UsageError(f"bad config: {e}") from None
    if init:
        need_checkpoint(init, "--init")
        try:
            check_init(init, cfg.model.policy)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return cfg


def _sft(args: argparse.Namespace) -> int:
    from validator_actors.cli_args import fresh_run_dir, need_data

    sets = list(args.set) + ([f"sft.max_steps={args.max_steps}"] if args.max_steps is not None else [])
    cfg = checked_config(args.config, sets, args.init)
    need_data(args.data, "train.parquet", "val.parquet")
    from learner.sft import RESUME_DIR, SFTTrainer

    fresh_run_dir(args.out, args.resume, args.overwrite, f"{RESUME_DIR}/state.json")
    trainer = SFTTrainer(cfg, args.data, args.out, device=args.device, init=args.init, resume=args.resume,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    result = trainer.fit()
    print(json.dumps({"out": args.out, "best_step": result.best_step,
                      "best_val_pass_rate": result.best_pass_rate, "steps": result.steps,
                      "seconds": round(result.seconds, 1)}))
    return 0 if result.best_step >= 0 else 1


def _eval(args: argparse.Namespace) -> int:
    from validator_actors.cli_args import need_checkpoint, need_data

    need_checkpoint(args.checkpoint, "--checkpoint")  # before torch is imported: a bad path fails at once
    need_data(args.data, f"{args.split}.parquet")
    import torch

    from learner.evaluate import evaluate_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    report = evaluate_checkpoint(args.checkpoint, args.data, args.split, limit=args.limit,
                                 device=args.device, throughput_batch=args.batch, progress=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n")
    return 0


def _report_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this report, rebuilt from the parsed arguments."""
    import shlex

    words = ["tinycompress", "report", "--data", args.data]
    for flag, values in (("--arm", args.arm), ("--recorded", args.recorded), ("--run", args.run)):
        words += [w for v in values for w in (flag, v)]
    words += ["--out", args.out] + (["--markdown", args.markdown] if args.markdown else [])
    for flag, value, default in (("--limit", args.limit, 0), ("--batch", args.batch, 32),
                                 ("--threads", args.threads, 1), ("--target-params", args.target_params, 5e8)):
        words += [flag, f"{value:g}"] if value != default else []
    return shlex.join(words)


def _report(args: argparse.Namespace) -> int:
    from validator_actors.cli_args import UsageError, need_data

    need_data(args.data, "test.parquet", "heldout.parquet")
    import torch

    from learner.report import build_report, parse_arm, parse_recorded

    try:
        arms = [parse_arm(a) for a in args.arm]
        recorded = [parse_recorded(r) for r in args.recorded]
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    report = build_report(
        args.data, arms, args.out, recorded=recorded,
        runs=[tuple(r.split("=", 1)) for r in args.run], markdown=args.markdown, limit=args.limit,
        throughput_batch=args.batch, target_params=args.target_params,
        command=_report_command(args), log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"out": args.out, "decision": report["decision"]["decision"],
                      "why": report["decision"]["why"], "seconds": round(report["meta"]["seconds"], 1)}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from validator_actors.cli_args import count, device, run_arguments

    p = sub.add_parser("sft", help="supervised warm start of a policy preset")
    run_arguments(p, config="a preset such as tune_configs/10m.yaml", steps="sft.max_steps", example="sft.lr=3e-4",
                  out="checkpoint folder (the best one is kept); --resume continues from its last evaluation")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's weights (same preset and tokenizer), e.g. "
                        "serve/assets/compressor_10m, instead of a fresh initialization")
    p.set_defaults(func=_sft)
    p = sub.add_parser("eval", help="evaluate a checkpoint beside the rule-based baseline")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "heldout"])
    p.add_argument("--limit", type=count(0), default=0, help="first N rows only (0 = all)")
    p.add_argument("--batch", type=count(1), default=64, help="batch size for the throughput figure")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=count(0), default=1,
                   help="torch CPU threads (0 = torch's default); 1 measured fastest at batch 1 here")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    p.set_defaults(func=_eval)
    p = sub.add_parser("report", help="evaluation and ROI report: every arm on the same rows, "
                                      "figures, failure analysis, scaling, the decision")
    p.add_argument("--data", required=True, help="folder written by `tinycompress data`")
    p.add_argument("--arm", action="append", required=True, metavar="NAME=PATH|baseline|baseline-minimal",
                   help="an arm (repeatable): the rule-based compressor, the same with ir.minimal applied, "
                        "or NAME=a checkpoint folder or a GRPO run folder (its best/ is measured)")
    p.add_argument("--recorded", action="append", default=[], metavar="NAME=EVAL_JSON[,SUMMARY_JSON]",
                   help="figures measured elsewhere (`tinycompress eval` JSON, {split} in the path), "
                        "shown labelled, never deciding")
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUN_FOLDER",
                   help="a further run folder whose learning curve to draw")
    p.add_argument("--out", required=True, help="folder for report.json, results.parquet, figures/")
    p.add_argument("--markdown", default=None, help="write the Markdown here (default OUT/report.md)")
    p.add_argument("--limit", type=count(0), default=0, help="first N rows of each split only (0 = all)")
    p.add_argument("--batch", type=count(1), default=32, help="batch size of the throughput figure")
    p.add_argument("--threads", type=count(0), default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--target-params", type=float, default=5e8,
                   help="the larger model the ROI section extrapolates to (default 0.5B)")
    p.set_defaults(func=_report)
