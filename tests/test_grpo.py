"""GRPO math: advantages equal a loop reference, the loss equals TRL 1.16.0's own
``GRPOTrainer._compute_loss``, gradients are clean, and micro-batching does not change it."""

from __future__ import annotations

import contextlib
import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from learner.grpo import LOSS_TYPES, group_advantages, grpo_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")  # pinned in the test extras

B, G, T, P = 3, 4, 7, 2        # prompts, group size, completion tokens, prompt tokens
N = B * G
MAX_LEN = 9                    # dr_grpo's constant, deliberately > T
EPS_LOW, EPS_HIGH = 0.2, 0.28


# ---------------------------------------------------------------- advantages

def _advantages_loop(rewards: list[float], group_size: int, scale: str, eps: float) -> list[float]:
    """verl / CleanRL style reference: one group at a time, sample (Bessel) std as TRL."""
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start:start + group_size]
        mean = statistics.fmean(group)
        std = statistics.stdev(group) if len(group) > 1 else 0.0
        for r in group:
            if scale == "group":
                out.append((r - mean) / (std + eps))
            elif scale == "batch":
                out.append((r - mean) / (batch_std + eps))
            else:
                out.append(r - mean)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_group_advantages_equal_loop(scale, group_size):
    gen = torch.Generator().manual_seed(group_size)
    rewards = torch.rand(6 * group_size, generator=gen, dtype=torch.float64)
    rewards[:group_size] = 0.5                             # a zero-std group: advantage 0
    got = group_advantages(rewards, group_size, scale=scale, eps=1e-4)
    want = torch.tensor(_advantages_loop(rewards.tolist(), group_size, scale, 1e-4),
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert torch.all(got[:group_size] == 0)


def test_group_advantages_rejects_ragged_batch():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(8), 4, scale="std")


# ---------------------------------------------------------------- TRL harness

class _FixedLogpModel(torch.nn.Module):
    """Stands in for the policy under TRL's fused LM head: ``model(..., fused_lm_head=True)``
    returns ``log_probs`` / ``entropy`` over prompt + completion (grpo_trainer.py:1497-1501
    keeps the last ``logits_to_keep`` columns), so TRL's per-token logps are exactly ours."""

    def __init__(self, logp: torch.Tensor, entropy: torch.Tensor):
        super().__init__()
        self.logp, self.entropy = logp, entropy            # (N, T) each; logp a grad leaf

    def forward(self, input_ids, attention_mask, labels=None, fused_lm_head=False, **kw):
        assert fused_lm_head and input_ids.shape[1] == P + self.logp.shape[1]
        pad = self.logp.new_zeros(self.logp.shape[0], P)
        return SimpleNamespace(log_probs=torch.cat([pad, self.logp], 1),
                               entropy=torch.cat([pad, self.entropy], 1))


class _OneProcessAccelerator:
    """The accelerator calls _compute_loss makes, on one process: identities.
    ``is_main_process`` is read by the ``profiling_decorator`` on
    ``_get_per_token_logps_and_entropies`` (trl/extras/profiling.py:176-222), which times
    the call and reports nowhere here (the trainer has no ``state``)."""

    num_processes = 1
    sync_gradients = True
    is_main_process = True

    def autocast(self):
        return contextlib.nullcontext()

    def gather(self, t):
        return t

    def reduce(self, t, reduction="sum"):
        return t


def _trl_trainer(loss_type: str, beta: float, grad_accum: int = 1):
    """A GRPOTrainer with only the attributes ``_compute_loss`` (grpo_trainer.py:3020-3290)
    and ``_get_per_token_logps_and_entropies`` (1419-1508) read; no model load, no data.

    - epsilon_low / epsilon_high / beta / loss_type / max_completion_length: the
      hyper-parameters under test (set from args at lines 782, 819, 945-946, 983);
    - importance_sampling_level="token", top_entropy_quantile=1.0,
      off_policy_mask_threshold=None, use_vllm=False, _entropy_bonus_enabled=False,
      aux_loss_enabled=False, args.delta=None: GRPOConfig's defaults, which switch off
      sequence-level IS, entropy masking, OPSM, vLLM IS correction, the entropy bonus,
      the MoE aux loss and two-sided clipping — none of which grpo_loss implements;
    - args.use_bias_correction_kl=True: GRPOConfig's default (grpo_loss's
      kl_ratio_correction=True);
    - current_gradient_accumulation_steps / args.steps_per_generation: 1 unless a test
      splits a batch (TRL divides each micro-batch loss by the former in train mode);
    - accelerator: one process (identity gather/reduce, no autocast);
    - _metrics: where TRL logs kl, entropy and clip ratios, compared with ours.
    The model passed in is in training mode, so ``mode == "train"``.
    """
    t = trl_grpo.GRPOTrainer.__new__(trl_grpo.GRPOTrainer)
    t.loss_type, t.beta, t.max_completion_length = loss_type, beta, MAX_LEN
    t.epsilon_low, t.epsilon_high = EPS_LOW, EPS_HIGH
    t.importance_sampling_level, t.top_entropy_quantile = "token", 1.0
    t.off_policy_mask_threshold, t.use_vllm = None, False
    t._entropy_bonus_enabled, t.aux_loss_enabled = False, False
    t.args = SimpleNamespace(delta=None, use_bias_correction_kl=True,
                             steps_per_generation=grad_accum)
    t.current_gradient_accumulation_steps = grad_accum
    t.accelerator = _OneProcessAccelerator()
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return t


def _trl_loss(trainer, logp, old_logp, ref_logp, adv, mask, entropy, num_items=None):
    model = _FixedLogpModel(logp, entropy)
    trainer.model = model
    n = logp.shape[0]
    inputs = {
        "prompt_ids": torch.ones(n, P, dtype=torch.long),
        "prompt_mask": torch.ones(n, P, dtype=torch.long),
        "completion_ids": torch.ones(n, logp.shape[1], dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items)),
    }
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    return trainer._compute_loss(model, inputs)


def _batch(seed: int, off_policy: bool):
    """Right-padded completions of lengths 1..T, group advantages, log-probs."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    lengths[0], lengths[1] = 1, T
    mask = torch.arange(T)[None, :] < lengths[:, None]                     # (N, T) bool
    logp = -torch.rand(N, T, generator=gen) * 3                            # (N, T)
    ref = logp - 0.3 * torch.randn(N, T, generator=gen)
    old = logp + 0.4 * torch.randn(N, T, generator=gen) if off_policy else None
    adv = group_advantages(torch.rand(N, generator=gen), G)
    entropy = torch.rand(N, T, generator=gen) * 2
    return logp, old, ref, adv, mask, entropy


# ---------------------------------------------------------------- equality with TRL

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("off_policy", [False, True], ids=["num_iterations=1", "num_iterations>1"])
def test_loss_equals_trl_compute_loss(loss_type, beta, off_policy):
    logp, old, ref, adv, mask, entropy = _batch(seed=7, off_policy=off_policy)
    ref = ref if beta else None

    ours_in = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(ours_in, old, ref, adv, mask, loss_type, EPS_LOW, EPS_HIGH,
                              beta, MAX_LEN, entropy=entropy)
    loss.backward()

    trainer = _trl_trainer(loss_type, beta)
    trl_in = logp.clone().requires_grad_()
    trl_loss = _trl_loss(trainer, trl_in, old, ref, adv, mask, entropy)
    trl_loss.backward()

    assert abs(loss.item() - trl_loss.item()) <= 1e-6
    torch.testing.assert_close(ours_in.grad, trl_in.grad, rtol=0, atol=1e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert ("kl" in logged) == ("kl" in metrics) == (beta != 0)
    assert set(logged) == set(metrics)
    for key, value in logged.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key

    if off_policy:  # num_iterations > 1: the ratio leaves the trust region somewhere
        ratio = torch.exp(logp - old)[mask]
        assert ((ratio < 1 - EPS_LOW) | (ratio > 1 + EPS_HIGH)).any()
        assert metrics["clip_ratio/region_mean"] > 0
        assert metrics["clip_ratio/low_mean"] > 0 and metrics["clip_ratio/high_mean"] > 0
    else:
        assert metrics["clip_ratio/region_mean"] == 0


def test_kl_without_ratio_correction_is_plain_k3():
    logp, old, ref, adv, mask, _ = _batch(seed=3, off_policy=True)
    _, metrics = grpo_loss(logp, old, ref, adv, mask, "bnpo", beta=0.1,
                           kl_ratio_correction=False)
    d = (ref - logp)[mask]
    assert metrics["kl"] == pytest.approx((d.exp() - d - 1).mean().item(), abs=1e-6)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_finite_and_zero_on_padding(loss_type):
    logp, old, ref, adv, mask, _ = _batch(seed=11, off_policy=True)
    mask[2] = False                                            # an empty completion
    junk = ~mask
    logp = logp.masked_fill(junk, -1e4)                        # padding from a sampler
    old = old.masked_fill(junk, float("-inf"))
    ref = ref.masked_fill(junk, 1e4)
    logp.requires_grad_()
    loss, metrics = grpo_loss(logp, old, ref, adv, mask, loss_type, EPS_LOW, EPS_HIGH,
                              0.04, MAX_LEN)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logp.grad).all()
    assert torch.all(logp.grad[junk] == 0)
    assert logp.grad[mask].abs().sum() > 0
    assert all(v == v for v in metrics.values())               # no NaN metric


def test_bad_arguments_fail_with_a_message():
    logp, old, ref, adv, mask, _ = _batch(seed=1, off_policy=False)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, ref, adv, mask, "ppo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, "grpo", beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, old, ref, adv, mask, "dr_grpo", max_completion_length=T - 1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, ref, adv[:-1], mask, "grpo")


# ---------------------------------------------------------------- gradient accumulation

def _split_losses(loss_type, logp, old, ref, adv, mask, n_first):
    """Loss of the whole batch, and of each of two micro-batches (n_first, N - n_first)."""
    kw = dict(eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=0.04, max_completion_length=MAX_LEN)
    total = grpo_loss(logp, old, ref, adv, mask, loss_type, **kw)[0]
    num_items = mask.sum() if loss_type == "dapo" else None
    parts = [grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], loss_type, **kw,
                       num_items_in_batch=num_items)[0]
             for s in (slice(0, n_first), slice(n_first, N))]
    return total, parts


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "grpo"])
@pytest.mark.parametrize("n_first", [N // 2, G])            # equal halves, and 1/3 vs 2/3
def test_micro_batches_recombine_to_the_full_batch(loss_type, n_first):
    """Holds for dapo (weights 1, global token count), dr_grpo and grpo (weights n_k / N),
    whatever the token counts of the micro-batches."""
    logp, old, ref, adv, mask, _ = _batch(seed=5, off_policy=True)
    total, (first, second) = _split_losses(loss_type, logp, old, ref, adv, mask, n_first)
    if loss_type == "dapo":
        recombined = first + second
    else:
        recombined = (n_first * first + (N - n_first) * second) / N
    assert recombined.item() == pytest.approx(total.item(), abs=1e-6)


def test_bnpo_depends_on_micro_batching():
    """bnpo normalizes by the micro-batch's own token count (TRL's documented caveat):
    halves with different token counts do not recombine to the full-batch loss."""
    logp, old, ref, adv, mask, _ = _batch(seed=5, off_policy=True)
    mask[: N // 2, 1:] = False                                 # first half: 1 token each
    total, (first, second) = _split_losses("bnpo", logp, old, ref, adv, mask, N // 2)
    assert abs((first + second).item() / 2 - total.item()) > 1e-3


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "grpo"])
def test_trl_gradient_accumulation_matches_full_batch(loss_type):
    """TRL with two accumulation steps (each micro-batch loss already scaled by TRL)
    sums to our full-batch loss for equal-size micro-batches."""
    logp, old, ref, adv, mask, entropy = _batch(seed=9, off_policy=True)
    total = grpo_loss(logp, old, ref, adv, mask, loss_type, EPS_LOW, EPS_HIGH, 0.04,
                      MAX_LEN)[0]
    summed = 0.0
    for s in (slice(0, N // 2), slice(N // 2, N)):
        trainer = _trl_trainer(loss_type, 0.04, grad_accum=2)
        summed += _trl_loss(trainer, logp[s], old[s], ref[s], adv[s], mask[s], entropy[s],
                            num_items=mask.sum()).item()
    assert summed == pytest.approx(total.item(), abs=1e-6)


def _tree_batch(seed: int = 0):
    """4 groups of 6 completions drawn from a small vocabulary so that prefixes repeat, each
    ending in <eos> (2) and padded after it, as the sampler's; equal completions get equal
    rewards (the validator is deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    n, t = 24, 7
    ids = torch.randint(3, 5, (n, t), generator=gen)
    lengths = torch.randint(2, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    ids = torch.where(mask, ids, torch.zeros_like(ids))
    ids[torch.arange(n), lengths - 1] = 2
    reward_of = {}
    rewards = torch.tensor([reward_of.setdefault(tuple(row[m].tolist()), float(torch.rand((), generator=gen)))
                            for row, m in zip(ids, mask)])
    return ids, mask, rewards


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_advantages_telescope_to_the_sequence_advantage(seed):
    from learner.grpo import prefix_advantages

    ids, mask, rewards = _tree_batch(seed)
    adv = prefix_advantages(rewards, ids, mask, 6, scale="none")
    assert torch.allclose(adv.sum(1), group_advantages(rewards, 6, scale="none"), atol=1e-6)
    assert bool((adv[~mask] == 0).all()), "nothing on padding"
    scaled = prefix_advantages(rewards, ids, mask, 6, scale="group")
    std = rewards.view(-1, 6).std(1).repeat_interleave(6)
    assert torch.allclose(scaled, adv / (std[:, None] + 1e-4), atol=1e-6)


def test_prefix_advantages_credit_only_where_completions_part():
    from learner.grpo import prefix_advantages

    # a group of four: two copies of the long program, its shortcut, and an early end
    ids = torch.tensor([[7, 8, 9, 2], [7, 8, 9, 2], [7, 8, 2, 0], [7, 2, 0, 0]])
    mask = ids != 0
    rewards = torch.tensor([0.5, 0.5, 0.6, -1.0])
    adv = prefix_advantages(rewards, ids, mask, 4, scale="none")
    assert bool((adv[:, 0] == 0).all()), "a token the whole group shares gets nothing"
    assert adv[3, 1] == pytest.approx(-1.0 - rewards.mean().item()), "the early end takes all its blame"
    assert adv[2, 2] == pytest.approx(0.6 - (0.5 + 0.5 + 0.6) / 3) and adv[2, 3] == 0
    assert adv[0, 2] == adv[1, 2] == pytest.approx(0.5 - (0.5 + 0.5 + 0.6) / 3)
    assert bool((adv[:2, 3] == 0).all()), "after the copies part from the shortcut, nothing left to credit"


def test_per_token_advantages_that_repeat_equal_sequence_advantages():
    logp, old, ref, adv, mask = (torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 5),
                                 torch.randn(6), torch.rand(6, 5) > 0.2)
    for loss_type in LOSS_TYPES:
        a, _ = grpo_loss(logp, old, ref, adv, mask, loss_type, 0.2, 0.28, 0.04, 5)
        b, _ = grpo_loss(logp, old, ref, adv[:, None].expand(6, 5), mask, loss_type, 0.2, 0.28, 0.04, 5)
        assert torch.allclose(a, b, atol=1e-7)
