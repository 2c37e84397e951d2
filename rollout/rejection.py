"""Rejection sampling: generate -> validate -> retry (up to k) -> rule-based fallback.

Every intent gets an answer and says which path gave it: ``model`` (a sampled program
passed validation levels 1-5; with several valid candidates the shortest wins) or
``fallback`` (the rule-based compressor, after k failed rounds). Where no reference
exists, as when serving, only levels 1-5 can be checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from validator_actors.validator import Report, Validator


@dataclass(frozen=True)
class Answer:
    intent: str
    program: str
    source: str  # "model" or "fallback"
    attempts: int  # sampling rounds used (0 for none)
    report: Report

    @property
    def valid(self) -> bool:
        return self.report.valid


def rejection_sample(sampler, intents: list[str], *, fallback: Callable[[str], str],
                     validator: Validator | None = None, k: int = 3, group_size: int = 4,
                     count_tokens: Callable[[list[str]], list[int]] | None = None) -> list[Answer]:
    """Answer every intent. Round 1 is greedy (one candidate); rounds 2..k sample ``group_size``.

    ``sampler.sample(intents, group_size, greedy=...)`` must return an object with ``texts``
    ordered prompt-major (row = prompt * group_size + g), as :class:`rollout.sampler.Sampler`.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    validator = validator or Validator()
    count = count_tokens or (lambda texts: [len(t) for t in texts])
    answers: dict[int, Answer] = {}
    pending = list(range(len(intents)))
    for attempt in range(1, k + 1):
        if not pending:
            break
        greedy = attempt == 1
        g = 1 if greedy else group_size
        texts = sampler.sample([intents[i] for i in pending], g, greedy=greedy).texts
        still = []
        for j, i in enumerate(pending):
            candidates = texts[j * g : (j + 1) * g]
            valid = [(c, r) for c in candidates if (r := validator.validate(c)).valid]
            if valid:
                lengths = count([c for c, _ in valid])
                best = min(range(len(valid)), key=lambda n: (lengths[n], valid[n][0]))
                answers[i] = Answer(intents[i], valid[best][0], "model", attempt, valid[best][1])
            else:
                still.append(i)
        pending = still
    for i in pending:
        program = fallback(intents[i])
        answers[i] = Answer(intents[i], program, "fallback", k, validator.validate(program))
    return [answers[i] for i in range(len(intents))]
