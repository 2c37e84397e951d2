"""Typed, read-only view of ``CODEBOOK.json``: the vocabulary of the Symbolic IR.

The JSON file is the single source of truth; this module only indexes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CODEBOOK_PATH = Path(__file__).with_name("CODEBOOK.json")


@dataclass(frozen=True)
class Entry:
    """One numbered entry (a contract rule or an invariant)."""

    radical: str
    number: int
    summary: str
    text: str


@dataclass(frozen=True)
class Codebook:
    """Indexed codebook. Build it with :func:`load_codebook`."""

    raw: dict
    version: str
    radicals: dict[str, dict]
    contexts: tuple[str, ...]
    default_context: str
    unary_ops: dict[str, str]  # symbol -> action, e.g. "?" -> "check"
    action_symbols: dict[str, str]  # action -> symbol, the bare action -> ""
    bare_action: str  # action of a term with no unary operator
    symbols: dict[str, str]  # role -> symbol: all, and, or, path, context, output, alias
    entries: dict[str, dict[int, Entry]]  # radical -> number -> entry (numbered radicals only)
    aliases: dict[str, str]
    durable_roots: tuple[str, ...]
    default_durable_root: str
    forbidden_roots: tuple[str, ...]
    max_path_length: int
    max_outputs: int
    max_program_chars: int

    def numbers(self, radical: str) -> tuple[int, ...]:
        """The valid numbers of a numbered radical, ascending (empty for others)."""
        return tuple(sorted(self.entries.get(radical, {})))

    def action_symbol(self, action: str) -> str:
        """Inverse of ``unary_ops``: "check" -> "?", the bare action -> ""."""
        return self.action_symbols[action]


def _build(raw: dict) -> Codebook:
    ops = raw["operators"]
    role_of = {"ALL": "all", "AND": "and", "OR": "or", "PATH": "path", "CONTEXT": "context"}
    symbols = {role_of[o["name"]]: sym for sym, o in ops.items() if o["name"] in role_of}
    symbols["output"] = raw["literals"]["output"]["symbol"]
    symbols["alias"] = raw["literals"]["alias"]["symbol"]
    entries: dict[str, dict[int, Entry]] = {}
    for letter, rad in raw["radicals"].items():
        if rad["numbered"]:
            table = raw[rad["numbered"]]
            entries[letter] = {
                int(n): Entry(letter, int(n), e["summary"], e["text"]) for n, e in table.items()
            }
    paths = raw["paths"]
    unary = {s: o["action"] for s, o in ops.items() if o["kind"] == "unary"}
    return Codebook(
        raw=raw,
        version=raw["version"],
        radicals=dict(raw["radicals"]),
        contexts=tuple(raw["contexts"]),
        default_context=raw["default_context"],
        unary_ops=unary,
        action_symbols={**{a: sym for sym, a in unary.items()}, raw["bare_action"]: ""},
        bare_action=raw["bare_action"],
        symbols=symbols,
        entries=entries,
        aliases=dict(raw["aliases"]),
        durable_roots=tuple(paths["durable_roots"]),
        default_durable_root=paths["default_durable_root"],
        forbidden_roots=tuple(paths["forbidden_roots"]),
        max_path_length=int(paths["max_path_length"]),
        max_outputs=int(paths["max_outputs"]),
        max_program_chars=int(raw["limits"]["max_program_chars"]),
    )


@lru_cache(maxsize=4)
def load_codebook(path: str | Path = CODEBOOK_PATH) -> Codebook:
    """Load and index a codebook file (cached per path)."""
    with open(path, encoding="utf-8") as fh:
        return _build(json.load(fh))
