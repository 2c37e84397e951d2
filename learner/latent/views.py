"""Examples and the context views: what each arm hands the reasoner within a budget of K.

An :class:`Example` holds one history's token ids. The baseline views cut the context to at
most K tokens (``first``, ``last``, ``bm25``) or K vectors (``mean``: contiguous chunks of the
reasoner's own token embeddings, averaged); ``full`` is the whole context where it fits the
reasoner's window. BM25 (Robertson and Zaragoza, 2009; ``rank_bm25.BM25Okapi``) ranks the turns
of the history against the question's own words (the words every question shares are dropped,
so the query is the asked job's name), keeps the best turns up to K tokens (the last one cut)
and puts them back in their order in the history.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from learner.latent.data import QUESTION, bindings, bucket_of, encode_turns

TOKEN_VIEWS = ("full", "first", "last", "bm25")
VECTOR_VIEWS = ("mean",)
VIEWS = TOKEN_VIEWS + VECTOR_VIEWS
WORD = re.compile(r"[a-z0-9]+")
TEMPLATE_WORDS = frozenset(WORD.findall(QUESTION.lower()))
"""Words every question has ("which check does job ... run"): dropped from the BM25 query."""


@dataclass(frozen=True)
class Example:
    """One history as token ids. ``turns``: ids per turn; ``question``/``answer`` without
    special tokens (the answer's tokens are the ones it has inside its turn, see
    :func:`learner.latent.data.quoted`); ``relevant_turn``: the turn holding the answer."""

    id: str
    family: str
    turns: tuple[tuple[int, ...], ...]
    turn_texts: tuple[str, ...]
    question: tuple[int, ...]
    question_text: str
    answer: tuple[int, ...]
    answer_text: str
    relevant_turn: int
    extra: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    """(question, answer) ids about the history's other jobs, for training only."""

    @property
    def context(self) -> list[int]:
        return [t for turn in self.turns for t in turn]

    @property
    def n_context(self) -> int:
        return sum(len(t) for t in self.turns)

    @property
    def bucket(self) -> int:
        return bucket_of(self.n_context)


def examples(tok, rows: list[dict]) -> list[Example]:
    def ids(text: str) -> tuple[int, ...]:
        return tuple(tok.encode(text, add_special_tokens=False))

    out = []
    for r in rows:
        others = sorted((job, program) for job, program in bindings(r["turns"]).items() if job != r["job"])
        random.Random(r["id"]).shuffle(others)
        out.append(Example(r["id"], r["family"], tuple(map(tuple, encode_turns(tok, r["turns"]))), tuple(r["turns"]),
                           ids(r["question"]), r["question"], ids(r["answer"]), r["answer"], r["relevant_turn"],
                           tuple((ids(QUESTION.format(n=job)), ids(program)) for job, program in others)))
    return out


def context_batch(batch: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded context ids (B, T), mask, turn index (-1 on padding) and turn recency
    (turns before the last one) per token, for the encoder; the question's ids (B, Q) and
    mask, for the pointer."""
    width = max(e.n_context for e in batch)
    q_width = max(len(e.question) for e in batch)
    question, q_mask = torch.zeros(len(batch), q_width, dtype=torch.long), torch.zeros(len(batch), q_width, dtype=torch.long)
    for i, e in enumerate(batch):
        question[i, :len(e.question)] = torch.tensor(e.question)
        q_mask[i, :len(e.question)] = 1
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask, turn, recency = torch.zeros_like(ids), torch.full_like(ids, -1), torch.zeros_like(ids)
    for i, e in enumerate(batch):
        at = 0
        for j, t in enumerate(e.turns):
            ids[i, at:at + len(t)] = torch.tensor(t)
            turn[i, at:at + len(t)] = j
            recency[i, at:at + len(t)] = len(e.turns) - 1 - j
            at += len(t)
        mask[i, :at] = 1
    return {"ids": ids, "mask": mask, "turn": turn, "recency": recency, "question": question, "question_mask": q_mask}


def bm25_view(e: Example, k: int) -> list[int]:
    """The history's turns ranked by BM25 against the question, best first, until ``k`` tokens
    (the last one cut), returned in history order."""
    from rank_bm25 import BM25Okapi

    words = [WORD.findall(t.lower()) or ["_"] for t in e.turn_texts]
    query = [w for w in WORD.findall(e.question_text.lower()) if w not in TEMPLATE_WORDS]
    scores = BM25Okapi(words).get_scores(query)
    order = sorted(range(len(e.turns)), key=lambda j: (-scores[j], -j))  # ties: the later turn
    kept, left = {}, k
    for j in order:
        if left <= 0:
            break
        kept[j] = e.turns[j][:left]
        left -= len(kept[j])
    return [t for j in sorted(kept) for t in kept[j]]


def token_view(e: Example, view: str, k: int, window: int) -> list[int] | None:
    """Context ids ``view`` keeps within ``k`` tokens; ``full``: the context when it fits
    ``window`` (None otherwise)."""
    ctx = e.context
    if view == "full":
        return ctx if len(ctx) <= window else None
    if view == "first":
        return ctx[:k]
    if view == "last":
        return ctx[-k:]
    if view == "bm25":
        return bm25_view(e, k)
    raise ValueError(f"{view!r} is not a token view; choose from {TOKEN_VIEWS}")


def text_ids(e: Example, sep: int, eos: int, prefix: list[int] = (), answer: bool = True,
             queries: int = 0) -> tuple[list[int], list[bool]]:
    """The reasoner's text and which of its tokens are targets: ``prefix + question + <sep>``,
    then with ``answer`` the ``answer + <eos>`` and ``queries`` more questions about other jobs
    with their answers (denser supervision for training; evaluation asks one question)."""
    ids, target = [*prefix], [False] * len(prefix)
    for question, reply in ((e.question, e.answer), *e.extra[:queries])[:1 + queries if answer else 1]:
        ids += [*question, sep]
        target += [False] * (len(question) + 1)
        if answer:
            ids += [*reply, eos]
            target += [True] * (len(reply) + 1)
    return ids, target
