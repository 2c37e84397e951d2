"""GRPO math in pure torch: group-relative advantages and the clipped policy loss.

Follows
- DeepSeekMath GRPO (Shao et al. 2024): G completions per prompt, advantage
  (r - mean_g) / (std_g + eps), PPO-style clipped ratio, k3 estimate of KL to a frozen
  reference, per-sequence mean of token losses (``loss_type="grpo"``);
- DAPO (Yu et al. 2025): asymmetric clipping (``eps_low`` / ``eps_high``, "clip-higher")
  and token-level aggregation over every completion token of the batch (``"dapo"``);
- Dr. GRPO (Liu et al. 2025): no std scaling (``scale="none"``) and a constant
  normalizer, the number of sequences times ``max_completion_length`` (``"dr_grpo"``).

The numbers match TRL 1.16.0's ``GRPOTrainer`` (``trl/trainer/grpo_trainer.py``:
advantages at lines 2763-2788, ``_compute_loss`` at lines 3020-3290) for token-level
importance sampling, one process, no vLLM correction, no entropy masking or bonus;
``tests/test_grpo.py`` calls TRL itself to check it. Two deliberate differences:

- the returned loss is that of the batch given, never divided by a number of
  gradient-accumulation steps (TRL divides in train mode); the caller combines
  micro-batches, see :func:`grpo_loss`;
- padded positions are zeroed *before* any exp, so junk log-probs there (``-inf``, huge
  values) give neither NaN losses nor NaN gradients (TRL multiplies by the mask after).

Shapes: N = B * G completions (prompt-major: row ``b * G + g``), T completion tokens.
"""

from __future__ import annotations

import torch

from learner.grpo_config import CREDITS, LOSS_TYPES, SCALES  # noqa: F401 (re-exported)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages, one per completion.

    ``rewards`` (N,) with N = B * G, prompt-major (row ``b * G + g``), finite. The baseline
    is always the group mean; the divisor is, by ``scale``:

    - ``"group"``: std of the group + eps (DeepSeekMath);
    - ``"batch"``: std of all N rewards + eps (TRL's ``scale_rewards="batch"``);
    - ``"none"``: nothing (Dr. GRPO).

    Std is Bessel-corrected (unbiased, ``torch.std`` default), as TRL's ``nanstd``
    (``trl/trainer/utils.py`` lines 1021-1046). A group of one has std 0 (so advantage 0),
    as TRL sets it when ``num_generations == 1``.

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), 2, scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B*G,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of "
                         f"group_size={group_size}; pass B*G rewards, prompt-major")
    grouped = rewards.view(-1, group_size)                                  # (B, G)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)    # (N,)
    if scale == "none":
        return advantages
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped)
        std = std.expand_as(grouped).reshape(-1)                            # (N,)
    else:
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    return advantages / (std + eps)


def prefix_advantages(rewards: torch.Tensor, completion_ids: torch.Tensor, mask: torch.Tensor,
                      group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """(N, T) per-token advantages from each group's prefix tree.

    The value of a prefix is the mean reward of the group's completions that start with it. Token
    t of completion i gets Q - V: the value of its prefix through t minus the value of its
    prefix before t. A token every group member shares gets 0; the token where completion i
    leaves the others gets the whole difference its choice made; after that, where i is
    alone, 0 again. Summed over a completion the advantages telescope to r_i - mean_g (given
    that equal completions score equally and none is a strict prefix of another, which holds
    for completions that end in ``<eos>``), so each sequence gets the same
    total as Dr. GRPO's, now credited to the tokens where the group's completions differ. The
    divisor follows ``scale`` as in :func:`group_advantages`.

    >>> ids = torch.tensor([[5, 6, 2], [5, 7, 2]]); r = torch.tensor([1., 0.])
    >>> prefix_advantages(r, ids, torch.ones_like(ids, dtype=torch.bool), 2, scale="none")
    tensor([[ 0.0000,  0.5000,  0.0000],
            [ 0.0000, -0.5000,  0.0000]])
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    n, t = completion_ids.shape
    if rewards.shape != (n,) or mask.shape != (n, t) or n % group_size:
        raise ValueError(f"rewards (N,) and mask (N, T) must match completion_ids {tuple(completion_ids.shape)}, "
                         f"N a multiple of group_size={group_size}")
    g = group_size
    ids, m, r = completion_ids.view(-1, g, t), mask.bool().view(-1, g, t), rewards.float().view(-1, g)
    same = (ids[:, :, None, :] == ids[:, None, :, :]) & m[:, :, None, :] & m[:, None, :, :]  # (B, G, G, T)
    through = same.long().cumprod(-1).bool()                     # i and j agree on tokens 0..t
    before = torch.cat([torch.ones_like(through[..., :1]), through[..., :-1]], -1)  # on 0..t-1

    def value(share):                                            # (B, G, T): mean reward of the sharers
        w = share.to(r.dtype)
        return (w * r[:, None, :, None]).sum(2) / w.sum(2).clamp(min=1.0)

    adv = ((value(through) - value(before)) * m).view(n, t)
    if scale == "group":
        std = r.std(dim=1, keepdim=True) if g > 1 else torch.zeros_like(r[:, :1])
        return adv / (std.repeat_interleave(g, 0) + eps)
    if scale == "batch":
        return adv / ((rewards.std() if n > 1 else rewards.new_zeros(())) + eps)
    return adv


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo",
              eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
              max_completion_length: int | None = None, *,
              entropy: torch.Tensor | None = None, kl_ratio_correction: bool = True,
              num_items_in_batch: float | torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped GRPO surrogate (+ beta * k3 KL), aggregated by ``loss_type``.

    Args:
        logp: (N, T) log pi_theta of the sampled tokens, with grad.
        old_logp: (N, T) log pi_old (the sampling policy); ``None`` means
            ``logp.detach()`` (one iteration per batch: ratio 1, nothing clipped).
        ref_logp: (N, T) log pi_ref of the frozen reference; needed when ``beta != 0``.
        advantages: (N,) from :func:`group_advantages`, or (N, T) per token
            (:func:`prefix_advantages`).
        mask: (N, T) bool or 0/1, true on completion tokens that count.
        loss_type: ``grpo`` (mean over each sequence's tokens, then over sequences),
            ``bnpo`` (mean over the batch's tokens), ``dr_grpo`` (sum / (N *
            max_completion_length)), ``dapo`` (sum / ``num_items_in_batch``).
        eps_low, eps_high: the ratio is clipped to [1 - eps_low, 1 + eps_high].
        beta: weight of the k3 KL, exp(ref - logp) - (ref - logp) - 1, per token.
        max_completion_length: the constant of ``dr_grpo`` (>= T).
        entropy: optional (N, T) per-token entropy, only logged.
        kl_ratio_correction: multiply the KL by the ratio pi_theta / pi_old, as TRL's
            ``use_bias_correction_kl`` (default True there and here).
        num_items_in_batch: for ``dapo``, the completion-token count of the whole
            optimizer batch (every micro-batch; in TRL also every process); default the
            mask sum of this batch, which is DAPO's token mean over this batch.

    Returns ``(loss, metrics)``. Metrics (floats, token-weighted masked means unless
    said): ``kl`` (the KL term as added, ratio-corrected if asked; only when beta != 0),
    ``entropy`` (if given), ``clip_ratio/low_mean`` (ratio < 1 - eps_low with A < 0),
    ``clip_ratio/high_mean`` (ratio > 1 + eps_high with A > 0), ``clip_ratio/region_mean``
    (either), ``clip_ratio/low_min`` and ``clip_ratio/high_max`` (min / max over
    sequences of the per-sequence fraction), the same names TRL logs.

    Gradient accumulation: to get the loss of a batch split into micro-batches k with
    n_k sequences, sum ``w_k * loss_k`` with, for
    ``dapo``: w_k = 1, passing ``num_items_in_batch`` = the whole batch's token count;
    ``dr_grpo``: w_k = n_k / N; ``grpo``: w_k = n_k / N. ``bnpo`` is a ratio of sums and
    is exact only when each micro-batch holds the same number of tokens (TRL's caveat).
    """
    _check_inputs(logp, old_logp, ref_logp, advantages, mask, loss_type, beta,
                  max_completion_length)
    valid = mask.bool()                                                     # (N, T)
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (N, 1) or (N, T)
    per_token, ratio, kl = _per_token_loss(logp, old_logp, ref_logp, advantages, valid,
                                           eps_low, eps_high, beta, kl_ratio_correction)
    loss = _aggregate(per_token, valid.to(per_token.dtype), loss_type,
                      max_completion_length, num_items_in_batch)
    metrics = _metrics(ratio, kl, entropy, advantages, valid, eps_low, eps_high)
    return loss, metrics


def _check_inputs(logp, old_logp, ref_logp, advantages, mask, loss_type, beta,
                  max_completion_length) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be (N, T), got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, logp {tuple(logp.shape)}")
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"advantages must be (N,) = ({logp.shape[0]},) or (N, T) = {tuple(logp.shape)}, "
                         f"got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp (log-probs of the frozen reference)")
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < logp.shape[1]:
            raise ValueError(f"dr_grpo needs max_completion_length >= T = {logp.shape[1]}, "
                             f"got {max_completion_length}")


def _per_token_loss(logp, old_logp, ref_logp, advantages, valid, eps_low, eps_high, beta,
                    kl_ratio_correction):
    """(N, T) per-token loss, ratio and KL (None when beta == 0); 0 where not valid. ``advantages``
    is (N, 1) or (N, T), broadcast over the tokens.

    TRL grpo_trainer.py: ratio 3083-3095, k3 KL and its ratio correction 3098-3105,
    clipped surrogate 3112-3120, KL added 3149-3150."""
    zero = logp.new_zeros(())
    logp = torch.where(valid, logp, zero)                  # junk at padding never reaches exp
    old = logp.detach() if old_logp is None else torch.where(valid, old_logp, zero)
    ratio = torch.exp(logp - old)                                           # (N, T)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)                 # (N, T)
    per_token = -torch.min(ratio * advantages, clipped * advantages)        # (N, T)
    kl = None
    if beta != 0.0:
        delta = torch.where(valid, ref_logp, zero) - logp                   # log ref/theta
        kl = torch.exp(delta) - delta - 1                                   # (N, T) k3
        if kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    return per_token, ratio, kl


def _aggregate(per_token, maskf, loss_type, max_completion_length, num_items_in_batch):
    """Scalar loss from (N, T) per-token losses; ``maskf`` (N, T) float 0/1.

    TRL grpo_trainer.py:3153-3174, without the division by accumulation steps."""
    masked = per_token * maskf
    if loss_type == "grpo":
        return (masked.sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / maskf.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.size(0) * max_completion_length)
    n_items = maskf.sum() if num_items_in_batch is None else num_items_in_batch
    n_items = torch.as_tensor(n_items, dtype=per_token.dtype, device=per_token.device)
    return masked.sum() / n_items.clamp(min=1.0)                            # dapo


@torch.no_grad()
def _metrics(ratio, kl, entropy, advantages, valid, eps_low, eps_high) -> dict[str, float]:
    """TRL's logged kl / entropy / clip ratios, grpo_trainer.py:3253-3283."""
    maskf = valid.to(ratio.dtype)
    n_tokens = maskf.sum().clamp(min=1.0)

    def masked_mean(x):
        return (torch.where(valid, x, 0.0).sum() / n_tokens).item()

    low = ((ratio < 1 - eps_low) & (advantages < 0)).to(ratio.dtype)        # (N, T)
    high = ((ratio > 1 + eps_high) & (advantages > 0)).to(ratio.dtype)      # (N, T)
    nonempty = valid.any(dim=1)                                             # (N,)
    seq_len = maskf.sum(-1)[nonempty]
    out = {
        "clip_ratio/low_mean": masked_mean(low),
        "clip_ratio/high_mean": masked_mean(high),
        "clip_ratio/region_mean": masked_mean(torch.maximum(low, high)),
        "clip_ratio/low_min": _nan_if_empty((low * maskf).sum(-1)[nonempty] / seq_len, "min"),
        "clip_ratio/high_max": _nan_if_empty((high * maskf).sum(-1)[nonempty] / seq_len, "max"),
    }
    if kl is not None:
        out["kl"] = masked_mean(kl)
    if entropy is not None:
        out["entropy"] = masked_mean(entropy.detach())
    return out


def _nan_if_empty(x: torch.Tensor, how: str) -> float:
    if x.numel() == 0:
        return float("nan")
    return (x.min() if how == "min" else x.max()).item()
