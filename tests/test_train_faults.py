"""Process-level faults: a SIGKILLed driver resumes from its last checkpoint (placement on other
nodes and the loss of one: tests/test_multinode.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml


TINY = {"model": {"preset": "tiny"}, "grpo": {"lr": 1e-3, "max_completion_length": 12},
        "train": {"steps": 12, "prompts_per_step": 2, "group_size": 2, "rollout_workers": 1,
                  "validator_actors": 1, "max_new_tokens": 12, "eval_every": 50, "eval_samples": 2,
                  "checkpoint_every": 3, "tensorboard": False}}


@pytest.fixture(scope="module")
def setup(tiny_grpo):
    (tiny_grpo / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return tiny_grpo


def _train(setup: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # embedded Ray
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "train", "--config", str(setup / "tiny.yaml"), "--data",
         str(setup / "data"), "--init", str(setup / "init"), "--out", str(out), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_a_killed_driver_resumes_from_its_last_checkpoint(setup):
    out = setup / "killed"
    first = _train(setup, out)
    pointer = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not pointer.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the driver dies mid-run, with no chance to clean up
    first.wait(timeout=60)
    saved_dir = out / "checkpoints" / pointer.read_text().strip()
    saved = json.loads((saved_dir / "state.json").read_text())
    assert 3 <= saved["step"] < 12, "killed after a checkpoint and before the end"
    assert saved["position"] == 2 * saved["step"]

    second = _train(setup, out, "--resume")
    stdout, _ = second.communicate(timeout=600)
    assert second.returncode == 0, stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 13)), "no step lost or repeated"
    resumed = rows[saved["step"]]  # the first step after the checkpoint
    assert resumed["policy_version"] == saved["step"] + 1, "same policy version continues"
    final = json.loads((out / "checkpoints" / "step_000012" / "state.json").read_text())
    assert final["position"] == 2 * 12 and final["order"] == saved["order"], "no data position lost or repeated"
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == 12
