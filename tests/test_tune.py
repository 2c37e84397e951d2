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

from rollout.datagen.dataset import build_dataset
from sweep.space import SweepConfigError, load_sweep
from sweep.trial import FAULTS_ENV

CONFIGS = Path(__file__).resolve().parents[1] / "tune_configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    build_dataset(root / "data", n=100, seed=4, progress=lambda m: None, paraphrases=0)
    return root / "data"


def tune(*args, env_extra: dict | None = None, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray of its own
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # experiment state saved every second (the kill test)
    env.update(env_extra or {})
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
    """Trials that Tune's driver has recorded as done, in the experiment state synced to OUT."""
    states = sorted(trials.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        records = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]]
    except (ValueError, KeyError):  # being rewritten
        return []
    done = {r["trial_id"] for r in records if r["status"] == "TERMINATED"}
    return [t for t in trials.glob("run_trial_*") if t.name.split("_")[2] + "_" + t.name.split("_")[3] in done]


def _reported(trial: Path, rows: int = 1) -> bool:
    """Tune's driver has processed ``rows`` results of ``trial`` and synced its state to OUT."""
    progress = trial / "progress.csv"
    return progress.exists() and len(progress.read_text().splitlines()) >= 1 + rows


def _wait(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the sweep ended early: " + proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_failed_trial_retries_and_killed_sweep_resumes_from_checkpoints(data, tmp_path):
    """Trial 0's process crashes after its first report (Tune retries it from that checkpoint);
    trial 1 hangs after its second report, the whole sweep is killed then resumed with --resume."""
    config = sweep_file(tmp_path, **{"presets/tiny/trials": 2, "search": {"grpo.lr": {"choice": [1e-3]}},
                                     "fixed/train/steps": 3, "tune/max_concurrent": 2, "tune/grace_period": 3})
    out, trials = tmp_path / "s", tmp_path / "s" / "trials"
    faults = {FAULTS_ENV: "00000:crash@1,00001:hang@2"}
    proc = tune("--config", config, "--data", data, "--out", out, start_new_session=True, env_extra=faults)
    try:
        _wait(proc, lambda: _finished(trials) and any(_reported(t, rows=2) for t in trials.glob("run_trial_*")
                                                       if t not in _finished(trials)))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and the trials
        proc.communicate(timeout=60)
    [first] = _finished(trials)
    before = {p: p.read_bytes() for p in [first / "trial_result.json", first / "controller.log",
                                          first / "run" / "metrics.jsonl"]}

    summary = finish(tune("--config", config, "--data", data, "--out", out, "--resume", env_extra=faults), 300)
    table = pd.read_parquet(summary["results"])
    assert len(table) == 2 and (table.stop_reason == "steps").all() and (table.steps == 3).all()
    assert all(p.read_bytes() == b for p, b in before.items()), "the finished trial ran again"
    [second] = [t for t in trials.glob("run_trial_*") if t != first]
    for trial, step in ((first, 1), (second, 2)):  # each continued once from its checkpoint
        log = (trial / "controller.log").read_text()
        assert log.count("resumed from") == 1 and f"at step {step}," in log
        steps = [json.loads(line)["step"] for line in (trial / "run" / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3], "a step lost or repeated"


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
