"""Greedy answers and their scores: exact match and token F1, per family and length bucket.

Token F1 is SQuAD's (Rajpurkar et al., 2016) over the program's parts (``C8``, ``!``,
``:build``), so an answer with the right rule in the wrong context earns part of the credit.
The compression ratio of a row is its context tokens over the budget K (1 for ``full``).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch

from learner.latent.data import FAMILIES, LENGTH_BUCKETS, bucket_name
from learner.latent.views import Example
from learner.policy import special_ids
from learner.sft import collate

PART = re.compile(r"[A-Z]\d+|[?!*&|]|:[a-z]+")


def parts(program: str) -> list[str]:
    """The scored parts of a program: ``"C8!:build"`` -> ``["C8", "!", ":build"]``."""
    return PART.findall(program)


def token_f1(prediction: str, answer: str) -> float:
    pred, gold = parts(prediction), parts(answer)
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def predict(model, rows: list[Example], view: str, k: int, window: int, tok, max_new_tokens: int,
            batch_size: int = 64) -> tuple[list[str], list[bool] | None]:
    """Greedy answers of ``model`` reading ``view`` at budget ``k``; with a latent view also
    whether the pointer picked the relevant turn."""
    from learner.latent.model import read
    from learner.latent.train import reader_inputs

    model.eval()
    special = special_ids(tok)
    order = sorted(range(len(rows)), key=lambda i: rows[i].n_context)  # less padding
    answers, hits = [""] * len(rows), [False] * len(rows) if view == "latent" else None
    for i in range(0, len(rows), batch_size):
        idx = order[i:i + batch_size]
        batch = [rows[j] for j in idx]
        prefix, texts, scores = reader_inputs(model, batch, view, k, window, special, answer=False)
        seqs = [list(ids) for ids, _ in texts]
        starts = [len(s) for s in seqs]
        done = [False] * len(batch)
        for _ in range(max_new_tokens):
            text = collate([(s, len(s)) for s in seqs], special["pad"])
            logits = read(model.reasoner, prefix, text)  # (B, P + S, V)
            at = torch.tensor([len(s) - 1 for s in seqs]) + (0 if prefix is None else prefix.shape[1])
            nxt = logits[torch.arange(len(batch)), at].argmax(-1).tolist()
            for j, t in enumerate(nxt):
                done[j] = done[j] or t == special["eos"]
                if not done[j]:
                    seqs[j].append(t)
            if all(done):
                break
        for j, s, n in zip(idx, seqs, starts):
            answers[j] = tok.decode(s[n:], skip_special_tokens=True).strip()
        if hits is not None:
            for j, hit in zip(idx, (scores.argmax(-1) == torch.tensor([e.relevant_turn for e in batch])).tolist()):
                hits[j] = hit
    return answers, hits


def _group(rows: list[Example], answers: list[str], k: int | None) -> dict:
    em = [float(a == e.answer_text) for e, a in zip(rows, answers)]
    f1 = [token_f1(a, e.answer_text) for e, a in zip(rows, answers)]
    ratio = [e.n_context / k if k else 1.0 for e in rows]
    n = len(rows)
    return {"n": n, "em": sum(em) / n if n else math.nan, "f1": sum(f1) / n if n else math.nan,
            "ratio": sum(ratio) / n if n else math.nan}


def score(rows: list[Example], answers: list[str], k: int | None, hits: list[bool] | None = None) -> dict:
    """Overall, per family and per length bucket: n, em, f1, mean compression ratio (``k`` None:
    the full context, ratio 1); ``pointer_acc`` where the pointer was scored."""
    out = _group(rows, answers, k)
    out["by_family"] = {f: _group([e for e in rows if e.family == f], [a for e, a in zip(rows, answers)
                                                                        if e.family == f], k) for f in FAMILIES}
    out["by_bucket"] = {bucket_name(b): _group([e for e in rows if e.bucket == b],
                                               [a for e, a in zip(rows, answers) if e.bucket == b], k)
                        for b in range(len(LENGTH_BUCKETS))}
    if hits is not None:
        out["pointer_acc"] = sum(hits) / len(hits)
    return out


def evaluate(model, rows: list[Example], view: str, k: int, window: int, tok, max_new_tokens: int) -> dict:
    """Score ``model`` on ``rows`` through ``view`` (``full``: only the rows that fit ``window``)."""
    if view == "full":
        rows = [e for e in rows if e.n_context <= window]
    answers, hits = predict(model, rows, view, k, window, tok, max_new_tokens)
    result = score(rows, answers, None if view == "full" else k, hits)
    result["examples"] = [{"id": e.id, "answer": e.answer_text, "prediction": a} for e, a in zip(rows[:5], answers)]
    return result
