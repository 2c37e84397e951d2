"""The synchronous GRPO loop end to end on a local Ray instance (tiny policy)."""

from __future__ import annotations

import json

import pytest
import ray
from transformers import AutoTokenizer

from learner.config import RunConfig
from learner.policy import PRESETS, build_policy, save_policy
from rollout.dataset import build_dataset


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_run")
    build_dataset(root / "data", n=100, seed=4, progress=lambda m: None, paraphrases=0)
    tok = AutoTokenizer.from_pretrained(str(root / "data" / "tokenizer"))
    save_policy(build_policy(PRESETS["tiny"], tok), tok, PRESETS["tiny"], root / "init", {"stage": "init"})
    return root


def test_two_synchronous_grpo_steps(ray_local, setup):
    from cluster.controller import GRPOController

    cfg = RunConfig.from_dict({
        "model": {"preset": "tiny"}, "grpo": {"lr": 1e-3, "max_completion_length": 12},
        "train": {"steps": 2, "prompts_per_step": 4, "group_size": 2, "rollout_workers": 2,
                  "validator_actors": 1, "max_new_tokens": 12, "eval_every": 2, "eval_samples": 4}})
    ctl = GRPOController(cfg, setup / "data", setup / "init", setup / "run", log=lambda m: None)
    result = ctl.run()
    rows = [json.loads(line) for line in open(setup / "run" / "metrics.jsonl")]
    assert result["steps"] == 2 and [r["step"] for r in rows] == [1, 2]
    assert [r["worker_version"] for r in rows] == [1, 2], "every worker got each new version"
    for r in rows:
        assert all(r[k] >= 0 for k in ("t_generate", "t_score", "t_update", "t_sync"))
        assert -3 < r["reward_mean"] < 1 and r["loss"] == r["loss"]  # finite, not NaN
    assert "val_pass_rate" in rows[-1] and (setup / "run" / "best" / "model.safetensors").exists()
