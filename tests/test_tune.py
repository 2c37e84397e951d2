"""``tinycompress tune`` end to end on a 100-intent data set (tiny policy), as subprocesses.

The smoke sweep (ASHA stops some trials, a row per trial, the exported best policy loads and
evaluates, every trial's actors ran in its placement group), a killed sweep resumed with
``--resume`` (finished trials are not rerun, the interrupted one continues from its checkpoint),
and sweep files that cannot run (the error names the key).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rollout.dataset import build_dataset
from sweep.space import SweepConfigError, load_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "tune_configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    build_dataset(root / "data", n=100, seed=4, progress=lambda m: None, paraphrases=0)
    return root / "data"


def tune(*args, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray of its own
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # experiment state saved every second (the kill test)
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "tune", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def sweep_file(tmp_path: Path, **changes) -> Path:
    """sweep_tiny.yaml with ``changes`` merged in, written where its preset path still resolves."""
    raw = yaml.safe_load((CONFIGS / "sweep_tiny.yaml").read_text())
    raw["presets"]["tiny"]["config"] = str(CONFIGS / "tiny.yaml")
    for key, value in changes.items():
        *path, last = key.split("/")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_smoke_sweep_stops_weak_trials_and_exports_a_loadable_best(data, tmp_path):
    from learner.evaluate import evaluate_checkpoint
    from learner.policy import load_policy

    summary = finish(tune("--config", CONFIGS / "sweep_tiny.yaml", "--data", data, "--out", tmp_path / "s"), 300)
    table = pd.read_parquet(summary["results"])
    assert len(table) == 4 and table.trial.is_unique, "a row per trial"
    assert table.val_reward.notna().all() and table.val_reward.is_monotonic_decreasing
    assert table.stop_reason.str.startswith("asha").any() and (table.steps < table.max_steps).any(), \
        "ASHA stopped at least one trial early"
    assert set(table.columns) >= {"grpo.lr", "grpo.loss_type", "train.group_size", "model.d_enc", "val_pass_rate",
                                  "val_compression", "val_ir_tokens", "wall_s", "stop_reason"}
    markdown = Path(summary["summary"]).read_text()
    assert all(f"| {trial} |" in markdown for trial in table.trial)

    best = Path(summary["best"])
    assert json.loads((best / "sweep_best.json").read_text())["trial"] == table.trial[0]
    model, _, meta = load_policy(best)
    assert meta["policy"]["name"] == "tiny" and meta["stage"] == "grpo"
    report = evaluate_checkpoint(best, data, "val", limit=8, throughput_batch=4)
    assert report["model"]["n"] == 8 and 0 <= report["model"]["pass_rate"] <= 1

    trials = sorted((tmp_path / "s" / "trials").glob("run_trial_*"))
    assert len(trials) == 4
    for trial in trials:
        progress = pd.read_csv(trial / "progress.csv")
        assert (progress.actors_in_trial_pg == progress.actors).all(), "actors outside the trial's placement group"
        assert list((trial / "run" / "tensorboard").glob("events.*")), "TensorBoard logs"


def _finished(trials: Path) -> list[Path]:
    return [t for t in trials.glob("run_trial_*") if (t / "trial_result.json").exists()]


def _reported(trial: Path) -> bool:
    """Tune's driver has processed a result of ``trial`` and synced its state to OUT."""
    progress = trial / "progress.csv"
    return progress.exists() and len(progress.read_text().splitlines()) >= 2


def test_killed_sweep_resumes_without_rerunning_finished_trials(data, tmp_path):
    config = sweep_file(tmp_path, **{"presets/tiny/trials": 2, "search": {"grpo.lr": {"choice": [1e-3]}},
                                     "fixed/train/steps": 3, "tune/max_concurrent": 1, "tune/grace_period": 3})
    out = tmp_path / "s"
    proc = tune("--config", config, "--data", data, "--out", out, start_new_session=True)
    trials, deadline = out / "trials", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # one trial done, the next one under way
        done = _finished(trials)
        if done and any(_reported(t) for t in trials.glob("run_trial_*") if t not in done):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and the trials
    proc.communicate(timeout=60)
    [finished] = _finished(trials)
    before = {p: p.read_bytes() for p in [finished / "trial_result.json", finished / "controller.log",
                                          finished / "run" / "metrics.jsonl"]}

    summary = finish(tune("--config", config, "--data", data, "--out", out, "--resume"), 300)
    table = pd.read_parquet(summary["results"])
    assert len(table) == 2 and (table.stop_reason == "steps").all() and (table.steps == 3).all()
    assert all(p.read_bytes() == b for p, b in before.items()), "the finished trial ran again"
    [resumed] = [t for t in trials.glob("run_trial_*") if t != finished]
    assert "resumed from" in (resumed / "controller.log").read_text(), "restarted from scratch, not resumed"
    steps = [json.loads(line)["step"] for line in (resumed / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "a step lost or repeated across the kill"


@pytest.mark.parametrize("changes, named", [
    ({"tune/max_concurent": 2}, "tune.max_concurent"),
    ({"serach": {}}, "unknown key serach"),
    ({"search": {"grpo.lrr": {"choice": [1e-3]}}}, "search.grpo.lrr"),
    ({"search": {"grpo.lr": {"normal": [0, 1]}}}, "search.grpo.lr"),
    ({"search": {"train.steps": {"choice": [2, 4]}}}, "search.train.steps"),
    ({"search": {"train.group_size": {"choice": [1, 4]}}}, "train.group_size=1"),
    ({"search": {"model.d_enc": {"choice": [None, 512]}}}, "model.d_enc=512"),
    ({"search": {"grpo.loss_type": {"choice": ["dapo", "ppo"]}}}, "grpo.loss_type='ppo'"),
    ({"search": {"train.rollout_workers": {"choice": [1, 2]}, "train.prompts_per_step": {"choice": [2, 3]}}},
     "train.prompts_per_step=3, train.rollout_workers=2"),
    ({"fixed/train/checkpoint_every": 7}, "fixed.train.checkpoint_every"),
    ({"presets/tiny/init": "no/such/checkpoint"}, "presets.tiny.init"),
    ({"presets/tiny/bogus": 1}, "presets.tiny.bogus"),
])
def test_bad_sweep_files_fail_at_load_naming_the_key(tmp_path, changes, named):
    with pytest.raises((SweepConfigError, FileNotFoundError)) as err:
        load_sweep(sweep_file(tmp_path, **changes))
    assert named in str(err.value)


def test_shipped_sweep_files_load_with_and_without_smoke():
    for path in CONFIGS.glob("sweep_*.yaml"):
        for smoke in (False, True) if "smoke" in yaml.safe_load(path.read_text()) else (False,):
            sweep = load_sweep(path, smoke=smoke)
            assert sweep.steps >= 1 and sweep.presets
