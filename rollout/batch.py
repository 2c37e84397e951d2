"""The data contracts of a GRPO step, and the batch operations on them.

:class:`RolloutBatch` is what a sampler returns (B prompts, G completions each, with the
sampling log-probs), :class:`ScoredBatch` what the learner trains on (a rollout batch with its
rewards, built by :func:`rollout.shaping.shape`), :class:`WeightsRef` what the learner
publishes to the samplers. Plain dataclasses of tensors: no Ray, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RolloutBatch:
    """Completions for B prompts, G each, rows ordered prompt-major (row = b * G + g)."""

    prompts: list[str]  # B intents
    prompt_ids: list[list[int]]  # B token lists: <bos> intent <sep>
    completion_ids: torch.Tensor  # (B*G, T) int64, pad after <eos>
    logprobs: torch.Tensor  # (B*G, T) float32, log π(a_t | s_t) at temperature T, 0 on padding
    mask: torch.Tensor  # (B*G, T) bool, True on generated tokens (the <eos> included)
    lengths: torch.Tensor  # (B*G,) int64, generated tokens per row
    texts: list[str]  # B*G decoded programs (no special tokens)
    group_size: int
    policy_version: int
    offpolicy: torch.Tensor | None = None  # (B*G,) bool: rows not drawn from the policy (rewrites)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


@dataclass
class ScoredBatch:
    """A rollout batch with its rewards: the learner's input contract."""

    rollout: RolloutBatch
    rewards: torch.Tensor  # (B*G,) float32, prompt-major like rollout rows
    valid: torch.Tensor  # (B*G,) bool, passed the validator
    negatives: RolloutBatch | None = None  # wrong endings for the unlikelihood term (group size 1)
    imitate: torch.Tensor | None = None  # (B*G, T) bool: the tokens rewrite_nll imitates


@dataclass(frozen=True)
class WeightsRef:
    """Versioned flat weights: every parameter as a contiguous numpy array."""

    version: int
    arrays: dict[str, np.ndarray]


def merge_rollouts(batches: list[RolloutBatch]) -> RolloutBatch:
    """Concatenate rollout batches (same group size) in order; padding beyond ``mask`` is 0."""
    if len({b.group_size for b in batches}) != 1:
        raise ValueError("cannot merge rollouts with different group sizes")
    width = max(b.completion_ids.shape[1] for b in batches)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return RolloutBatch(
        prompts=[p for b in batches for p in b.prompts],
        prompt_ids=[p for b in batches for p in b.prompt_ids],
        completion_ids=torch.cat([pad(b.completion_ids, 0) for b in batches]),
        logprobs=torch.cat([pad(b.logprobs, 0.0) for b in batches]),
        mask=torch.cat([pad(b.mask, False) for b in batches]),
        lengths=torch.cat([b.lengths for b in batches]),
        texts=[t for b in batches for t in b.texts],
        group_size=batches[0].group_size,
        policy_version=min(b.policy_version for b in batches),
        offpolicy=None if all(b.offpolicy is None for b in batches) else torch.cat(
            [b.offpolicy if b.offpolicy is not None else torch.zeros(len(b.texts), dtype=torch.bool)
             for b in batches]),
    )


def group_rows(groups: list[int], group_size: int) -> list[int]:
    """The row indices of ``groups`` in a prompt-major batch, group by group in the order given."""
    return [b * group_size + i for b in groups for i in range(group_size)]


def select_groups(rollout: RolloutBatch, groups: list[int]) -> RolloutBatch:
    """The rows of ``groups`` (group indices, in the order given): a smaller batch of whole groups."""
    g = rollout.group_size
    keep = group_rows(groups, g)
    rows = torch.tensor(keep, dtype=torch.long)
    return RolloutBatch(
        prompts=[rollout.prompts[b] for b in groups], prompt_ids=[rollout.prompt_ids[b] for b in groups],
        completion_ids=rollout.completion_ids[rows], logprobs=rollout.logprobs[rows], mask=rollout.mask[rows],
        lengths=rollout.lengths[rows], texts=[rollout.texts[r] for r in keep], group_size=g,
        policy_version=rollout.policy_version,
        offpolicy=None if rollout.offpolicy is None else rollout.offpolicy[rows])
