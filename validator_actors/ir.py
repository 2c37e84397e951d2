"""The Symbolic IR: parser, surface syntax tree, canonical meaning and printers.

Grammar (whitespace is allowed between terms and around ``& | : >``)::

    program := expr [":" context] (">" path)*
    expr    := conj ("|" conj)*            # OR binds looser than AND
    conj    := term ("&" term)*
    term    := "@" NAME                    # legacy alias, e.g. @JOB_PRESENT
             | "L" "." RADICAL ["." (NUMBER | "*")] [op]      # path access, L.C.3 == C3
             | RADICAL [op] [NUMBER | "*"] [op]               # at most one op: C3?, C?3, C*?
    op      := "?" | "!"                   # check, deny; no op = the bare action (enforce)
    path    := [A-Za-z0-9_./-]+            # bare name = folder under the default durable root

Every symbol comes from ``CODEBOOK.json``. Parsing is in two stages: :func:`parse` builds a
surface tree and reports syntax errors; :func:`check_symbols` reports unknown symbols; then
:func:`meaning` reduces any surface form to one canonical :class:`Meaning` (a minimal
disjunctive normal form over atoms, the context, the outputs), which :func:`canonical` and
:func:`minimal` print. Equivalent surface forms have equal meanings by construction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from validator_actors.codebook import Codebook, load_codebook

NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
PATH_CHARS = NAME_CHARS | frozenset("./-")
DIGITS = frozenset("0123456789")
LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
SPACE = frozenset(" \t")
# characters that sit where an operator goes: known ones come from the codebook, the rest
# parse so that the symbol check can name them (UNKNOWN_OPERATOR) instead of a bare syntax error
OPERATOR_LIKE = frozenset("?!~^%$#+=;,")


class IRSyntaxError(ValueError):
    """A program that does not follow the grammar. ``code`` is a stable error code."""

    def __init__(self, code: str, message: str, pos: int):
        super().__init__(f"{code} at {pos}: {message}")
        self.code, self.message, self.pos = code, message, pos


@dataclass(frozen=True)
class Term:
    """One surface term. ``selector`` is a number, "*" or None; ``op`` the raw operator char."""

    radical: str
    selector: int | str | None
    op: str | None
    pos: int
    via_path: str | None = None  # the accessed radical's letter when written as L.X...
    alias: str | None = None  # set (and nothing else meaningful) for @ALIAS terms


@dataclass(frozen=True)
class Surface:
    """A parsed program before symbol checks: clauses of terms, OR-ed together."""

    clauses: tuple[tuple[Term, ...], ...]
    context: str | None
    outputs: tuple[str, ...]
    text: str


Atom = tuple[str, int | None, str]  # (radical, number or None, action)


@dataclass(frozen=True)
class Meaning:
    """The canonical meaning of a program: what its hash is taken over.

    ``clauses`` is a minimal DNF: sorted tuples of sorted atoms, no clause a superset of another.
    """

    clauses: tuple[tuple[Atom, ...], ...]
    context: str
    outputs: tuple[str, ...]
    notes: tuple[str, ...] = field(default=(), compare=False)  # warning codes met on the way


class _Parser:
    def __init__(self, text: str, cb: Codebook):
        self.s, self.i, self.cb = text, 0, cb
        self.sym = cb.symbols

    def error(self, message: str, pos: int | None = None) -> IRSyntaxError:
        pos = self.i if pos is None else pos
        found = repr(self.s[pos]) if pos < len(self.s) else "end of program"
        return IRSyntaxError("SYNTAX_ERROR", f"{message} (found {found})", pos)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in SPACE:
            self.i += 1

    def take_while(self, chars: frozenset) -> str:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in chars:
            self.i += 1
        return self.s[start : self.i]

    def program(self) -> Surface:
        clauses = [self.conj()]
        self.skip_space()
        while self.peek() == self.sym["or"]:
            self.i += 1
            clauses.append(self.conj())
            self.skip_space()
        context = None
        if self.peek() == self.sym["context"]:
            self.i += 1
            self.skip_space()
            if self.peek() not in LETTERS:
                raise self.error("a context name must follow ':'")
            context = self.take_while(NAME_CHARS)
            self.skip_space()
        outputs = []
        while self.peek() == self.sym["output"]:
            self.i += 1
            self.skip_space()
            path = self.take_while(PATH_CHARS)
            if not path:
                raise self.error("a run name or path must follow '>'")
            outputs.append(path)
            self.skip_space()
        if self.i != len(self.s):
            raise self.error("unexpected character; expected '&', '|', ':', '>' or the end")
        return Surface(tuple(clauses), context, tuple(outputs), self.s)

    def conj(self) -> tuple[Term, ...]:
        terms = [self.term()]
        self.skip_space()
        while self.peek() == self.sym["and"]:
            self.i += 1
            terms.append(self.term())
            self.skip_space()
        return tuple(terms)

    def term(self) -> Term:
        self.skip_space()
        start, c = self.i, self.peek()
        if c == self.sym["alias"]:
            self.i += 1
            name = self.take_while(NAME_CHARS)
            if not name:
                raise self.error("an alias name must follow '@'")
            return Term("", None, None, start, alias=self.sym["alias"] + name)
        if c not in LETTERS:
            raise self.error("expected a radical letter or an '@' alias")
        self.i += 1
        if self.peek() == self.sym["path"]:
            return self.path_term(c, start)
        op = self.op()
        selector = self.selector()
        op2 = self.op()
        if op and op2:
            raise self.error("a term takes at most one operator", self.i - 1)
        return Term(c, selector, op or op2, start)

    def path_term(self, radical: str, start: int) -> Term:
        self.i += 1  # the '.'
        target = self.peek()
        if target not in LETTERS:
            raise self.error("a radical letter must follow '.'")
        self.i += 1
        selector: int | str | None = self.sym["all"]
        if self.peek() == self.sym["path"]:
            self.i += 1
            selector = self.selector()
            if selector is None:
                raise self.error("a number or '*' must follow the second '.'")
        return Term(radical, selector, self.op(), start, via_path=target)

    def op(self) -> str | None:
        c = self.peek()
        if c and c in OPERATOR_LIKE:
            self.i += 1
            return c
        return None

    def selector(self) -> int | str | None:
        c = self.peek()
        if c == self.sym["all"]:
            self.i += 1
            return c
        if c in DIGITS:
            start = self.i
            digits = self.take_while(DIGITS)
            if len(digits) > 1 and digits[0] == "0":
                raise self.error("numbers have no leading zeros", start)
            if len(digits) > 6:
                raise self.error("number too long", start)
            return int(digits)
        return None


def parse(text: str, cb: Codebook | None = None) -> Surface:
    """Parse ``text`` into a :class:`Surface`; raise :class:`IRSyntaxError` on bad syntax."""
    cb = cb or load_codebook()
    if not isinstance(text, str):
        raise IRSyntaxError("SYNTAX_ERROR", f"a program is a string, not {type(text).__name__}", 0)
    if not text.strip():
        raise IRSyntaxError("EMPTY_PROGRAM", "the program is empty", 0)
    if len(text) > cb.max_program_chars:
        raise IRSyntaxError(
            "PROGRAM_TOO_LONG",
            f"the program has {len(text)} characters; the limit is {cb.max_program_chars}",
            cb.max_program_chars,
        )
    return _Parser(text, cb).program()  # positions count from the text as given


def _term_issues(t: Term, cb: Codebook) -> list[tuple[str, str]]:
    if t.alias is not None:
        if t.alias not in cb.aliases:
            return [("UNKNOWN_ALIAS", f"{t.alias} is not a legacy alias in codebook {cb.version}")]
        return []
    issues = []
    if t.radical not in cb.radicals:
        issues.append(("UNKNOWN_RADICAL", f"'{t.radical}' (at {t.pos}) is not a radical"))
    if t.op is not None and t.op not in cb.unary_ops:
        issues.append(("UNKNOWN_OPERATOR", f"'{t.op}' (term at {t.pos}) is not an operator"))
    target = t.radical
    if t.via_path is not None:
        if t.radical != "L" or t.via_path not in cb.entries:
            known = ", ".join(f"L.{r}" for r in cb.entries)
            issues.append(
                ("INVALID_PATH_ACCESS", f"'{t.radical}.{t.via_path}' is not a path; use {known}")
            )
            return issues
        target = t.via_path
    if t.selector is not None and target in cb.radicals:
        if target not in cb.entries:
            issues.append(
                ("NUMBER_NOT_ALLOWED", f"radical {target} has no numbered entries (term at {t.pos})")
            )
        elif t.selector != cb.symbols["all"] and t.selector not in cb.entries[target]:
            lo, hi = cb.numbers(target)[0], cb.numbers(target)[-1]
            issues.append(
                ("UNKNOWN_NUMBER", f"{target}{t.selector} does not exist; {target} runs {lo}-{hi}")
            )
    return issues


def check_symbols(s: Surface, cb: Codebook | None = None) -> list[tuple[str, str]]:
    """Every radical, operator, number, alias and context must exist in the codebook."""
    cb = cb or load_codebook()
    issues = [issue for clause in s.clauses for t in clause for issue in _term_issues(t, cb)]
    if s.context is not None and s.context not in cb.contexts:
        issues.append(
            ("UNKNOWN_CONTEXT", f"'{s.context}' is not a context; use one of {', '.join(cb.contexts)}")
        )
    return issues


_ALIAS_CACHE: dict[tuple[int, str], tuple] = {}


def _atoms(t: Term, cb: Codebook) -> tuple[tuple[Atom, ...], ...]:
    """The DNF of one symbol-checked term."""
    if t.alias is not None:
        key = (id(cb), t.alias)
        if key not in _ALIAS_CACHE:
            _ALIAS_CACHE[key] = meaning(parse(cb.aliases[t.alias], cb), cb).clauses
        return _ALIAS_CACHE[key]
    radical = t.via_path or t.radical
    action = cb.unary_ops[t.op] if t.op else cb.bare_action
    if t.selector == cb.symbols["all"]:
        return (tuple((radical, n, action) for n in cb.numbers(radical)),)
    return (((radical, t.selector, action),),)


def normalize_output(path: str, cb: Codebook) -> str:
    """A bare run name goes under the default durable root; './' and '//' fold; '..' stays."""
    if "/" not in path:
        path = cb.default_durable_root + path
    absolute = path.startswith("/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:  # './' is the repository root, '/' the absolute root
        return "/" if absolute else "./"
    return ("/" if absolute else "") + "/".join(parts) + "/"


def _atom_key(a: Atom, cb: Codebook, order: dict[str, int]) -> tuple:
    radical, number, action = a
    return (order[radical], -1 if number is None else number, _ACTIONS.index(action))


_ACTIONS = ("enforce", "check", "deny")


def meaning(s: Surface, cb: Codebook | None = None) -> Meaning:
    """Reduce a symbol-checked surface program to its canonical :class:`Meaning`."""
    cb = cb or load_codebook()
    order = {r: i for i, r in enumerate(cb.radicals)}
    notes: list[str] = []
    clauses: set[frozenset] = set()
    for conj in s.clauses:
        dnfs = [_atoms(t, cb) for t in conj]
        seen = [a for dnf in dnfs for a in itertools.chain.from_iterable(dnf)]
        for combo in itertools.product(*dnfs):
            clauses.add(frozenset(a for part in combo for a in part))
        if len(set(seen)) < len(seen):
            notes.append("DUPLICATE_TERM")
        if any(t.alias for t in conj):
            notes.append("LEGACY_ALIAS")
    minimal_set = [c for c in clauses if not any(o < c for o in clauses)]
    if len(minimal_set) < len(s.clauses):
        notes.append("ABSORBED_CLAUSE")
    sorted_clauses = sorted(
        (tuple(sorted(c, key=lambda a: _atom_key(a, cb, order))) for c in minimal_set),
        key=lambda c: [_atom_key(a, cb, order) for a in c],
    )
    outputs = [normalize_output(p, cb) for p in s.outputs]
    if len(set(outputs)) < len(outputs):
        notes.append("DUPLICATE_OUTPUT")
    if s.context == cb.default_context:
        notes.append("REDUNDANT_DEFAULT_CONTEXT")
    return Meaning(
        clauses=tuple(sorted_clauses),
        context=s.context or cb.default_context,
        outputs=tuple(sorted(set(outputs))),
        notes=tuple(dict.fromkeys(notes)),
    )


_ATOM_TEXT: dict[tuple[int, Atom], str] = {}


def atom_text(a: Atom, cb: Codebook) -> str:
    """``C3?`` for ("C", 3, "check"); memoized, atoms are few and printed often."""
    key = (id(cb), a)
    text = _ATOM_TEXT.get(key)
    if text is None:
        radical, number, action = a
        text = _ATOM_TEXT[key] = f"{radical}{'' if number is None else number}{cb.action_symbol(action)}"
    return text


def _print_output(path: str, cb: Codebook, short: bool) -> str:
    """``>`` and ``path`` (normalized), without its trailing '/' (and with ``short``, without the
    default root) only where reading it back gives ``path`` again: ``0/`` stays ``0/``, since
    ``0`` reads as the run ``_runs/0/``."""
    body = path.rstrip("/")
    if normalize_output(body, cb) != path:
        body = path
    root = cb.default_durable_root
    if short and body.startswith(root) and "/" not in body[len(root) :] and body[len(root) :]:
        name = body[len(root) :]
        if normalize_output(name, cb) == path:
            body = name
    return cb.symbols["output"] + body


def canonical(m: Meaning, cb: Codebook | None = None) -> str:
    """The canonical (explicit, not minimal) form: every atom listed, context and paths explicit."""
    cb = cb or load_codebook()
    body = cb.symbols["or"].join(
        cb.symbols["and"].join(atom_text(a, cb) for a in clause) for clause in m.clauses
    )
    outs = "".join(_print_output(p, cb, short=False) for p in m.outputs)
    return f"{body}{cb.symbols['context']}{m.context}{outs}"


def _collapse(clause: tuple[Atom, ...], cb: Codebook) -> list[str]:
    """Print a clause, writing R*op for every complete numbered set that shares an action."""
    counts: dict[tuple[str, str], int] = {}
    for radical, number, action in clause:  # atoms in a clause are distinct
        if number is not None:
            counts[(radical, action)] = counts.get((radical, action), 0) + 1
    full = {key for key, n in counts.items() if n == len(cb.entries[key[0]])}
    out: list[str] = []
    for a in clause:
        radical, number, action = a
        if number is not None and (radical, action) in full:
            star = f"{radical}{cb.symbols['all']}{cb.action_symbol(action)}"
            if star not in out:
                out.append(star)
        else:
            out.append(atom_text(a, cb))
    return out


def collapsed_clauses(s: Surface, cb: Codebook | None = None) -> str | None:
    """The clauses of ``s`` in their written order, each complete numbered set that shares an
    action written as one ``R*op`` term where its first member stood, repeated atoms dropped
    (``A&C1&C2&…&C13&V?`` -> ``A&C*&V?``). None when a term is an alias or a path
    (``@NAME``, ``L.X``): those are left as written elsewhere."""
    cb = cb or load_codebook()
    clauses = []
    for conj in s.clauses:
        if any(t.alias is not None or t.via_path is not None for t in conj):
            return None
        atoms = [a for t in conj for dnf in _atoms(t, cb) for a in dnf]
        clauses.append(cb.symbols["and"].join(_collapse(tuple(dict.fromkeys(atoms)), cb)))
    return cb.symbols["or"].join(clauses)


def minimal_suffix(m: Meaning, cb: Codebook | None = None) -> str:
    """What follows the clauses in the minimal form: the context unless it is the default, then
    the outputs with the default durable root left out."""
    cb = cb or load_codebook()
    ctx = "" if m.context == cb.default_context else f"{cb.symbols['context']}{m.context}"
    return ctx + "".join(_print_output(p, cb, short=True) for p in m.outputs)


def minimal(m: Meaning, cb: Codebook | None = None) -> str:
    """The shortest surface form we know: '*' for full sets, default context and root implied."""
    cb = cb or load_codebook()
    body = cb.symbols["or"].join(cb.symbols["and"].join(_collapse(c, cb)) for c in m.clauses)
    return body + minimal_suffix(m, cb)
