"""A training run's folder: its layout, the ``latest`` pointer, retention and what a resume trims.

``tinycompress train`` and ``tinycompress ppo`` write the same layout::

    RUN/config.yaml                   the run's config, as loaded
    RUN/metrics.jsonl                 one JSON line per step
    RUN/tensorboard/                  the same figures for TensorBoard
    RUN/checkpoints/step_NNNNNN/      a policy checkpoint (plus what that trainer needs to resume)
    RUN/checkpoints/latest            the name of the newest one

:func:`point_latest` names the newest checkpoint (atomically: a kill leaves the old pointer) and
then removes all but the newest ``keep``; :func:`latest_checkpoint` reads it back;
:func:`truncate_metrics` drops the metric lines of steps a resumed run will redo.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

METRICS = "metrics.jsonl"


def checkpoint_folder(out: str | Path, step: int) -> Path:
    """``RUN/checkpoints/step_NNNNNN`` of ``step`` (not created)."""
    return Path(out) / "checkpoints" / f"step_{step:06d}"


def point_latest(checkpoint: Path, keep: int = 0) -> None:
    """``checkpoint``'s folder becomes ``latest``; then only the newest ``keep`` step folders
    stay (0 keeps them all)."""
    folder = checkpoint.parent
    tmp = folder / "latest.tmp"
    tmp.write_text(checkpoint.name)
    os.replace(tmp, folder / "latest")
    if keep:  # the newest ones only, once the pointer names the new one
        for old in sorted(folder.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint folder ``RUN/checkpoints/latest`` names; None before the first one."""
    pointer = Path(out) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def truncate_metrics(out: str | Path, step: int, log: Callable[[str], object] | None = None) -> None:
    """Keep the lines of ``RUN/metrics.jsonl`` up to ``step``: a resumed run redoes the rest.
    A line torn by a kill mid-write is dropped (and named to ``log``)."""
    path = Path(out) / METRICS
    if not path.exists():
        return
    kept = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            if log is not None:
                log(f"warning: dropped unreadable line {n} of {path}: {line[:80]!r}")
    path.write_text("".join(line + "\n" for line in kept))
