"""One answer from a model's candidates: the shortest valid program, else the rule-based one.

The project's one selection rule, used by serving (``serve.compressor``) and by anything that
answers intents with a policy: validate every candidate (levels 1-5; no reference meaning
exists for a new intent), optionally add each valid candidate's shortest equivalent spelling
(:func:`rollout.rewrite.shortest_rewrite`, kept only when the validator gives it the same
meaning hash), keep the shortest in IR tokens with ties broken by text; when no candidate is
valid the fallback (the rule-based compressor) answers. ``source`` says which path gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from validator_actors.validator import Report, Validator

Counter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Choice:
    program: str
    report: Report
    tokens: int  # IR tokens of ``program``
    source: str  # "model" or "fallback"
    reports: list[Report]  # the validator's report of each candidate, in order
    valid_candidates: int  # candidates that passed (their shorter spellings not counted)

    @property
    def agreement(self) -> float:
        """Share of the candidates whose meaning hash is the answer's (0 for an invalid answer)."""
        if not self.report.valid or not self.reports:
            return 0.0
        return sum(r.valid and r.hash == self.report.hash for r in self.reports) / len(self.reports)


def choose(candidates: Sequence[str], intent: str, *, validator: Validator, count: Counter,
           fallback: Callable[[str], str], shorter_forms: bool = False) -> Choice:
    """The answer for ``intent`` among ``candidates`` (see the module docstring)."""
    reports = [validator.validate(c) for c in candidates]
    valid = [(c, r) for c, r in zip(candidates, reports) if r.valid]
    n_valid = len(valid)
    if shorter_forms:
        valid += _shorter_forms(valid, validator, count)
    if not valid:
        program = fallback(intent)
        return Choice(program, validator.validate(program), count([program])[0], "fallback", reports, 0)
    lengths = count([c for c, _ in valid])
    best = min(range(len(valid)), key=lambda n: (lengths[n], valid[n][0]))
    return Choice(valid[best][0], valid[best][1], lengths[best], "model", reports, n_valid)


def _shorter_forms(valid: list[tuple[str, Report]], validator: Validator, count: Counter) -> list[tuple[str, Report]]:
    """Equivalent shorter spellings of the valid candidates, validated to the same hash."""
    from rollout.rewrite import shortest_rewrite

    seen, out = {c for c, _ in valid}, []
    for program, report in valid:
        form = shortest_rewrite(program, count)
        if form is not None and form not in seen:
            seen.add(form)
            checked = validator.validate(form)
            if checked.valid and checked.hash == report.hash:
                out.append((form, checked))
    return out
