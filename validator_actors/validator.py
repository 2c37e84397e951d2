"""The validator: six levels of checks, a JSON report, and the GRPO reward.

Levels (DESIGN.md §2), each failure a stable machine-readable code (see ``ERROR_CODES``):
1 syntax, 2 symbols, 3 semantics (warnings only), 4 expansion (JSON Schema),
5 CMP-01 path rules, 6 SPECTRUM fidelity (hash equals the reference's, when one is given).
Checking stops at the first level that fails. The validator never raises: an unexpected
exception becomes an ``INTERNAL_ERROR`` report, which is a failure like any other.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from validator_actors import ir
from validator_actors.codebook import Codebook, load_codebook
from validator_actors.jobspec import expand, jobspec_hash, path_issues, schema_checker

# code -> (level, what it means). Level 0: raised by the validator pool, not by a program.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "EMPTY_PROGRAM": (1, "the program is empty or whitespace"),
    "PROGRAM_TOO_LONG": (1, "the program is longer than the codebook's max_program_chars"),
    "SYNTAX_ERROR": (1, "the text does not follow the IR grammar"),
    "UNKNOWN_RADICAL": (2, "a term's letter is not a radical"),
    "UNKNOWN_OPERATOR": (2, "an operator character is not in the codebook"),
    "UNKNOWN_CONTEXT": (2, "the context is not in the codebook"),
    "UNKNOWN_NUMBER": (2, "a rule or invariant number does not exist"),
    "NUMBER_NOT_ALLOWED": (2, "a number or '*' on a radical without numbered entries"),
    "UNKNOWN_ALIAS": (2, "an @alias is not in the codebook"),
    "INVALID_PATH_ACCESS": (2, "a '.' path other than L.C or L.I"),
    "SCHEMA_VIOLATION": (4, "the expanded JobSpec fails the JSON Schema"),
    "PATH_ESCAPES_REPO_ROOT": (5, "a path is absolute"),
    "PATH_CONTAINS_TRAVERSAL": (5, "a path contains '..'"),
    "FORBIDDEN_PATH_OVERLAP": (5, "an output overlaps a forbidden root such as the canon"),
    "OUTPUT_OUTSIDE_DURABLE_ROOT": (5, "an output is not inside a durable root"),
    "PATH_OVERLAP": (5, "two outputs overlap"),
    "HASH_MISMATCH": (6, "the expansion's hash differs from the reference's"),
    "INTERNAL_ERROR": (0, "the validator itself failed on this input"),
    "INVALID_REFERENCE": (0, "the reference given is neither a valid program nor a sha256 hash"),
    "VALIDATOR_TIMEOUT": (0, "scoring did not finish in time, even after a retry"),
    "VALIDATOR_CRASH": (0, "the validator actor died, even after a retry"),
}
WARNING_CODES: dict[str, str] = {
    "REDUNDANT_DEFAULT_CONTEXT": "the default context is written out",
    "DUPLICATE_TERM": "a term repeats inside one AND clause",
    "CONTRADICTORY_TERMS": "one clause both denies and checks or enforces the same entry",
    "LEGACY_ALIAS": "a legacy @alias is used; its macro is shorter",
    "ABSORBED_CLAUSE": "an OR clause is implied by another and drops out",
    "DUPLICATE_OUTPUT": "the same output is named twice",
}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
LEXICAL_TOKEN = re.compile(r"@\w+|[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")


@dataclass(frozen=True)
class Issue:
    code: str
    message: str
    level: int

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "level": self.level}


@dataclass(frozen=True)
class Report:
    """The validator's verdict on one program. ``expansion`` is shared: do not mutate it."""

    valid: bool
    errors: tuple[Issue, ...]
    warnings: tuple[Issue, ...] = ()
    expansion: dict | None = None
    hash: str | None = None
    canonical: str | None = None
    minimal: str | None = None
    codebook_version: str = ""

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors]

    def to_dict(self) -> dict:
        return {
            "valid": self.valid,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
            "expansion": self.expansion,
            "hash": self.hash,
            "canonical": self.canonical,
            "minimal": self.minimal,
            "codebook_version": self.codebook_version,
        }


def _issue(code: str, message: str) -> Issue:
    return Issue(code, message, ERROR_CODES[code][0])


def _warning(code: str, message: str | None = None) -> Issue:
    return Issue(code, message or WARNING_CODES[code], 3)


def failure(code: str, message: str, version: str = "") -> Report:
    """An explicit failing report (used for pool timeouts and crashes too)."""
    return Report(valid=False, errors=(_issue(code, message),), codebook_version=version)


def _contradictions(m: ir.Meaning) -> list[Issue]:
    out = []
    for clause in m.clauses:
        actions: dict[tuple, set[str]] = {}
        for radical, number, action in clause:
            actions.setdefault((radical, number), set()).add(action)
        for (radical, number), acts in actions.items():
            if "deny" in acts and len(acts) > 1:
                name = f"{radical}{'' if number is None else number}"
                out.append(_warning("CONTRADICTORY_TERMS", f"{name} is both denied and required"))
    return out


class Validator:
    """Pure-Python validator with an LRU cache of levels 1-5 keyed by program text.

    >>> Validator().validate("C3?:build").valid
    True
    >>> Validator().validate("C14").codes
    ['UNKNOWN_NUMBER']
    """

    def __init__(self, codebook: Codebook | None = None, cache_size: int = 65536):
        self.cb = codebook or load_codebook()
        self.schema = schema_checker(self.cb)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Report] = OrderedDict()

    def _levels_1_to_5(self, program: str) -> Report:
        cb = self.cb
        fail = lambda issues: Report(False, tuple(_issue(c, msg) for c, msg in issues), codebook_version=cb.version)  # noqa: E731
        try:
            surface = ir.parse(program, cb)
        except ir.IRSyntaxError as e:
            return fail([(e.code, f"{e.message} at position {e.pos}")])
        symbol_issues = ir.check_symbols(surface, cb)
        if symbol_issues:
            return fail(symbol_issues)
        m = ir.meaning(surface, cb)
        warnings = tuple(_warning(code) for code in m.notes) + tuple(_contradictions(m))
        jobspec = expand(m, cb)
        schema_errors = self.schema.errors(jobspec)
        if schema_errors:
            return fail([("SCHEMA_VIOLATION", schema_errors[0])])
        cmp_issues = path_issues(jobspec, cb)
        if cmp_issues:
            return fail(cmp_issues)
        return Report(
            valid=True, errors=(), warnings=warnings, expansion=jobspec, hash=jobspec_hash(jobspec),
            canonical=ir.canonical(m, cb), minimal=ir.minimal(m, cb), codebook_version=cb.version,
        )

    def _cached(self, program: str) -> Report:
        if not isinstance(program, str) or len(program) > 512:
            return self._levels_1_to_5(program)
        hit = self._cache.get(program)
        if hit is not None:
            self._cache.move_to_end(program)
            return hit
        report = self._levels_1_to_5(program)
        self._cache[program] = report
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return report

    def reference_hash(self, reference: str) -> str:
        """A reference is a 64-hex hash or a program; a program must itself be valid."""
        if isinstance(reference, str) and HEX64.match(reference.lower()):
            return reference.lower()
        report = self._cached(reference)
        if not report.valid:
            # the reference is not echoed: it may be anything a client sent
            raise ValueError(f"the reference program is invalid ({', '.join(report.codes)})")
        return report.hash

    def validate(self, program: str, reference: str | None = None) -> Report:
        """Run every level on ``program``; with ``reference``, also the fidelity check."""
        try:
            report = self._cached(program)
            if report.valid and reference is not None:
                try:
                    expected = self.reference_hash(reference)
                except (ValueError, TypeError, AttributeError) as exc:
                    return failure("INVALID_REFERENCE", str(exc)[:300], self.cb.version)
                if report.hash != expected:
                    msg = f"expansion hash {report.hash[:12]}… differs from the reference {expected[:12]}…"
                    return Report(
                        valid=False, errors=(_issue("HASH_MISMATCH", msg),), warnings=report.warnings,
                        expansion=report.expansion, hash=report.hash, canonical=report.canonical,
                        minimal=report.minimal, codebook_version=report.codebook_version,
                    )
            return report
        except Exception as exc:  # the validator never raises: an explicit failure instead
            return failure("INTERNAL_ERROR", f"{type(exc).__name__}: {str(exc)[:200]}", self.cb.version)


def lexical_token_count(texts: Sequence[str]) -> list[int]:
    """Fallback token count (IR lexemes) for callers that have no trained tokenizer."""
    return [len(LEXICAL_TOKEN.findall(t)) if isinstance(t, str) else 0 for t in texts]


@dataclass(frozen=True)
class Score:
    """One scored sample: the reward and why. ``index`` is its position in the batch."""

    index: int
    reward: float
    valid: bool
    codes: tuple[str, ...]
    tokens: int
    hash: str | None = None
    warnings: tuple[str, ...] = field(default=())


def score(
    intents: Sequence[str],
    programs: Sequence[str],
    references: Sequence[str | None],
    *,
    validator: Validator | None = None,
    token_counter: Callable[[Sequence[str]], list[int]] | None = None,
    max_penalized_tokens: int = 256,
    offset: int = 0,
) -> list[Score]:
    """Score a batch: +1 PASS, -1 FAIL, -0.01 per IR token (at most ``max_penalized_tokens``)."""
    if not len(intents) == len(programs) == len(references):
        raise ValueError(
            f"intents, programs and references differ in length: "
            f"{len(intents)}, {len(programs)}, {len(references)}"
        )
    validator = validator or _default_validator()
    counts = (token_counter or lexical_token_count)(
        [p if isinstance(p, str) else "" for p in programs]
    )
    if len(counts) != len(programs):
        raise ValueError(f"token_counter returned {len(counts)} counts for {len(programs)} programs")
    out = []
    for i, (program, ref, n) in enumerate(zip(programs, references, counts)):
        report = validator.validate(program, ref)
        r = (1.0 if report.valid else -1.0) - 0.01 * min(n, max_penalized_tokens)
        out.append(
            Score(offset + i, r, report.valid, tuple(report.codes), n, report.hash,
                  tuple(w.code for w in report.warnings))
        )
    return out


def reward(
    intents: Sequence[str],
    programs: Sequence[str],
    references: Sequence[str | None],
    **kwargs,
) -> list[float]:
    """GRPO reward, one float per program. Deterministic.

    >>> reward(["check contract rule 3 while building"], ["C3?:build"], ["C3?:build"])
    [0.95]
    """
    return [s.reward for s in score(intents, programs, references, **kwargs)]


_DEFAULT: list[Validator] = []


def _default_validator() -> Validator:
    if not _DEFAULT:
        _DEFAULT.append(Validator())
    return _DEFAULT[0]
