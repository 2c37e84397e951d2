"""``tinycompress train``: GRPO from a warm-start checkpoint on Ray.

Joins the cluster in ``RAY_ADDRESS`` when set (as under ``ray job submit``), else starts an
embedded local Ray instance.
"""

from __future__ import annotations

import argparse
import json
import sys


def _train(args: argparse.Namespace) -> int:
    import ray

    from cluster.controller import GRPOController
    from cluster.runtime import init_ray
    from learner.config import RunConfig

    try:  # a bad config fails here, before any Ray process starts
        cfg = RunConfig.from_yaml(args.config)
    except (ValueError, FileNotFoundError) as e:
        print(f"tinycompress train: bad config: {e}", file=sys.stderr)
        return 2
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
    p = sub.add_parser("train", help="GRPO training on Ray from a warm-start checkpoint")
    p.add_argument("--config", required=True, help="a preset such as tune_configs/10m.yaml")
    p.add_argument("--data", required=True, help="folder written by `tinycompress data`")
    p.add_argument("--init", required=True, help="warm-start checkpoint (e.g. serve/assets/compressor_10m)")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, best/, checkpoints/, config.yaml")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/latest")
    p.set_defaults(func=_train)
