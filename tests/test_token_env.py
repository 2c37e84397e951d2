"""The token-level environment (one IR token per step) that RLlib's PPO trains on."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rollout.datagen.dataset import read_split
from rollout.token_env import END, ENV_ID, TokenCompressionEnv
from validator_actors.tokens import TokenCounter
from validator_actors.validator import score


@pytest.fixture(scope="module")
def env(tiny_grpo):
    return TokenCompressionEnv(data_dir=tiny_grpo / "data", max_program_tokens=64)


def write(env, program: str):
    """Every step of writing ``program`` then ending it: (rewards, last info)."""
    rewards = []
    for action in env.encode_program(program) + [END]:
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        assert not truncated
    assert terminated
    return rewards, info


def test_it_passes_gymnasiums_checker_and_is_registered(tiny_grpo):
    made = gym.make(ENV_ID, data_dir=tiny_grpo / "data")
    check_env(made.unwrapped)
    a, _ = made.reset(seed=3)
    b, _ = made.reset(seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a), "the same seed, the same intent"


def test_the_reward_is_the_validators_and_comes_at_the_end(env, tiny_grpo):
    counter = TokenCounter(tiny_grpo / "data" / "tokenizer")
    for index in range(5):
        _, info = env.reset(options={"index": index})
        row = env.rows[index]
        for program in (row["program"], row["minimal"], "V!"):
            env.reset(options={"index": index})
            rewards, info = write(env, program)
            expected = score([row["intent"]], [program], [row["reference_hash"]], token_counter=counter)[0]
            assert rewards[:-1] == [0.0] * (len(rewards) - 1)
            assert rewards[-1] == pytest.approx(expected.reward) and info["valid"] == expected.valid
            assert info["program"] == program
    assert expected.reward < 0, "V! is not what any of these intents asks for"


def test_the_mask_forbids_an_empty_program_and_anything_past_the_limit(env):
    obs, _ = env.reset(options={"index": 0})
    assert obs["action_mask"][END] == 0 and obs["action_mask"][1:].all()
    with pytest.raises(ValueError, match="masked"):
        env.step(END)
    token = env.encode_program("C3?")[0]
    for _ in range(env.max_program_tokens):
        obs, reward, terminated, _, _ = env.step(token)
        assert reward == 0.0 and not terminated
    assert obs["action_mask"].tolist() == [1] + [0] * (env.action_space.n - 1), "only the end is left"
    with pytest.raises(ValueError, match="masked"):
        env.step(token)
    _, reward, terminated, _, info = env.step(END)
    assert terminated and not info["valid"] and reward < 0


def test_actions_cover_every_val_and_test_program_but_no_intent_words(env, tiny_grpo):
    for split in ("val", "test"):
        for row in read_split(tiny_grpo / "data", split).to_pylist():
            env.encode_program(row["program"]) and env.encode_program(row["minimal"])  # KeyError if not
    words = {env.tok.id_to_token(int(t)) for t in env.vocabulary}
    assert not any(w.startswith("Ġ") for w in words), "a token with a leading space is an intent word"
    with pytest.raises(KeyError, match="outside the action vocabulary"):
        env.encode_program("C3? please")


def test_observe_and_judge_are_the_episodes_own_without_its_state(env):
    """Lockstep decoding (PPO's evaluation) reads observations and rewards without stepping."""
    index = 3
    actions = env.encode_program(env.rows[index]["program"])
    obs, _ = env.reset(options={"index": index})
    for n, action in enumerate(actions + [END]):
        view = env.observe(index, actions[:n])
        assert all(np.array_equal(view[k], obs[k]) for k in obs)
        obs, reward, terminated, _, info = env.step(action)
    assert terminated and env.judge(index, actions) == (reward, info)
    env.reset(options={"index": 0})
    assert env.judge(index, actions) == (reward, info), "judging a row leaves the episode alone"
