"""The ``tinycompress`` command line.

Each subcommand lives next to the code it drives and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Modules are imported lazily by name so that
``tinycompress validate`` does not pay for importing torch or Ray.

Errors: a bad flag, path or config (argparse, or ``validator_actors.cli_args.UsageError``
raised by a command before it starts work) is one line on stderr and exit 2; any other
failure is one line and exit 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from validator_actors.cli_args import UsageError

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
    "ppo": "cluster.ppo",
    "tune": "sweep.cli",
    "vae": "learner.vae.cli",
    "latent": "learner.latent.cli",
    "serve": "serve.cli",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the command and where its help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinycompress")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown (not installed)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tinycompress", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tinycompress {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure (anywhere on the line)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep Ray's start-up lines and every actor's progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = next((a for a in argv if not a.startswith("-")), None)
    wanted = SUBCOMMANDS.get(command) if command else None
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
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    args = build_parser(argv).parse_args(argv)
    args.debug = debug
    from cluster.runtime import QUIET_ENV, VERBOSE_ENV

    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:  # before transformers loads: no "Loading weights" bars
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        if args.debug:
            raise
        print(f"tinycompress {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinycompress {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # one line; the traceback only on request
        if args.debug:
            raise
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        print(f"tinycompress {args.command}: failed: {type(e).__name__}: {reason} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
