"""A gymnasium environment over the intent data: one-step episodes scored by the validator.

Observation: an intent (text). Action: a program (text). Reward: the validator's reward
against the intent's reference hash (+1 pass / -1 fail, -0.01 per IR token). Deterministic:
the same seed gives the same intents, the same action the same reward.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from validator_actors.validator import Validator, score

TEXT_CHARSET = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")
MAX_INTENT_CHARS = 2048


def episode_rows(rows: Sequence[dict] | None, data_dir: str | Path | None, split: str, env: str) -> list[dict]:
    """The rows an environment draws its episodes from: ``rows``, or the ``split`` of
    ``data_dir``; a ValueError naming ``env`` when there are none."""
    if rows is None:
        if data_dir is None:
            raise ValueError(f"{env} needs rows or data_dir")
        from rollout.datagen.dataset import read_split
        rows = read_split(data_dir, split).to_pylist()
    if not rows:
        raise ValueError(f"{env} needs at least one row")
    return list(rows)


class CompressionEnv(gym.Env):
    """``reset() -> (intent, info)``; ``step(program) -> (intent, reward, True, False, info)``.

    ``rows`` are dicts with at least ``intent`` and ``reference_hash`` (a split from
    ``rollout.datagen.dataset.read_split(...).to_pylist()``), or pass ``data_dir`` and ``split``.
    """

    metadata = {"render_modes": []}

    def __init__(self, rows: Sequence[dict] | None = None, *, data_dir: str | Path | None = None,
                 split: str = "train", token_counter: Callable | None = None):
        self.rows = episode_rows(rows, data_dir, split, type(self).__name__)
        self.validator = Validator()
        self.token_counter = token_counter
        self.observation_space = gym.spaces.Text(max_length=MAX_INTENT_CHARS, charset=TEXT_CHARSET)
        self.action_space = gym.spaces.Text(
            max_length=self.validator.cb.max_program_chars, min_length=0, charset=TEXT_CHARSET
        )
        self._row: dict | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = int(self.np_random.integers(len(self.rows)))
        if options and "index" in options:
            index = int(options["index"])
        self._row = self.rows[index]
        return self._row["intent"], {"index": index, "id": self._row.get("id")}

    def step(self, action: str):
        if self._row is None:
            raise RuntimeError("call reset() before step()")
        row = self._row
        result = score([row["intent"]], [action], [row["reference_hash"]],
                       validator=self.validator, token_counter=self.token_counter)[0]
        info = {"valid": result.valid, "codes": list(result.codes), "tokens": result.tokens,
                "id": row.get("id")}
        return row["intent"], float(np.float64(result.reward)), True, False, info
