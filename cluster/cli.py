"""The ``tinycompress`` command line.

Each subcommand lives next to the code it drives and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Modules are imported lazily by name so that
``tinycompress validate`` does not pay for importing torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> module that defines ``register(subparsers)``
SUBCOMMANDS: dict[str, str] = {
    "validate": "validator_actors.cli",
    "data": "rollout.cli",
    "baseline": "rollout.cli",
    "demo": "cluster.demo",
    "sft": "learner.cli",
    "eval": "learner.cli",
    "report": "learner.cli",
    "train": "cluster.train_cli",
    "tune": "sweep.cli",
    "vae": "learner.vae_cli",
    "serve": "serve.cli",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinycompress", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = SUBCOMMANDS.get(argv[0]) if argv else None
    imported: set[str] = set()
    for name, module in SUBCOMMANDS.items():
        if wanted is not None and module != wanted:
            # only the chosen subcommand's module is imported; the rest are listed cheaply
            sub.add_parser(name, help=f"see: tinycompress {name} --help")
        elif module not in imported:
            importlib.import_module(module).register(sub)
            imported.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    # before torch loads: idle OpenMP threads sleep instead of spinning, which on a busy
    # 2-core machine made 2-thread CPU work several times slower (docs/VAE.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
