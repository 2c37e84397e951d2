"""A token-level gymnasium environment: the program written one IR token per step.

The episode's intent is fixed at ``reset``; each action appends one token to the program; the
end-of-program action (or the length limit) ends the episode and the validator scores the
program against the intent's reference: +1 pass / -1 fail, -0.01 per IR token (the reward of
:func:`validator_actors.validator.score`, the same number GRPO trains on). Every earlier step
rewards 0. This is the shape RLlib's PPO trains on (one env step per token), beside
:class:`rollout.env.CompressionEnv`'s one step per program.

Actions are the tokens an IR program can hold (the tokenizer's tokens made only of program
characters: symbols, operators, contexts, run-name pieces) plus the end action, so a policy
never spends probability on intent words or special tokens. Observations are fixed-size:

- ``intent``: the intent's token ids (the policy's own tokenizer), right-padded with the pad id;
- ``program``: the program so far as action indices (1..n-1), right-padded with 0;
- ``action_mask``: 1 for the actions allowed now (no end on an empty program; only the end
  once the program has ``max_program_tokens`` tokens).

``gym.make("TinyCompress-v0", data_dir=..., tokenizer=...)`` builds it (registered on import).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from rollout.env import episode_rows
from validator_actors.tokens import TokenCounter, resolve_tokenizer_path
from validator_actors.validator import Validator, score

ENV_ID = "TinyCompress-v0"
END = 0  # the action that ends the program


PROGRAM_CHARS = frozenset(string.ascii_letters + string.digits + "*!?&|.:>@_/-")


def program_vocabulary(tokenizer) -> list[int]:
    """Sorted ids of every token an IR program can hold: the tokenizer's tokens made only of
    program characters (symbols, operators, separators, context and run-name pieces), none of
    the special tokens and no token that starts a word after a space (an intent's)."""
    specials = {tokenizer.token_to_id(t) for t in ("<|pad|>", "<|bos|>", "<|eos|>", "<|sep|>")}
    return sorted(i for token, i in tokenizer.get_vocab().items()
                  if i not in specials and token and set(token) <= PROGRAM_CHARS)


class TokenCompressionEnv(gym.Env):
    """``reset() -> (obs, info)``; ``step(action) -> (obs, reward, terminated, truncated, info)``."""

    metadata = {"render_modes": []}

    def __init__(self, rows: Sequence[dict] | None = None, *, data_dir: str | Path | None = None,
                 split: str = "train", tokenizer: str | Path | None = None, vocabulary: Sequence[int] | None = None,
                 max_intent_tokens: int = 190, max_program_tokens: int = 96, token_counter: Callable | None = None):
        from tokenizers import Tokenizer

        rows = episode_rows(rows, data_dir, split, type(self).__name__)
        if max_intent_tokens < 1 or max_program_tokens < 1:
            raise ValueError("max_intent_tokens and max_program_tokens must be >= 1")
        if tokenizer is None:
            if data_dir is None:
                raise ValueError("give tokenizer= (a folder holding tokenizer.json) or data_dir=")
            tokenizer = Path(data_dir) / "tokenizer"
        path = resolve_tokenizer_path(tokenizer)
        self.tok = Tokenizer.from_file(str(path))
        self.pad_id = self.tok.token_to_id("<|pad|>")
        self.rows = rows
        self.validator = Validator()
        self.token_counter = token_counter or TokenCounter(path)  # IR tokens as GRPO counts them
        if vocabulary is None:
            vocabulary = program_vocabulary(self.tok)
        self.vocabulary = np.asarray(list(vocabulary), dtype=np.int64)  # action a >= 1 is token vocabulary[a - 1]
        self.index_of = {int(t): i + 1 for i, t in enumerate(self.vocabulary)}
        self.max_intent_tokens, self.max_program_tokens = max_intent_tokens, max_program_tokens
        n = len(self.vocabulary) + 1
        vocab_size = self.tok.get_vocab_size()
        self.action_space = gym.spaces.Discrete(n)
        self.observation_space = gym.spaces.Dict({
            "intent": gym.spaces.Box(0, vocab_size - 1, (max_intent_tokens,), np.int64),
            "program": gym.spaces.Box(0, n - 1, (max_program_tokens,), np.int64),
            "action_mask": gym.spaces.Box(0, 1, (n,), np.int8),
        })
        self._index: int | None = None
        self._program: list[int] = []

    # ------------------------------------------------------------------ encoding

    def encode_program(self, program: str) -> list[int]:
        """The actions that write ``program`` (KeyError naming a token outside the vocabulary)."""
        ids = self.tok.encode(program, add_special_tokens=False).ids
        missing = [self.tok.id_to_token(i) for i in ids if i not in self.index_of]
        if missing:
            raise KeyError(f"{program!r} uses tokens outside the action vocabulary: {missing}")
        return [self.index_of[i] for i in ids]

    def program_text(self, actions: Sequence[int]) -> str:
        return self.tok.decode([int(self.vocabulary[a - 1]) for a in actions if a != END])

    def action_mask(self, program: Sequence[int]) -> np.ndarray:
        """The actions allowed after ``program``: no end on an empty one, only the end at the limit."""
        mask = np.ones(self.action_space.n, np.int8)
        if not program:
            mask[END] = 0
        if len(program) >= self.max_program_tokens:
            mask[:] = 0
            mask[END] = 1
        return mask

    def intent_ids(self, index: int) -> np.ndarray:
        """Row ``index``'s intent as token ids, cut to ``max_intent_tokens`` and right-padded."""
        ids = self.tok.encode(self.rows[index]["intent"], add_special_tokens=False).ids[:self.max_intent_tokens]
        out = np.full(self.max_intent_tokens, self.pad_id, np.int64)
        out[:len(ids)] = ids
        return out

    def observe(self, index: int, program: Sequence[int]) -> dict:
        """The observation of row ``index`` with ``program`` (action indices) written so far; no
        episode state is read or changed, so many rows can be decoded in lockstep."""
        written = np.zeros(self.max_program_tokens, np.int64)
        written[:len(program)] = program
        return {"intent": self.intent_ids(index), "program": written, "action_mask": self.action_mask(program)}

    def judge(self, index: int, program: Sequence[int]) -> tuple[float, dict]:
        """(reward, info) of ``program`` as row ``index``'s answer: the validator's score."""
        row, text = self.rows[index], self.program_text(program)
        result = score([row["intent"]], [text], [row["reference_hash"]], validator=self.validator,
                       token_counter=self.token_counter)[0]
        return float(result.reward), {"program": text, "valid": result.valid, "codes": list(result.codes),
                                      "tokens": result.tokens, "id": row.get("id")}

    # ------------------------------------------------------------------ gymnasium

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = int(options["index"]) if options and "index" in options else int(self.np_random.integers(len(self.rows)))
        self._index, self._program = index, []
        words = len(self.tok.encode(self.rows[index]["intent"], add_special_tokens=False).ids)
        return self.observe(index, self._program), {"index": index, "id": self.rows[index].get("id"),
                                                    "intent_truncated": words > self.max_intent_tokens}

    def step(self, action):
        if self._index is None:
            raise RuntimeError("call reset() before step()")
        action = int(action)
        if not self.action_mask(self._program)[action]:
            raise ValueError(f"action {action} is masked now (program length {len(self._program)})")
        if action != END:  # at the length limit the mask leaves only the end action
            self._program.append(action)
            return self.observe(self._index, self._program), 0.0, False, False, {}
        reward, info = self.judge(self._index, self._program)
        return self.observe(self._index, self._program), reward, True, False, info


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="rollout.token_env:TokenCompressionEnv")
