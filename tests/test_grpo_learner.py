"""The plain GRPO learner: old log-probs, one update, weight sync."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from learner.grpo import group_advantages
from learner.grpo_learner import GRPOConfig, GRPOLearner
from rollout.batch import ScoredBatch
from learner.policy import PRESETS, build_policy
from rollout.datagen.dataset import build_dataset
from rollout.sampler import Sampler
from rollout.worker import copy_weights


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_data")
    build_dataset(out, n=60, seed=3, progress=lambda m: None, paraphrases=0)
    return AutoTokenizer.from_pretrained(str(out / "tokenizer"))


def _scored(model, tok, temperature=1.0):
    sampler = Sampler(model, tok, max_new_tokens=10, temperature=temperature)
    ro = sampler.sample(["check contract rule 3 in the build", "waive invariant 7"], 4,
                        generator=torch.Generator().manual_seed(0))
    rewards = torch.arange(8, dtype=torch.float32) % 3  # distinct within each group
    return ScoredBatch(ro, rewards, rewards > 0)


def test_learner_recomputes_the_samplers_logprobs(tok):
    model = build_policy(PRESETS["tiny"], tok, seed=0).eval()
    batch = _scored(model, tok, temperature=0.7)
    learner = GRPOLearner(model, tok, GRPOConfig(temperature=0.7, precision="fp32"))
    with torch.no_grad():
        logp, _ = learner.completion_logprobs(model.eval(), batch.rollout)
    mask = batch.rollout.mask
    assert torch.allclose(logp[mask], batch.rollout.logprobs[mask], atol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_one_update_changes_every_parameter_with_a_finite_loss(tok, beta):
    model = build_policy(PRESETS["tiny"], tok, seed=1)
    batch = _scored(model.eval(), tok)
    learner = GRPOLearner(model, tok, GRPOConfig(lr=1e-3, beta=beta))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = learner.update(batch)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["policy_version"] == 1
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p)]
    assert not unchanged, unchanged
    assert ("kl" in metrics) == (beta > 0) and "entropy" in metrics


def test_optimizer_state_round_trips_and_the_configs_lr_wins_on_load(tok):
    """A resumed learner gets AdamW's moments and step count back exactly, at the lr of its own
    config: lowering ``grpo.lr`` for a ``--resume`` takes effect (the saved lr does not come back)."""
    model = build_policy(PRESETS["tiny"], tok, seed=4)
    batch = _scored(model.eval(), tok)
    first = GRPOLearner(model, tok, GRPOConfig(lr=1e-3))
    first.update(batch)
    tensors, meta = first.optimizer_state()
    clone = build_policy(PRESETS["tiny"], tok, seed=4)
    clone.load_state_dict(model.state_dict())
    resumed = GRPOLearner(clone, tok, GRPOConfig(lr=2e-4))
    resumed.load_optimizer_state(tensors, meta)
    assert resumed.version == 1 and [g["lr"] for g in resumed.opt.param_groups] == [2e-4]
    for (name, p), q in zip(model.named_parameters(), clone.parameters()):
        a, b = first.opt.state[p], resumed.opt.state[q]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]), name
        assert float(a["step"]) == float(b["step"]) == 1.0
    before = {n: p.detach().clone() for n, p in clone.named_parameters()}
    resumed.update(batch)
    again = GRPOLearner(model, tok, GRPOConfig(lr=1e-3))
    again.load_optimizer_state(tensors, meta)
    ref_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    again.update(batch)
    small = sum(float((p.detach() - before[n]).abs().sum()) for n, p in clone.named_parameters())
    large = sum(float((p.detach() - ref_before[n]).abs().sum()) for n, p in model.named_parameters())
    assert 0 < small < 0.5 * large, "the lower lr moved the weights less"


def test_valid_floor_only_lifts_valid_programs(tok):
    """``valid_floor=0``: a valid sample below its group mean is not pushed down; failures keep
    their negative advantage; off (None) it is plain group advantages."""
    model = build_policy(PRESETS["tiny"], tok, seed=3).eval()
    batch = _scored(model, tok)
    rewards = torch.tensor([1.0, 0.2, 1.0, -1.0, 0.5, 0.5, 0.5, 0.2])
    batch = ScoredBatch(batch.rollout, rewards, rewards > -1)
    plain = GRPOLearner(model, tok, GRPOConfig()).advantages(batch)
    floored = GRPOLearner(model, tok, GRPOConfig(valid_floor=0.0)).advantages(batch)
    assert bool((plain[batch.valid] < 0).any()), "the case needs a valid row below its group mean"
    assert torch.equal(floored[~batch.valid], plain[~batch.valid]) and bool((floored[~batch.valid] < 0).all())
    assert torch.equal(floored[batch.valid], plain[batch.valid].clamp(min=0))


def test_prefix_credit_gives_per_token_advantages_to_the_update(tok):
    model = build_policy(PRESETS["tiny"], tok, seed=4)
    batch = _scored(model.eval(), tok)
    learner = GRPOLearner(model, tok, GRPOConfig(lr=1e-3, credit="prefix"))
    adv = learner.advantages(batch)
    ro = batch.rollout
    assert adv.shape == ro.completion_ids.shape and bool((adv[~ro.mask] == 0).all())
    assert torch.allclose(adv.sum(1), group_advantages(batch.rewards, ro.group_size, "group"), atol=1e-5)
    assert math.isfinite(learner.update(batch)["loss"])
    with pytest.raises(ValueError, match="grpo.credit must be one of"):
        GRPOConfig(credit="token")


def test_weights_sync_to_a_rollout_copy(tok):
    model = build_policy(PRESETS["tiny"], tok, seed=2)
    learner = GRPOLearner(model, tok, GRPOConfig(lr=1e-3))
    learner.update(_scored(model.eval(), tok))
    worker = build_policy(PRESETS["tiny"], tok, seed=99).eval()
    ref = learner.weights()
    assert ref.version == 1 and all(a.flags["C_CONTIGUOUS"] for a in ref.arrays.values())
    copy_weights(worker, ref.arrays)
    ids = torch.tensor([[tok.bos_token_id, 7, 8, tok.sep_token_id]])
    with torch.no_grad():
        assert torch.equal(worker(ids).logits, learner.model.eval()(ids).logits)
