"""Token counting with the project's trained BPE tokenizer (``DIR/tokenizer/tokenizer.json``).

:class:`TokenCounter` is the ``token_counter`` callable that :func:`validator_actors.validator.score`
and the validator pool take: ``list[str] -> list[int]``. It stores only the path and loads the
``tokenizers.Tokenizer`` on first use, so it pickles cheaply into Ray actors.

>>> counter = TokenCounter("data/tokenizer")          # doctest: +SKIP
>>> counter(["C3?:build", "check contract rule 3 while building"])  # doctest: +SKIP
[4, 7]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"


def resolve_tokenizer_path(path: str | Path) -> Path:
    """Accept the tokenizer folder or the ``tokenizer.json`` inside it; return the json path."""
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path!s}: give the folder that holds {TOKENIZER_FILE} "
            f"(e.g. DATA_DIR/tokenizer) or the json file itself"
        )
    return p


class TokenCounter:
    """Count tokens of texts with a trained ``tokenizers`` BPE file, special tokens excluded."""

    name = "bpe"

    def __init__(self, path: str | Path):
        self.path = str(resolve_tokenizer_path(path))
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer  # imported lazily: the CLI path stays light

            self._tokenizer = Tokenizer.from_file(self.path)
        return self._tokenizer

    def __call__(self, texts: Sequence[str]) -> list[int]:
        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            return []
        # encode_batch_fast skips offsets and len(e) skips building id lists: 1.4x faster
        return [len(e) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def __getstate__(self) -> dict:
        return {"path": self.path}  # the Rust tokenizer is reloaded on the other side

    def __setstate__(self, state: dict) -> None:
        self.path, self._tokenizer = state["path"], None

    def __repr__(self) -> str:
        return f"TokenCounter({self.path!r})"
