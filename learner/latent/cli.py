"""``tinycompress latent {data,train,eval,study}``: the latent context-compression study.

torch is imported inside the command bodies so that ``tinycompress --help`` stays quick. Every
step has a ``--quick`` mode (a few hundred histories, tiny widths, a few steps) for tests.
Progress goes to stderr; each command prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from learner.vae.cli import _json_out  # tables and progress on stderr, one JSON line on stdout
from validator_actors.cli_args import UsageError, count, need_dir

DATA_FILES = ("train.parquet", "val.parquet", "test.parquet", "tokenizer")
QUICK_DATA = {"train": 96, "val": 24, "test": 48, "max_turns": 24, "vocab_size": 512}


def register(subparsers) -> None:
    p = subparsers.add_parser("latent", help="latent context compression: K latents vs truncation, pooling, BM25")
    sub = p.add_subparsers(dest="latent_command", required=True, metavar="STEP")

    d = sub.add_parser("data", help="generate request histories (Parquet) and their BPE")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--train", type=count(1), default=None, help="training histories (default 4000)")
    d.add_argument("--quick", action="store_true", help="a few hundred short histories")
    d.set_defaults(func=_json_out(cmd_data))

    t = sub.add_parser("train", help="train one arm (continues the run folder's state if any)")
    _train_args(t)
    t.add_argument("--out", type=Path, required=True, help="run folder")
    t.add_argument("--arm", default="latent", help="warm (the warm start), views (the baselines' reasoner), "
                   "latent, shared, no_time, single_layer, no_projection, no_aux")
    t.add_argument("--k", type=count(1), default=16, help="latent vectors (ignored by warm and views)")
    t.add_argument("--init", type=Path, default=None, help="a finished warm run to start from")
    t.set_defaults(func=_json_out(cmd_train))

    e = sub.add_parser("eval", help="score a trained run on the test split (views: every view and K)")
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--checkpoint", type=Path, required=True, help="run folder from `latent train`")
    e.add_argument("--split", choices=("val", "test"), default="test")
    e.add_argument("--report", type=Path, default=None, help="JSON report (default CKPT/eval.json)")
    e.set_defaults(func=_json_out(cmd_eval))

    s = sub.add_parser("study", help="the whole grid, resumable; summary, table and figures in OUT")
    _train_args(s)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="comma-separated seeds")
    s.set_defaults(func=_json_out(cmd_study))


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="folder from `latent data`")
    p.add_argument("--steps", type=count(1), default=None, help="optimizer steps per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=count(1), default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny widths, a few steps")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train_config(args):
    from learner.latent.train import TrainConfig, quick

    tcfg = TrainConfig(seed=args.seed, threads=args.threads)
    tcfg = quick(tcfg) if args.quick else tcfg
    return replace(tcfg, steps=args.steps) if args.steps else tcfg


def cmd_data(args) -> dict:
    from learner.latent.data import DataConfig, write_dataset

    sizes = dict(QUICK_DATA) if args.quick else {}
    if args.train:
        sizes["train"] = args.train
    return write_dataset(args.out, DataConfig(seed=args.seed, **sizes))


def cmd_train(args) -> dict:
    from learner.latent.train import ARMS, BASELINE, WARM, train

    need_dir(args.data, "--data", DATA_FILES, "write one with `tinycompress latent data --out DIR`")
    arms = (WARM, BASELINE, *ARMS)
    if args.arm not in arms:
        raise UsageError(f"--arm {args.arm!r} is not an arm; choose from {', '.join(arms)}")
    if args.init is not None:
        need_dir(args.init, "--init", ("config.json", "state"), "a finished `tinycompress latent train --arm warm` run")
    tcfg = _train_config(args)
    try:
        train(args.out, args.data, args.arm, args.k, tcfg, init=args.init, log=_log)
    except ValueError as e:  # another configuration in the run folder
        raise UsageError(str(e)) from None
    from learner.latent.figures import curve_figure

    curve_figure(args.out.parent, args.out / "curves.png", names=[args.out.name])
    return {"out": str(args.out), "arm": args.arm, "k": args.k}


def cmd_eval(args) -> dict:
    import torch

    from learner.latent.data import load_split, load_tokenizer
    from learner.latent.evaluate import evaluate
    from learner.latent.train import BASELINE, WARM, load_reader
    from learner.latent.views import VIEWS, examples

    need_dir(args.data, "--data", DATA_FILES, "write one with `tinycompress latent data --out DIR`")
    need_dir(args.checkpoint, "--checkpoint", ("config.json", "state"), "a folder from `tinycompress latent train`")
    try:
        model, config = load_reader(args.checkpoint, args.data)
    except ValueError as e:
        raise UsageError(str(e)) from None
    t = config["train"]
    torch.set_num_threads(t["threads"])
    tok = load_tokenizer(args.data)
    rows = examples(tok, load_split(args.data, args.split))
    cells = ([("full", 0)] + [(v, k) for k in t["budgets"] for v in VIEWS if v != "full"]
             if config["arm"] == BASELINE else [("full", 0)] if config["arm"] == WARM else [("latent", config["k"])])
    report = {}
    for view, k in cells:
        r = evaluate(model, rows, view, k, t["window"], tok, t["max_new_tokens"])
        report[f"{view}@{k}"] = r
        _log(f"{view} k={k}: EM {r['em']:.3f} F1 {r['f1']:.3f} (n={r['n']})")
    out = args.report or args.checkpoint / "eval.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    return {"report": str(out), **{c: {"em": r["em"], "f1": r["f1"]} for c, r in report.items()}}


def cmd_study(args) -> dict:
    from learner.latent.report import write_report
    from learner.latent.study import StudySettings, quick_settings, run_study

    need_dir(args.data, "--data", DATA_FILES, "write one with `tinycompress latent data --out DIR`")
    s = quick_settings() if args.quick else StudySettings(seeds=args.seeds)
    train_cfg = replace(s.train, threads=args.threads, **({"steps": args.steps} if args.steps else {}))
    s = replace(s, train=train_cfg)
    try:
        cells = run_study(args.data, args.out, s, log=_log)
    except ValueError as e:
        raise UsageError(str(e)) from None
    summary = write_report(args.out, cells, s.train.budgets)
    _log((args.out / "table.md").read_text())
    return {"out": str(args.out), "cells": len(cells), "rows": sorted(summary["table"])}
