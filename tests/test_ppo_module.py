"""The policy as an RLlib RLModule: its action log-probs are the policy's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rollout.token_env import END, TokenCompressionEnv


@pytest.fixture(scope="module")
def setup(tiny_grpo):
    from learner.ppo_module import CompressorRLModule

    env = TokenCompressionEnv(data_dir=tiny_grpo / "data")
    module = CompressorRLModule(observation_space=env.observation_space, action_space=env.action_space,
                                model_config={"checkpoint": str(tiny_grpo / "init"),
                                              "vocabulary": env.vocabulary.tolist()})
    return env, module


def observations(env, count: int = 6) -> list[tuple[int, dict]]:
    """(row, observation) along the reference programs of the first rows: empty, partway, whole."""
    out = []
    for index in range(count // 3):
        obs, _ = env.reset(options={"index": index})
        actions = env.encode_program(env.rows[index]["program"])
        out.append((index, obs))
        for step, action in enumerate(actions):
            obs, *_ = env.step(action)
            if step in (len(actions) // 2, len(actions) - 1):
                out.append((index, obs))
    return out


def stacked(batch: list[tuple[int, dict]]) -> dict:
    return {k: torch.as_tensor(np.stack([o[k] for _, o in batch])) for k in batch[0][1]}


def test_action_log_probs_are_the_policys_own_over_the_action_tokens(setup):
    from ray.rllib.core.columns import Columns

    from learner.policy import load_policy
    from rollout.sampler import encode_prompts

    env, module = setup
    policy, tok, _ = load_policy(module.model_config["checkpoint"])
    batch = observations(env)
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: stacked(batch)})
    got = torch.log_softmax(out[Columns.ACTION_DIST_INPUTS], -1)
    tokens = torch.cat([torch.tensor([tok.eos_token_id]), torch.as_tensor(env.vocabulary)])
    for row, (index, o) in enumerate(batch):
        written = [int(env.vocabulary[a - 1]) for a in o["program"] if a > 0]
        ids = torch.tensor([encode_prompts(tok, [env.rows[index]["intent"]], 192)[0] + written])
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0, -1]
        want = torch.log_softmax(logits[tokens], -1)
        allowed = torch.as_tensor(o["action_mask"]).bool()
        assert torch.allclose(got[row][allowed], want[allowed] - torch.logsumexp(want[allowed], -1), atol=1e-4)
        assert (got[row][~allowed] < -1e6).all(), "a masked action has no probability"
    assert not batch[0][1]["action_mask"][END], "the empty program cannot end"


def test_the_value_head_starts_at_zero_and_takes_gradients(setup):
    from ray.rllib.core.columns import Columns

    env, module = setup
    batch = observations(env, 3)
    values = module.compute_values({Columns.OBS: stacked(batch)})
    assert values.shape == (len(batch),) and torch.equal(values, torch.zeros(len(batch)))
    (values - 1.0).pow(2).sum().backward()
    assert module.value_head.bias.grad is not None and module.value_head.bias.grad.abs().sum() > 0
