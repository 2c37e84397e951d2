"""Equivalent surface forms of one program, drawn at random: the exploring SFT target.

Many texts mean the same program and so score the same (IR.md, "Meaning, canonical and
minimal forms"). :func:`draw_form` takes a program as the dataset's ``surface`` column writes
it (the intent's order, every rule listed, the context written, full output paths) and draws
one equivalent text by independent fair coins, one per choice the IR allows:

- each complete numbered set sharing an action: ``C*?`` or its 13 members listed;
- a default context: written (``:execute``) or left out;
- each output folder under the default root: full (``>_runs/x``) or short (``>x``);
- a legacy request (``legacy=True``): the ``@ALIAS`` or what it stands for;
- the order: the intent's, or (with probability ``shuffle``) items and clauses permuted.

The minimal form's length is one outcome among many and is never favoured: with every coin
on the short side the draw is as short as ``ir.minimal`` (tested on every split's rows).
Example::

    >>> import random
    >>> draw_form("V?&C1?&C2?&C3?&C4?&C5?&C6?&C7?&C8?&C9?&C10?&C11?&C12?&C13?:execute",
    ...           _Always(0.0))
    'V?&C*?'
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from validator_actors import ir
from validator_actors.codebook import Codebook, load_codebook


class _Always:
    """A stand-in for ``random.Random`` whose coins always land one way (tests and doctest):
    ``random()`` returns ``value`` (0.0 = every short choice, 0.99 = every long one)."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value

    def shuffle(self, seq: list) -> None:
        return None


def _items(atoms: Sequence[ir.Atom], cb: Codebook) -> list[list[ir.Atom]]:
    """Split one clause's atoms (in written order) into items: each complete numbered set that
    shares an action and is written as a consecutive run becomes one item, every other atom its
    own item."""
    items, i = [], 0
    while i < len(atoms):
        radical, number, action = atoms[i]
        if number is not None:
            size = len(cb.entries[radical])
            run = list(atoms[i : i + size])
            if len(run) == size and {(r, a) for r, _, a in run} == {(radical, action)} \
                    and sorted(n for _, n, _ in run) == list(cb.numbers(radical)):
                items.append(run)
                i += size
                continue
        items.append([atoms[i]])
        i += 1
    return items


def _alias_for(items: list[list[ir.Atom]], cb: Codebook) -> tuple[str, int] | None:
    """(alias, number of leading items it covers) for a legacy request: the longest alias whose
    meaning equals the clause's first items."""
    best = None
    for alias, text in cb.aliases.items():
        atoms = set(ir.meaning(ir.parse(text, cb), cb).clauses[0])
        covered, k = set(), 0
        while k < len(items) and covered != atoms and set(items[k]) <= atoms:
            covered |= set(items[k])
            k += 1
        if covered == atoms and (best is None or len(atoms) > best[2]):
            best = (alias, k, len(atoms))
    return None if best is None else best[:2]


def _item_text(item: list[ir.Atom], short: bool, cb: Codebook) -> str:
    radical, _, action = item[0]
    if len(item) > 1 and short:
        return f"{radical}{cb.symbols['all']}{cb.action_symbol(action)}"
    return cb.symbols["and"].join(ir.atom_text(a, cb) for a in item)


def draw_form(surface: str, rng: random.Random, legacy: bool = False, shuffle: float = 0.0,
              cb: Codebook | None = None) -> str:
    """One equivalent form of ``surface`` (a valid program with no aliases), drawn by ``rng``.

    Each coin is ``rng.random() < 0.5``: below one half picks the shorter choice.
    """
    cb = cb or load_codebook()
    s = ir.parse(surface, cb)
    if any(t.alias is not None or t.via_path is not None for c in s.clauses for t in c):
        raise ValueError(f"draw_form takes a program without aliases or paths, got {surface!r}")
    m = ir.meaning(s, cb)
    clauses = []
    for n, conj in enumerate(s.clauses):
        items = _items([a for t in conj for dnf in ir._atoms(t, cb) for a in dnf], cb)
        alias = _alias_for(items, cb) if legacy and n == 0 else None
        texts = [_item_text(item, rng.random() < 0.5, cb) for item in items]
        if alias is not None and rng.random() >= 0.5:  # the alias: the longer, legacy choice
            texts = [alias[0]] + texts[alias[1]:]
        if len(texts) > 1 and rng.random() < shuffle:
            rng.shuffle(texts)
        clauses.append(cb.symbols["and"].join(texts))
    if len(clauses) > 1 and rng.random() < shuffle:
        rng.shuffle(clauses)
    text = cb.symbols["or"].join(clauses)
    if m.context != cb.default_context or rng.random() >= 0.5:
        text += f"{cb.symbols['context']}{m.context}"
    for path in s.outputs:
        text += ir._print_output(ir.normalize_output(path, cb), cb, short=rng.random() < 0.5)
    return text
