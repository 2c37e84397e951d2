"""rollout/shaping.py without Ray: rewrites, imitation masks, dynamic sampling and negatives.

The rows are the tiny dataset's own programs (they pass), so every figure is the validator's.
"""

import pytest
import torch

from learner.config import RunConfig
from rollout.batch import RolloutBatch
from rollout.datagen.dataset import read_split
from rollout.sampler import encode_completions, encode_prompts
from rollout.shaping import ShapingConfig, shape
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator, score


@pytest.fixture(scope="module")
def setup(tiny_grpo):
    from transformers import AutoTokenizer

    rows = read_split(tiny_grpo / "data", "train").to_pylist()
    return rows, AutoTokenizer.from_pretrained(str(tiny_grpo / "init")), TokenCounter(tiny_grpo / "data" / "tokenizer")


def _rollout(tok, rows, texts, g):
    ids, mask = encode_completions(tok, texts)
    intents = [r["intent"] for r in rows]
    return RolloutBatch(intents, encode_prompts(tok, intents, 192), ids, -torch.rand(ids.shape) * mask,
                        mask, mask.sum(1), texts, g, 0)


def _scored(rows, rollout, count):
    """The rollout's rows scored as the validator pool scores them (index = row)."""
    g = rollout.group_size
    refs = [r["reference_hash"] for r in rows for _ in range(g)]
    intents = [r["intent"] for r in rows for _ in range(g)]
    return score(intents, rollout.texts, refs, validator=Validator(), token_counter=count), refs


def test_pure_grpo_trains_on_the_sampled_batch_as_it_is(setup):
    rows, tok, count = setup
    rows = rows[:2]
    rollout = _rollout(tok, rows, [rows[0]["surface"], "C1&", rows[1]["surface"], rows[1]["surface"]], 2)
    sampled, refs = _scored(rows, rollout, count)
    cfg = RunConfig.from_dict({"train": {"prompts_per_step": 2, "group_size": 2}}).shaping()
    assert cfg == ShapingConfig(keep_groups=2), "every switch off"
    batch = shape(rollout, sampled, refs, cfg, validator=Validator(), count=count)
    assert batch.rollout is rollout and batch.negatives is None and batch.imitate is None
    assert batch.valid.tolist() == [True, False, True, True]
    assert batch.rewards.tolist() == pytest.approx([s.reward for s in sampled])


def test_rewrites_wrong_endings_and_imitation_masks(setup):
    """Programs that pass (the rows' own surface forms, 3 copies per intent) with the rewrite
    form ``edit``, unlikelihood negatives and rewrite imitation switched on."""
    rows, tok, count = setup
    rows = [r for r in rows if ":execute>" in r["surface"]][:2]
    assert len(rows) == 2, "the tiny dataset has intents with the default context and outputs"
    rollout = _rollout(tok, rows, [r["surface"] for r in rows for _ in range(3)], 3)
    sampled, refs = _scored(rows, rollout, count)
    cfg = RunConfig.from_dict({
        "grpo": {"max_completion_length": 48, "unlikelihood": 1.0, "rewrite_nll": 1.0},
        "train": {"prompts_per_step": 2, "group_size": 3, "max_new_tokens": 48, "minimal_rewrites": 1,
                  "rewrite_form": "edit", "rollout_workers": 1}}).shaping()
    batch = shape(rollout, sampled, refs, cfg, validator=Validator(), count=count, tokenizer=tok)
    assert all(s.valid for s in sampled) and batch.rollout.offpolicy.sum() == 2, "one rewrite per group"
    for g, r in enumerate(rows):
        rewritten = [i for i in range(3 * g, 3 * g + 3) if batch.rollout.offpolicy[i]]
        assert [batch.rollout.texts[i] for i in rewritten] == [r["surface"].replace(":execute", "")], \
            "edit: only the default context goes"
        assert batch.valid[rewritten].all() and batch.rewards[rewritten[0]] > batch.rewards[3 * g], \
            "a rewrite is re-scored: valid, and shorter, so it earns more"
    assert batch.negatives.texts == [r["surface"].split(":")[0] for r in rows], "clauses<eos> per group"
    imitated = batch.imitate.any(1).nonzero().flatten().tolist()
    assert imitated == sorted([0, 3, *batch.rollout.offpolicy.nonzero().flatten().tolist()]), \
        "the rewrites, and each group's best sample (the first, on a tie) as the anchor"


def test_the_batch_trains_a_learner_with_every_term(setup, tiny_grpo):
    from learner.grpo_learner import GRPOLearner

    rows, tok, count = setup
    rows = [r for r in rows if ":execute>" in r["surface"]][:2]
    rollout = _rollout(tok, rows, [r["surface"] for r in rows for _ in range(3)], 3)
    sampled, refs = _scored(rows, rollout, count)
    cfg = RunConfig.from_dict({
        "model": {"preset": "tiny"},
        "grpo": {"lr": 1e-3, "max_completion_length": 48, "credit": "prefix", "unlikelihood": 1.0,
                 "valid_floor": 0.0, "rewrite_nll": 1.0},
        "train": {"prompts_per_step": 2, "group_size": 3, "max_new_tokens": 48, "minimal_rewrites": 1,
                  "rewrite_form": "edit", "rollout_workers": 1}})
    batch = shape(rollout, sampled, refs, cfg.shaping(), validator=Validator(), count=count, tokenizer=tok)
    metrics = GRPOLearner.from_checkpoint(tiny_grpo / "init", cfg.grpo).update(batch)
    assert metrics["loss"] == metrics["loss"] and 0 <= metrics["early_end_p"] <= 1 and "unlikelihood" in metrics
    assert metrics["rewrite_nll"] > 0 and metrics["policy_version"] == 1


def test_dynamic_sampling_keeps_the_groups_whose_rewards_differ(setup):
    """``train.oversample``: 4 groups drawn, at most ``prompts_per_step`` (2) kept: those whose
    rewards differ, scores renumbered to their rows."""
    rows, tok, count = setup
    rows = rows[:4]
    broken = {1: "C1&", 3: "nonsense"}  # one failing sample in groups 1 and 3: their rewards differ
    texts = [broken[b] if (b in broken and i == 2) else r["surface"] for b, r in enumerate(rows) for i in range(3)]
    rollout = _rollout(tok, rows, texts, 3)
    sampled, refs = _scored(rows, rollout, count)
    cfg = RunConfig.from_dict({"train": {"prompts_per_step": 2, "oversample": 2, "group_size": 3,
                                         "rollout_workers": 1}}).shaping()
    batch = shape(rollout, sampled, refs, cfg, validator=Validator(), count=count)
    assert len(sampled) == 12 and sum(not s.valid for s in sampled) == 2, "every sample scored"
    assert batch.rollout.prompts == [rows[1]["intent"], rows[3]["intent"]]
    assert batch.rollout.texts == texts[3:6] + texts[9:12]
    assert batch.valid.tolist() == [True, True, False, True, True, False]
    assert batch.rewards.shape == (6,) and batch.rewards[2] < batch.rewards[0]


def test_a_shaping_config_refuses_what_cannot_be_done():
    with pytest.raises(ValueError, match="keep_groups"):
        ShapingConfig(keep_groups=0)
    with pytest.raises(ValueError, match="rewrite_form"):
        ShapingConfig(keep_groups=2, rewrite_form="shortest")
