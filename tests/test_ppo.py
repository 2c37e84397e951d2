"""``tinycompress ppo``'s run on a local Ray (tiny policy): two RLlib PPO iterations, then a resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[1] / "tune_configs" / "tiny_ppo.yaml"


def test_two_ppo_iterations_then_a_resume_that_continues_them(ray_local, tiny_grpo, tmp_path):
    from cluster.ppo import PPORun, load_config
    from learner.policy import load_policy

    preset, settings = load_config(CONFIG)
    assert preset == "tiny" and settings.iterations == 2
    out = tmp_path / "run"
    out.mkdir()
    run = PPORun(settings, tiny_grpo / "data", tiny_grpo / "init", out, log=lambda m: None)
    try:
        run.run()
    finally:
        run.close()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["env_steps"] == 2 * settings.train_batch_size, "RLlib sampled one batch an iteration"
    for r in rows:
        assert -3 < r["reward_mean"] < 1 and 0 <= r["pass_rate"] <= 1 and 0 <= r["val_pass_rate"] <= 1
        assert 1 <= r["episode_len"] <= settings.max_program_tokens + 1
        assert r["env_step_ms"] > 0 and r["inference_ms"] > 0 and 0 < r["t_sample"] < r["step_time"]
    assert 0 < rows[0]["episodes"] < rows[1]["episodes"] <= rows[1]["env_steps"], "programs sampled, counted"
    saved, _, meta = load_policy(out / "checkpoints" / "step_000002")
    assert meta["stage"] == "ppo" and meta["step"] == 2
    start, _, _ = load_policy(tiny_grpo / "init")
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), start.state_dict().values())), \
        "PPO changed the policy"

    more = PPORun(dataclasses.replace(settings, iterations=3), tiny_grpo / "data",
                  tiny_grpo / "init", out, resume=True, log=lambda m: None)
    try:
        restored = more.module().policy.state_dict()
        assert all(torch.equal(restored[k], v) for k, v in saved.state_dict().items()), "resumed from step 2's weights"
        more.run()
    finally:
        more.close()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3], "no iteration lost or repeated"
    assert rows[2]["env_steps"] == 3 * settings.train_batch_size, "the resumed run's counters continue"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["latest", "step_000002", "step_000003"], "ppo.keep_checkpoints: 2 keeps the newest two"


@pytest.mark.parametrize("changes, message", [
    ({"ppo": {"lrr": 1}}, "unknown key ppo.lrr"),
    ({"ppo": {"minibatch_size": 999}}, "minibatch_size <= ppo.train_batch_size"),
    ({"ppo": {"split": "val"}}, "ppo.split must be train or rl"),
    ({"extra": {}}, "unknown section extra"),
])
def test_bad_ppo_configs_name_the_key(tmp_path, changes, message):
    import yaml

    from cluster.ppo import load_config

    raw = yaml.safe_load(CONFIG.read_text())
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_config(path)
