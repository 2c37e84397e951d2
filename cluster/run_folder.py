"""The ``checkpoints/`` folder of a run: the ``latest`` pointer and retention.

``tinycompress train`` and ``tinycompress ppo`` write ``RUN/checkpoints/step_NNNNNN/`` folders;
:func:`point_latest` names the newest in ``RUN/checkpoints/latest`` (atomically: a kill leaves
the old pointer) and then removes all but the newest ``keep``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
