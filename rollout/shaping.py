"""Shaping: a step's sampled completions and their scores in, the batch the learner trains on out.

Ray-free and model-free (a tokenizer encodes the rows it adds), so the whole stage is tested on
its own. In order, each part switched on by :class:`ShapingConfig`:

1. **rewrites** (``minimal_rewrites`` > 0): up to k rows per group replaced by a shorter
   equivalent of the group's best valid sample (``rollout.rewrite.minimal_rewrites``),
   re-scored here with the same validator and token counter as the pool;
2. **imitation masks** for the learner's ``rewrite_nll`` term: the rewrites' tokens
   (``imitate_rewrites``) and each mixed group's best sample (``imitate_best``);
3. **dynamic sampling** (DAPO, ``keep_groups`` < the groups drawn): only whole groups whose
   rewards differ, scores renumbered to their new rows;
4. **negatives** for the unlikelihood term: validator-proven wrong endings
   (``rollout.rewrite.early_end_negatives``, and ``wrong_step_negatives`` with ``wrong_steps``).

Pure GRPO (every switch off, ``keep_groups`` = the groups drawn) returns the sampled batch with
its rewards, untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rollout.batch import RolloutBatch, ScoredBatch, group_rows, merge_rollouts, select_groups
from rollout.rewrite import (best_sample_imitation, early_end_negatives, minimal_rewrites, rewrite_imitation,
                             wrong_step_negatives)
from rollout.rewrite_forms import IMITATION_SPANS, REWRITE_FORMS
from validator_actors.validator import Score, Validator, score


@dataclass(frozen=True)
class ShapingConfig:
    """What shaping does; ``learner.config.RunConfig.shaping()`` builds it from a run's config."""

    keep_groups: int
    """Groups the learner gets at most (``train.prompts_per_step``); fewer groups than drawn
    turns dynamic sampling on."""
    minimal_rewrites: int = 0
    """Rows per group replaced by a shorter rewrite (0 = none)."""
    rewrite_form: str = "shortcut"
    """Which rewrite (``rollout.rewrite.shortest_rewrite``'s ``form``)."""
    imitate_rewrites: bool = False
    """Mark the rewrites' tokens for imitation (``grpo.rewrite_nll`` > 0)."""
    rewrite_span: str = "all"
    """Which of a rewrite's tokens are imitated: ``all`` or ``to_part``."""
    imitate_best: bool = False
    """Also mark each mixed group's best valid sample for imitation."""
    negatives: bool = False
    """Build wrong endings for the unlikelihood term (``grpo.unlikelihood`` > 0)."""
    wrong_steps: bool = False
    """With ``negatives``: also the wrong next steps after a full set."""

    def __post_init__(self):
        if self.keep_groups < 1 or self.minimal_rewrites < 0:
            raise ValueError(f"keep_groups must be >= 1 and minimal_rewrites >= 0, got {self.keep_groups}, "
                             f"{self.minimal_rewrites}")
        if self.rewrite_form not in REWRITE_FORMS or self.rewrite_span not in IMITATION_SPANS:
            raise ValueError(f"rewrite_form must be one of {REWRITE_FORMS} and rewrite_span one of "
                             f"{IMITATION_SPANS}, got {self.rewrite_form!r}, {self.rewrite_span!r}")


def shape(rollout: RolloutBatch, sampled: Sequence[Score], references: Sequence[str], cfg: ShapingConfig, *,
          validator: Validator, count: Callable[[Sequence[str]], list[int]], tokenizer=None) -> ScoredBatch:
    """The learner's batch from ``rollout`` and the scores of its rows (``sampled``, one per row,
    prompt-major, ``index`` = row); ``references``: each row's reference meaning hash.
    ``tokenizer`` encodes added rows (needed for rewrites and negatives)."""
    scores, imitate = list(sampled), None
    if cfg.minimal_rewrites:
        rollout, replaced = minimal_rewrites(rollout, scores, tokenizer, cfg.minimal_rewrites, count,
                                             cfg.rewrite_form)
        intents = [p for p in rollout.prompts for _ in range(rollout.group_size)]
        redo = score([intents[i] for i in replaced], [rollout.texts[i] for i in replaced],
                     [references[i] for i in replaced], validator=validator, token_counter=count)
        for i, s in zip(replaced, redo):
            scores[i] = dataclasses.replace(s, index=i)  # batch-global index, as the pool's
        if cfg.imitate_rewrites:
            imitate = rewrite_imitation(rollout, sampled, cfg.rewrite_span)
    if cfg.imitate_best and (best := best_sample_imitation(rollout, sampled)) is not None:
        imitate = best if imitate is None else imitate | best
    if cfg.keep_groups < len(rollout.prompts):  # dynamic sampling: only the groups whose rewards differ
        groups = informative_groups([s.reward for s in scores], rollout.group_size, cfg.keep_groups)
        rollout, scores, imitate = keep_groups(rollout, scores, imitate, groups)
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
    valid = torch.tensor([s.valid for s in scores])
    negatives = None
    if cfg.negatives:
        built = [early_end_negatives(rollout, scores, tokenizer)]
        if cfg.wrong_steps:
            built.append(wrong_step_negatives(rollout, scores, tokenizer))
        built = [b for b in built if b is not None]
        negatives = merge_rollouts(built) if built else None
    return ScoredBatch(rollout, rewards, valid, negatives, imitate)


def keep_groups(rollout: RolloutBatch, scores: list[Score], imitate: torch.Tensor | None,
                groups: list[int]) -> tuple[RolloutBatch, list[Score], torch.Tensor | None]:
    """The batch, scores and imitation mask of ``groups`` only, each score's index renumbered to
    its row there."""
    rows = group_rows(groups, rollout.group_size)
    return (select_groups(rollout, groups), [dataclasses.replace(scores[r], index=j) for j, r in enumerate(rows)],
            None if imitate is None else imitate[rows])


def informative_groups(rewards: list[float], group_size: int, keep: int) -> list[int]:
    """DAPO's dynamic sampling: the first ``keep`` groups whose rewards are not all equal.

    A group whose samples all score the same gets zero advantage everywhere: it adds no policy
    gradient and only dilutes a token-mean loss. If no group differs, the first group is kept,
    so that every step still makes one (KL-only) update and advances the policy version.

    >>> informative_groups([1, 1, 0, 1, 0.5, 0.5, 1, 0], 2, keep=1)
    [1]
    >>> informative_groups([1, 1, 0, 0], 2, keep=3)
    [0]
    """
    groups = [rewards[b : b + group_size] for b in range(0, len(rewards), group_size)]
    return [b for b, r in enumerate(groups) if max(r) > min(r)][:keep] or [0]
