"""Shared-prefix scoring equals the plain full-sequence forward: log-probs, loss, gradients.

``learner.scoring.full_sequence_logprobs`` (every completion after its own padded copy of the
prompt) is the definition; the learner's ``shared_prefix_logprobs`` (one prompt per group,
completions packed at their own lengths) must give the same numbers in fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from learner.grpo import LOSS_TYPES
from learner.grpo_learner import GRPOConfig, GRPOLearner
from learner.policy import PRESETS, build_policy
from learner.scoring import (
    first_fit_decreasing, full_sequence_logprobs, full_sequence_padded_share, pack_groups,
    shared_prefix_logprobs,
)
from rollout.batch import RolloutBatch, ScoredBatch

VOCAB = 300
TOL = 1e-5


class Tok:
    """The four special ids and a vocabulary size: all a policy and the learner read."""

    bos_token_id, eos_token_id, pad_token_id, sep_token_id = 1, 2, 0, 3

    def __len__(self):
        return VOCAB


# the presets' shapes (heads, head width ratio, depth) at widths a test runs in seconds
SHAPES = {
    "10m": PRESETS["10m"].with_(hidden_size=64, intermediate_size=172, num_layers=2),
    "50m": PRESETS["50m"].with_(hidden_size=64, intermediate_size=172, num_layers=3),
    "10m_d_enc": PRESETS["10m"].with_(hidden_size=64, intermediate_size=172, num_layers=2, d_enc=16),
    "gqa": PRESETS["10m"].with_(hidden_size=64, intermediate_size=172, num_layers=2, num_kv_heads=2),
}


def _model(shape: str, seed: int = 0, device: str = "cpu"):
    return build_policy(SHAPES[shape], Tok(), seed=seed).to(device)


def random_rollout(b: int, g: int, seed: int, t: int = 12) -> RolloutBatch:
    """Ragged prompts (4..20 tokens), completions of 1..t tokens with padding after, one row
    of the longest length and one of length 1 whenever there are two rows."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [[1] + torch.randint(4, VOCAB, (int(torch.randint(2, 19, (1,), generator=gen)),),
                                   generator=gen).tolist() + [3] for _ in range(b)]
    lengths = torch.randint(1, t + 1, (b * g,), generator=gen)
    lengths[0] = t
    if b * g > 1:
        lengths[-1] = 1
    mask = torch.arange(t)[None, :] < lengths[:, None]
    ids = torch.randint(4, VOCAB, (b * g, t), generator=gen).masked_fill(~mask, 0)
    logprobs = -torch.rand((b * g, t), generator=gen).masked_fill(~mask, 0.0)
    return RolloutBatch([f"intent {i}" for i in range(b)], prompts, ids, logprobs, mask, lengths,
                        ["p"] * (b * g), g, 0)


def _both(model, ro: RolloutBatch, temperature: float = 1.0, max_row: int | None = None):
    full = full_sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, ro.mask, ro.group_size, 0, temperature)
    packed = pack_groups(ro.prompt_ids, ro.completion_ids, ro.mask, ro.group_size, 0, max_row=max_row)
    return full, shared_prefix_logprobs(model, packed, temperature)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("b,g,max_row", [(5, 1, None), (3, 2, None), (4, 8, None), (4, 8, 40)])
def test_shared_prefix_logprobs_equal_the_full_sequence_forward(shape, b, g, max_row):
    """Whole groups per row, and groups split into runs with a prompt copy each (max_row)."""
    model = _model(shape).eval()
    ro = random_rollout(b, g, seed=b * 10 + g)
    with torch.no_grad():
        (logp_full, ent_full), (logp, ent) = _both(model, ro, temperature=0.7, max_row=max_row)
    assert logp.shape == ro.completion_ids.shape
    assert torch.allclose(logp, logp_full, atol=TOL, rtol=0), (logp - logp_full).abs().max()
    assert torch.allclose(ent, ent_full, atol=TOL, rtol=0)
    assert bool((logp[ro.mask] < 0).all()) and bool((logp[~ro.mask] == 0).all())


def test_a_completion_cannot_see_its_siblings():
    """Changing one completion changes no other completion's log-probs, and changing the
    prompt changes all of its group's and no other group's."""
    model = _model("10m").eval()
    ro = random_rollout(2, 4, seed=5)
    base = shared_prefix_logprobs(model, pack_groups(ro.prompt_ids, ro.completion_ids, ro.mask, 4, 0))[0]
    ids = ro.completion_ids.clone()
    ids[1, 0] = 4 if ids[1, 0] != 4 else 5
    moved = shared_prefix_logprobs(model, pack_groups(ro.prompt_ids, ids, ro.mask, 4, 0))[0]
    changed = (moved - base).abs().amax(-1) > 0
    assert changed.tolist() == [False, True] + [False] * 6
    prompts = [list(ro.prompt_ids[0]), ro.prompt_ids[1][:1] + [7] + ro.prompt_ids[1][2:]]
    moved = shared_prefix_logprobs(model, pack_groups(prompts, ro.completion_ids, ro.mask, 4, 0))[0]
    changed = (moved - base).abs().amax(-1) > 0
    assert changed.tolist() == [False] * 4 + [True] * 4


def _learner(model, **cfg):
    return GRPOLearner(model, Tok(), GRPOConfig(**{"precision": "fp32", **cfg}))


def _scored(ro: RolloutBatch, seed: int) -> ScoredBatch:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(ro.completion_ids.shape[0], generator=gen)
    return ScoredBatch(ro, rewards, rewards > 0)


def _loss_and_grads(learner: GRPOLearner, batch: ScoredBatch):
    learner.model.train()
    loss, metrics = learner.loss(batch)
    learner.model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), metrics, {n: p.grad for n, p in learner.model.named_parameters()}


def _old_near_current(model, ro: RolloutBatch, seed: int) -> RolloutBatch:
    """Behaviour log-probs within +-0.3 of the model's, so some ratios clip on each side."""
    with torch.no_grad():
        current, _ = full_sequence_logprobs(model, ro.prompt_ids, ro.completion_ids, ro.mask, ro.group_size, 0)
    noise = (torch.rand(current.shape, generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.6
    ro.logprobs = (current + noise) * ro.mask
    return ro


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_every_gradient_equal_the_full_sequence_path(loss_type, beta):
    """The split rows (max_row_tokens 30: every group in several runs) included."""
    shape = "10m_d_enc" if loss_type == "dapo" else "10m"
    model = _model(shape, seed=2)
    ro = _old_near_current(model, random_rollout(3, 4, seed=7), seed=1)
    batch = _scored(ro, seed=3)
    cfg = dict(loss_type=loss_type, beta=beta, max_completion_length=16)
    ref = copy.deepcopy(model).requires_grad_(False)  # a reference that differs from the policy
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    plain = _learner(copy.deepcopy(model), scoring="full_sequence", **cfg)
    fast = _learner(copy.deepcopy(model), scoring="shared_prefix", max_row_tokens=30 if beta else 0, **cfg)
    if beta:
        plain.ref, fast.ref = copy.deepcopy(ref), copy.deepcopy(ref)
    loss_a, metrics_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, metrics_b, grads_b = _loss_and_grads(fast, batch)
    assert torch.isfinite(loss_a) and abs(float(loss_a - loss_b)) <= TOL
    if beta:
        assert metrics_a["kl"] > 0 and abs(metrics_a["kl"] - metrics_b["kl"]) <= TOL
    assert metrics_a["clip_ratio/region_mean"] > 0  # the clipped branch is exercised too
    for name, grad in grads_a.items():
        assert grad is not None and grads_b[name] is not None, name
        assert torch.allclose(grads_b[name], grad, atol=TOL, rtol=0), (name, (grads_b[name] - grad).abs().max())
    assert sum(float(g.abs().sum()) for g in grads_a.values()) > 0


def test_prefix_credit_unlikelihood_and_imitation_equal_the_full_sequence_path():
    """Every term the learner adds goes through one scoring path: per-token (prefix) advantages,
    the unlikelihood term on wrong endings (group size 1), and the imitation of rewrite rows."""
    model = _model("10m", seed=4)
    ro = _old_near_current(model, random_rollout(2, 4, seed=11), seed=2)
    ro.offpolicy = torch.tensor([False, True] * 4)
    batch = _scored(ro, seed=5)
    batch.negatives = random_rollout(3, 1, seed=12)
    cfg = dict(credit="prefix", unlikelihood=0.5, rewrite_nll=0.3, beta=0.04)
    plain = _learner(copy.deepcopy(model), scoring="full_sequence", **cfg)
    fast = _learner(copy.deepcopy(model), scoring="shared_prefix", **cfg)
    loss_a, metrics_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, metrics_b, grads_b = _loss_and_grads(fast, batch)
    assert "unlikelihood" in metrics_a and "rewrite_nll" in metrics_a
    assert abs(float(loss_a - loss_b)) <= TOL
    for name, grad in grads_a.items():
        assert torch.allclose(grads_b[name], grad, atol=TOL, rtol=0), name


def test_packing_fills_rows_without_overflow_and_pads_less_than_the_full_layout():
    ro = random_rollout(8, 8, seed=21, t=40)
    packed = pack_groups(ro.prompt_ids, ro.completion_ids, ro.mask, 8, 0)
    sizes = [len(p) + int(ro.lengths[b * 8:(b + 1) * 8].sum()) for b, p in enumerate(ro.prompt_ids)]
    real = int((packed.segment >= 0).sum())
    assert real == sum(sizes) and packed.input_ids.shape[1] == max(sizes)
    assert packed.source.numel() == int(ro.mask.sum()) == packed.dest.unique().numel()
    full = full_sequence_padded_share(ro.prompt_ids, ro.mask, 8)
    assert packed.padded_share < full
    split = pack_groups(ro.prompt_ids, ro.completion_ids, ro.mask, 8, 0, max_row=128)
    assert split.input_ids.shape[1] <= max(128, max(len(p) for p in ro.prompt_ids) + int(ro.lengths.max()))
    assert int((split.member == -1).sum()) > sum(map(len, ro.prompt_ids))  # prompts copied per run
    for bins in (first_fit_decreasing([5, 9, 3, 7, 1, 4], 9), first_fit_decreasing([2] * 10, 5)):
        flat = sorted(i for row in bins for i in row)
        assert flat == list(range(len(flat)))
    assert all(sum([5, 9, 3, 7, 1, 4][i] for i in row) <= 9 for row in first_fit_decreasing([5, 9, 3, 7, 1, 4], 9))


def test_bf16_autocast_stays_close_and_keeps_fp32_weights():
    model = _model("10m", seed=6)
    ro = _old_near_current(model, random_rollout(2, 4, seed=13), seed=3)
    learner = _learner(model, precision="bf16", lr=1e-3)
    fp32 = _learner(copy.deepcopy(model), lr=1e-3)
    loss16, _ = learner.loss(_scored(ro, seed=1))
    loss32, _ = fp32.loss(_scored(ro, seed=1))
    loss16, loss32 = loss16.detach(), loss32.detach()
    assert loss16.dtype == torch.float32 and abs(float(loss16 - loss32)) < 0.05 * max(1.0, abs(float(loss32)))
    learner.update(_scored(ro, seed=1))
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())


def test_config_rejects_unknown_scoring_and_precision():
    with pytest.raises(ValueError, match="grpo.scoring"):
        GRPOConfig(scoring="packed")
    with pytest.raises(ValueError, match="grpo.precision"):
        GRPOConfig(precision="fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_shared_prefix_on_cuda_equals_the_cpu_reference():
    model = _model("10m_d_enc", seed=8).eval()
    ro = random_rollout(4, 8, seed=17)
    with torch.no_grad():
        (want, _), _ = _both(model, ro)
        got, _ = shared_prefix_logprobs(model.cuda(), pack_groups(ro.prompt_ids, ro.completion_ids, ro.mask, 8, 0))
    assert got.device.type == "cuda" and torch.allclose(got.cpu(), want, atol=1e-4, rtol=0)
