"""Checks every ``tinycompress`` command makes before it starts Ray or writes anything.

A bad flag, path or config is a :class:`UsageError`: ``tinycompress`` prints its one line on
stderr, naming the flag or file and the fix, and exits 2 without a traceback. The argparse
types here (:func:`count`, :func:`fraction`) reject out-of-range numbers while parsing; the
``need_*`` functions check folders; :func:`staged_dir` writes an output folder so that a
failure leaves nothing behind. This module imports only the standard library: it sits under
every package's command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UsageError(Exception):
    """A bad argument, path or config, found before any work started: exit 2, one line."""


def yaml_error(path: str | Path, error: Exception) -> str:
    """One line for a YAML syntax error: the file, the line and what the parser expected."""
    mark = getattr(error, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    return f"{path}:{where} not valid YAML ({getattr(error, 'problem', None) or error})"


def count(minimum: int = 0):
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(minimum: float = 0.0, above: bool = False):
    """An argparse type: a finite number ``>= minimum`` (``> minimum`` with ``above``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum:g}, got {value:g}")
        return value

    parse.__name__ = f"number {'>' if above else '>='} {minimum:g}"
    return parse


def widths(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers (``16,32,64``)."""
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 16,32,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every width must be >= 1, got {text!r}")
    return values


def run_arguments(p: argparse.ArgumentParser, *, config: str, out: str, steps: str, example: str,
                  init: str | None = None) -> None:
    """The flags every training command shares: ``--config --data [--init] --out --resume
    --overwrite --max-steps --set``; the strings say what each means for this command (``init``
    None: the command adds its own ``--init``)."""
    p.add_argument("--config", required=True, help=config)
    p.add_argument("--data", required=True, help="folder written by `tinycompress data`")
    if init is not None:
        p.add_argument("--init", required=True, help=init)
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first (a new run)")
    p.add_argument("--max-steps", type=count(1), default=None, help=f"override {steps}")
    p.add_argument("--set", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help=f"override one config value (repeatable), e.g. --set {example}; checked like the file")


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


def device(text: str) -> str:
    """An argparse type: ``cpu``, or ``cuda``/``cuda:N`` when torch sees that GPU."""
    if text == "cpu":
        return text
    if text == "cuda" or text.startswith("cuda:"):
        import torch

        index = int(text.split(":")[1]) if ":" in text and text.split(":")[1].isdigit() else 0
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device here; use cpu")
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA device(s)")
        return text
    raise argparse.ArgumentTypeError(f"expected cpu or cuda, got {text!r}")


def need_dir(path: str | Path, flag: str, holds: tuple[str, ...] = (), hint: str = "") -> Path:
    """``path`` as a folder holding every name in ``holds``, else a UsageError naming ``flag``."""
    p = Path(path)
    hint = f" ({hint})" if hint else ""
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: no such folder{hint}")
    missing = [name for name in holds if not (p / name).exists()]
    if missing:
        raise UsageError(f"{flag} {path}: {missing[0]} is missing{hint}")
    return p


def need_data(path: str | Path, *files: str, flag: str = "--data") -> Path:
    """A dataset folder written by ``tinycompress data`` (its tokenizer and ``files``)."""
    return need_dir(path, flag, ("stats.json", "tokenizer", *files), "write one with `tinycompress data --out DIR`")


def need_checkpoint(path: str | Path, flag: str) -> Path:
    """A policy checkpoint folder: ``config.json``, weights and the tinycompress metadata."""
    p = need_dir(path, flag, ("config.json", "tinycompress.json"),
                 "a checkpoint written by `tinycompress sft`, e.g. serve/assets/compressor_10m")
    weights = sorted(p.glob("model*.safetensors"))
    if not weights:
        raise UsageError(f"{flag} {path}: no model*.safetensors weights in it")
    for file in weights:
        problem = _safetensors_problem(file)
        if problem:
            raise UsageError(f"{flag} {path}: {file.name} is not a whole safetensors file ({problem})")
    return p


def _safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a complete safetensors file (header, then every tensor's bytes), or
    None: a truncated or overwritten checkpoint is named here, not deep inside a Ray actor."""
    import json
    import struct

    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "shorter than its header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header of {n} bytes in a {size}-byte file"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "header is not JSON"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        return f"truncated: {size} bytes, its tensors need {8 + n + max(ends)}"
    return None


def fresh_run_dir(out: str | Path, resume: bool, overwrite: bool, resumable: str) -> Path:
    """The run folder ``out``, checked against mixing two runs in one folder.

    ``--resume`` needs ``out/resumable`` to exist; otherwise a non-empty ``out`` is refused
    unless ``--overwrite`` is given, which empties it first.
    """
    p = Path(out)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if resume:
        if not (p / resumable).exists():
            raise UsageError(f"--resume: nothing to resume in {out} ({resumable} is missing); "
                             "drop --resume to start a new run")
        return p
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out}: folder is not empty; pass --resume to continue the run in "
                             "it, --overwrite to replace it, or another --out")
        shutil.rmtree(p)
    return p


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write into; on success its files move into ``out``.

    If the body raises, the temporary folder is removed and ``out`` is as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
