"""``tinycompress train``: GRPO from a warm-start checkpoint on Ray.

Joins the cluster in ``RAY_ADDRESS`` when set (as under ``ray job submit``), else starts an
embedded local Ray instance.
"""

from __future__ import annotations

import argparse
import json
import sys


def _train(args: argparse.Namespace) -> int:
    from learner.cli import checked_config
    from validator_actors.cli_args import fresh_run_dir, need_data

    # every check before Ray starts: the config, the warm start, the data, the run folder
    sets = list(args.set) + ([f"train.steps={args.max_steps}"] if args.max_steps is not None else [])
    cfg = checked_config(args.config, sets, None if args.resume else args.init)
    need_data(args.data, "val.parquet", f"{cfg.train.split}.parquet")
    fresh_run_dir(args.out, args.resume, args.overwrite, "checkpoints/latest")
    return _run(cfg, args)


def _run(cfg, args: argparse.Namespace) -> int:
    import ray

    from cluster.controller import GRPOController
    from cluster.runtime import init_ray

    init_ray()
    try:
        ctl = GRPOController(cfg, args.data, args.init, args.out, resume=args.resume,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
        cfg.to_yaml(f"{args.out}/config.yaml")
        result = ctl.run()
    finally:
        ray.shutdown()
    print(json.dumps({"out": args.out, **result}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from validator_actors.cli_args import run_arguments

    p = sub.add_parser("train", help="GRPO training on Ray from a warm-start checkpoint")
    run_arguments(p, config="a preset such as tune_configs/10m.yaml", steps="train.steps", example="grpo.lr=5e-5",
                  init="warm-start checkpoint (e.g. serve/assets/compressor_10m)",
                  out="run folder: metrics.jsonl, best/, checkpoints/, config.yaml")
    p.set_defaults(func=_train)
