"""IR rewrites as exploration guidance for GRPO: the validator knows shortcuts the policy never samples.

The warm-started policy is so peaked (entropy about 0.002 nats per token) that sampling at
T = 1 almost never drops a default phase, the ``_runs/`` prefix or lists every invariant
instead of ``I*``, so plain GRPO sees no shorter valid program to reinforce. After scoring,
:func:`minimal_rewrites` replaces up to ``k`` valid members of a group (never its best one,
never a failing one) with the shortest rewrite of the group's best valid sample
(:func:`shortest_rewrite`: the sample in its own term order without the default context and
output root, or ``ir.minimal``), when that is shorter. The learner treats those rows as
off-policy (importance ratio 1): a policy-gradient push towards a program the validator has
already proven equivalent, weighted by its group advantage like any sample.
``train.rewrite_form`` picks which of the equally short forms is taught (:func:`shortest_rewrite`);
:func:`early_end_negatives` builds the endings the validator proves wrong, for the learner's
unlikelihood term.

Failing samples are never replaced: their negative advantage is the only signal that keeps the
policy from shortening a program by cutting off what it must say (an early end-of-sequence
that drops the outputs). Replacing them, as the first version did, hid every failure from
the learner and from the logged train pass rate while the val pass rate fell.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from rollout.rewrite_forms import IMITATION_SPANS, REWRITE_FORMS  # noqa: F401 (re-exported)
from rollout.batch import RolloutBatch
from rollout.sampler import encode_completions
from validator_actors.codebook import Codebook, load_codebook
from validator_actors.ir import (IRSyntaxError, Meaning, collapsed_clauses, meaning, minimal, minimal_suffix,
                                 parse)
from validator_actors.validator import Score


def _meaning(program: str, cb: Codebook) -> Meaning | None:
    try:
        return meaning(parse(program, cb), cb)
    except (IRSyntaxError, ValueError, KeyError):
        return None


def _shortcut(program: str, m: Meaning, cb: Codebook) -> str:
    return _head(program, cb) + minimal_suffix(m, cb)


def _context_dropped(program: str, m: Meaning, cb: Codebook) -> str:
    """``program`` with only a default context left out: every other token as sampled."""
    if m.context != cb.default_context:
        return program
    ctx, out = re.escape(cb.symbols["context"]), re.escape(cb.symbols["output"])
    return re.sub(f"{ctx}[^{out}]*", "", program, count=1)


def _clauses_collapsed(program: str, cb: Codebook) -> str | None:
    """``program`` with every complete numbered set in a clause written as one ``R*`` term where
    its first member stood (``A&C1&C2&…&C13&V?:execute`` -> ``A&C*&V?:execute``), duplicate
    terms dropped, every other term in the sampled order, and the context and outputs exactly as
    sampled. None if it does not parse or uses a form this does not rewrite (aliases, paths)."""
    try:
        body = collapsed_clauses(parse(program, cb), cb)
    except (IRSyntaxError, ValueError, KeyError):
        return None
    return None if body is None else body + _split(program, cb)[1]




def _split(program: str, cb: Codebook) -> tuple[str, str]:
    """(clauses, ending): ``program`` cut where its context or outputs start (ending "" if none)."""
    cut = re.search(f"[{re.escape(cb.symbols['context'])}{re.escape(cb.symbols['output'])}]", program)
    return (program, "") if cut is None else (program[: cut.start()], program[cut.start() :])


def _head(program: str, cb: Codebook) -> str:
    """The clauses of ``program``: everything before its context or outputs."""
    return _split(program, cb)[0].strip()


def _best_valid(group: Sequence[Score]) -> Score | None:
    """The group's highest-reward valid sample (the first on a tie), None if none is valid."""
    valid = [s for s in group if s.valid]
    return max(valid, key=lambda s: (s.reward, -s.index)) if valid else None


def _best_programs(rollout: RolloutBatch, scores: Sequence[Score], cb: Codebook):
    """(group, text, meaning) of each group's best valid sample that parses."""
    g = rollout.group_size
    for start in range(0, len(scores), g):
        best = _best_valid(scores[start : start + g])
        if best is not None and (m := _meaning(rollout.texts[best.index], cb)) is not None:
            yield start // g, rollout.texts[best.index], m


def _negatives(rollout: RolloutBatch, picks: list[tuple[int, str]], ids: torch.Tensor,
               mask: torch.Tensor) -> RolloutBatch:
    """Rows ``ids`` (one per ``(group, text)`` pick) as an off-policy batch of group size 1."""
    return RolloutBatch([rollout.prompts[b] for b, _ in picks], [rollout.prompt_ids[b] for b, _ in picks],
                        ids, torch.zeros(ids.shape), mask, mask.sum(1), [text for _, text in picks], 1,
                        rollout.policy_version, torch.ones(len(picks), dtype=torch.bool))


def minimal_form(program: str) -> str | None:
    """The shortest printing of ``program``'s meaning, or None if it does not parse."""
    cb = load_codebook()
    m = _meaning(program, cb)
    return None if m is None else minimal(m, cb)


def shortcut_form(program: str) -> str | None:
    """``program`` in its own term order with the default context and output root left out.

    The smallest edit of the policy's own sample (``I9&I15:execute>_runs/x`` -> ``I9&I15>x``);
    None if it does not parse.
    """
    cb = load_codebook()
    m = _meaning(program, cb)
    return None if m is None else _shortcut(program, m, cb)


def shortest_rewrite(program: str, count_tokens: Callable[[Sequence[str]], list[int]],
                     form: str = "shortcut") -> str | None:
    """The shortest equivalent of ``program`` in IR tokens, if one parses to what it means.

    Candidates, in their order of preference on a tie: for ``form="edit"`` first ``program``
    with only a default context dropped (``C2?&V:execute>_runs/x_14`` -> ``C2?&V>_runs/x_14``:
    the one token the policy must learn to skip, every other token as it sampled them), then
    :func:`shortcut_form` (also the default output root left out), then :func:`minimal_form`;
    ``form="shortcut"`` starts at the shortcut. ``form="clauses"`` has one candidate: the
    clauses in the sampled order with complete sets collapsed (``C*``, ``I*``) and duplicates
    dropped, context and outputs as sampled (never a new ending, never a new order).
    """
    if form not in REWRITE_FORMS:
        raise ValueError(f"rewrite form must be one of {REWRITE_FORMS}, got {form!r}")
    cb = load_codebook()
    m = _meaning(program, cb)
    if m is None:
        return None
    candidates = (_shortcut(program, m, cb), minimal(m, cb))
    if form == "clauses":
        candidates = tuple(f for f in (_clauses_collapsed(program, cb),) if f is not None)
    elif form == "edit":
        candidates = (_context_dropped(program, m, cb), *candidates)
    forms = [f for f in dict.fromkeys(candidates) if _meaning(f, cb) == m]
    counts = count_tokens(forms)
    return forms[min(range(len(forms)), key=lambda i: (counts[i], i))] if forms else None


def minimal_rewrites(rollout: RolloutBatch, scores: Sequence[Score], tokenizer, k: int,
                     count_tokens: Callable[[Sequence[str]], list[int]],
                     form: str = "shortcut") -> tuple[RolloutBatch, list[int]]:
    """A copy of ``rollout`` with up to ``k`` rows per group replaced by a shorter rewrite.

    Returns (batch, replaced row indices). A group is left alone when it has fewer than two valid
    samples, when the minimal form is not shorter (in IR tokens) than its best sample, or when the
    rewrite is already among its samples. The replaced rows are the lowest-reward valid samples
    other than the best one (for a peaked policy: copies of the best sample); failing samples
    keep their place and their negative advantage.
    """
    g = rollout.group_size
    if k <= 0:
        return rollout, []
    if k >= g:
        raise ValueError(f"k ({k}) must be smaller than the group size ({g})")
    plans: dict[int, str] = {}
    for start in range(0, len(scores), g):
        group = list(scores[start : start + g])
        others = [s for s in group if s.valid]
        if len(others) < 2:  # nothing but the best sample could be replaced: skip the rewrite's parsing
            continue
        best = _best_valid(group)
        others.remove(best)
        rewrite = shortest_rewrite(rollout.texts[best.index], count_tokens, form)
        if rewrite is None or rewrite in rollout.texts[start : start + g]:
            continue
        if count_tokens([rewrite])[0] >= best.tokens:
            continue
        for s in sorted(others, key=lambda s: (s.reward, s.index))[:k]:
            plans[s.index] = rewrite
    if not plans:
        return rollout, []
    rows = sorted(plans)
    rewrites = sorted(set(plans.values()))
    new_ids, new_mask = encode_completions(tokenizer, rewrites)
    which = {text: j for j, text in enumerate(rewrites)}
    pad = max(0, new_ids.shape[1] - rollout.completion_ids.shape[1])
    ids = torch.nn.functional.pad(rollout.completion_ids, (0, pad), value=tokenizer.pad_token_id)
    logprobs = torch.nn.functional.pad(rollout.logprobs, (0, pad), value=0.0)
    mask = torch.nn.functional.pad(rollout.mask, (0, pad), value=False)
    lengths, texts = rollout.lengths.clone(), list(rollout.texts)
    offpolicy = (rollout.offpolicy.clone() if rollout.offpolicy is not None
                 else torch.zeros(len(texts), dtype=torch.bool))
    for row in rows:
        j = which[plans[row]]
        n = int(new_mask[j].sum())
        ids[row] = tokenizer.pad_token_id
        ids[row, :n] = new_ids[j, :n]
        mask[row] = False
        mask[row, :n] = True
        logprobs[row] = 0.0
        lengths[row], texts[row], offpolicy[row] = n, plans[row], True
    out = RolloutBatch(rollout.prompts, rollout.prompt_ids, ids, logprobs, mask, lengths, texts,
                       rollout.group_size, rollout.policy_version, offpolicy)
    return out, rows


def early_end_negatives(rollout: RolloutBatch, scores: Sequence[Score], tokenizer) -> RolloutBatch | None:
    """Endings the validator proves wrong: per group, the clauses of its best valid sample
    followed by ``<eos>``, when what it leaves out means something (outputs, a context that is
    not the default). ``C2?&V:execute>_runs/x_14`` gives ``C2?&V<eos>``; ``V&C9:execute`` gives
    nothing, since ``V&C9`` means the same (it is that group's rewrite).

    The shortcut the rewrites teach is "end after the clauses" where the context is the default
    and nothing is written. A policy generalizes it to intents that do write outputs, whose
    output token it must otherwise learn name by name. These rows are the counter-examples,
    one per group (``group_size`` 1, off-policy), for the learner's unlikelihood term on the
    last token (``GRPOConfig.unlikelihood``). None when no group has one.
    """
    cb = load_codebook()
    picks = [(b, head) for b, text, m in _best_programs(rollout, scores, cb)
             if (head := _head(text, cb)) and _meaning(head, cb) != m]
    if not picks:
        return None
    return _negatives(rollout, picks, *encode_completions(tokenizer, [head for _, head in picks]))




def rewrite_imitation(rollout: RolloutBatch, sampled: Sequence[Score], span: str = "all") -> torch.Tensor | None:
    """(N, T) bool: the tokens ``grpo.rewrite_nll`` imitates, None if no group got rewrites.

    In each group with rewrites (``rollout.offpolicy``), the rewrite parts from the sample it
    was rewritten from (the group's best valid sample) at one token: ``C1!&C2!&…&C13!&S?:audit``
    rewritten to ``C*!&S?:audit`` parts at the first. ``span="to_part"``: the rewrite rows'
    tokens up to and including that token (``C*!``), so only the choice that makes the program
    shorter is taught and what follows stays the policy's own. ``span="all"``: every token of
    the rewrite rows, plus the **anchor**, the source sample's tokens after the part
    (``&C2!&…&C13!&S?:audit<eos>``): imitating the rewrite's ending alone teaches "end the
    clause after fewer terms", and the anchor keeps a set the policy has started to write out
    whole (attempts 23-25: it did not stop the policy from dropping last terms).
    """
    if span not in IMITATION_SPANS:
        raise ValueError(f"imitation span must be one of {IMITATION_SPANS}, got {span!r}")
    if rollout.offpolicy is None or not bool(rollout.offpolicy.any()):
        return None
    g = rollout.group_size
    imitate = torch.zeros_like(rollout.mask)
    for start in range(0, len(sampled), g):
        rows = [r for r in range(start, start + g) if rollout.offpolicy[r]]
        best = _best_valid(sampled[start : start + g])
        if not rows or best is None:
            continue
        src, new = rollout.completion_ids[best.index], rollout.completion_ids[rows[0]]
        n = int(rollout.mask[best.index].sum())
        differ = (src[:n] != new[:n]).nonzero()
        part = int(differ[0]) if len(differ) else n
        if span == "all":
            imitate[rows] = rollout.mask[rows]
            imitate[best.index, part + 1 : n] = True
        else:
            imitate[rows, : part + 1] = rollout.mask[rows, : part + 1]
    return imitate


def best_sample_imitation(rollout: RolloutBatch, sampled: Sequence[Score]) -> torch.Tensor | None:
    """(N, T) bool: the tokens of each group's best valid sample where the same group also has a
    failing sample; None if no group is mixed. ``C*?&L?&A?:build`` failing beside
    ``C*?&L?&I17?:build`` marks the latter whole: what follows the set token is taught
    where the policy is unsure of it, not only where a rewrite was found."""
    g = rollout.group_size
    imitate = torch.zeros_like(rollout.mask)
    for start in range(0, len(sampled), g):
        group = sampled[start : start + g]
        best = _best_valid(group)
        if best is not None and not all(s.valid for s in group):
            imitate[best.index] = rollout.mask[best.index]
    return imitate if bool(imitate.any()) else None


def _lone_member_as_set(terms: list[str], ending: str, m: Meaning, cb: Codebook) -> str | None:
    """The clauses up to the first lone set member (the first numbered 1, else the first of all)
    written as its full set instead (``A?&C1`` -> ``A?&C*``), when that changes the meaning."""
    members = [(i, hit) for i in range(0, len(terms), 2)
               if (hit := re.fullmatch(r"([A-Z])(\d+)([^\w&|]?)", terms[i])) and hit.group(1) in cb.entries]
    if not members:
        return None
    i, hit = next(((i, h) for i, h in members if h.group(2) == "1"), members[0])
    star = f"{hit.group(1)}*{hit.group(3)}"
    changed = "".join(terms[:i]) + star + "".join(terms[i + 1 :]) + ending
    return "".join(terms[:i]) + star if _meaning(changed, cb) != m else None


def _last_term_dropped(terms: list[str], ending: str, m: Meaning, cb: Codebook) -> str | None:
    """The clauses without their last term, then the context token (``C1&L!&A?:build`` ->
    ``C1&L!:build``), when the program names a context and that changes the meaning."""
    ctx = re.match(f"{re.escape(cb.symbols['context'])}[^{re.escape(cb.symbols['output'])}]+", ending)
    if ctx is None or len(terms) < 3:
        return None
    shorter = "".join(terms[:-2])
    return shorter + ctx.group(0) if _meaning(shorter + ending, cb) != m else None


def wrong_step_negatives(rollout: RolloutBatch, scores: Sequence[Score], tokenizer) -> RolloutBatch | None:
    """Steps the validator proves wrong, one row each ending in the wrong token, from each
    group's best valid sample: a lone set member written as its full set (``A?&C1:validate``
    gives ``A?&C*``) and the clauses' last term left out (``C1&L!&A?:build`` gives
    ``C1&L!:build``). For the learner's unlikelihood term on the last token, like
    :func:`early_end_negatives` (``train.wrong_steps``).

    These are the two ways programs failed once the policy had started to learn the full-set
    tokens in place (attempts 24-25): ``C*`` where the intent means ``C1`` alone, and a clause
    ended one term early. Both rows end in a token the policy now gives real probability to,
    where the unlikelihood gradient (p itself) is no longer nil. None when no group has one.
    """
    cb = load_codebook()
    picks: list[tuple[int, str]] = []
    for b, text, m in _best_programs(rollout, scores, cb):
        head, ending = _split(text, cb)
        terms = re.split(r"([&|])", head)
        for wrong in (_lone_member_as_set(terms, ending, m, cb), _last_term_dropped(terms, ending, m, cb)):
            if wrong is not None:
                picks.append((b, wrong))
    if not picks:
        return None
    return _negatives(rollout, picks, *encode_completions(tokenizer, [text for _, text in picks], eos=False))
