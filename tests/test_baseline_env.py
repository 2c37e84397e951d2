"""The rule-based baseline, the gym environment and the data/baseline/demo entry points."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from gymnasium.utils.env_checker import check_env

from rollout.baseline import RuleBasedCompressor, evaluate_compressor
from rollout.datagen.dataset import build_dataset, read_split
from rollout.env import CompressionEnv
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator, reward


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    build_dataset(out, n=1000, seed=1, progress=lambda m: None)
    return out


def test_baseline_sees_only_the_intent():
    params = list(inspect.signature(RuleBasedCompressor.compress).parameters)
    assert params == ["self", "intent"]


@pytest.mark.parametrize("intent, program", [
    ("Please verify contract rule 3 during the build.", "C3?:build"),
    ("Kindly waive invariant number 7 and skip verification for the audit.", "I7!&V!:audit"),
    ("Could you enforce every contract rule and save everything under run nightly-4?",
     "C1&C2&C3&C4&C5&C6&C7&C8&C9&C10&C11&C12&C13:execute>_runs/nightly-4"),
    ("Please run the legacy JOB_PRESENT macro.", "J?:execute"),
])
def test_baseline_reads_plain_requests(intent, program):
    assert RuleBasedCompressor().compress(intent) == program


def test_baseline_is_deterministic_and_imperfect(small):
    count = TokenCounter(small / "tokenizer")
    b = RuleBasedCompressor()
    for split in ("test", "heldout"):
        rows = read_split(small, split).to_pylist()
        first = [b.compress(r["intent"]) for r in rows]
        assert first == [b.compress(r["intent"]) for r in rows]
        result = evaluate_compressor(b.compress, rows, count)
        # a useful baseline: right often, yet far from perfect (else the data is too easy)
        assert 0.2 < result["pass_rate"] < 0.9, (split, result["pass_rate"])
        assert sum(result["failures_by_code"].values()) == round((1 - result["pass_rate"]) * len(rows))


def test_env_passes_gymnasium_checker(small):
    env = CompressionEnv(data_dir=small, split="train")
    check_env(env, skip_render_check=True)


def test_env_is_deterministic_and_rewards_like_the_validator(small):
    rows = read_split(small, "val").to_pylist()
    env_a, env_b = CompressionEnv(rows), CompressionEnv(rows)
    obs_a, info_a = env_a.reset(seed=11)
    obs_b, _ = env_b.reset(seed=11)
    assert obs_a == obs_b
    row = rows[info_a["index"]]
    _, r_ref, terminated, truncated, info = env_a.step(row["program"])
    assert terminated and not truncated and info["valid"]
    assert r_ref == reward([row["intent"]], [row["program"]], [row["reference_hash"]])[0]
    env_a.reset(seed=11)
    _, r_bad, *_ = env_a.step("C14?")
    assert r_bad < 0 < r_ref


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_cli_data_baseline_and_demo_smoke(tmp_path):
    out = tmp_path / "d"
    proc = _cli("data", "--out", str(out), "--n", "300", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["splits"]["train"]["count"] == 240
    for name in ("train", "val", "test", "heldout", "corrupt"):
        assert (out / f"{name}.parquet").exists()
    proc = _cli("baseline", "--data", str(out), "--split", "heldout")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 30 and 0 <= result["pass_rate"] <= 1 and "p95" in result["latency_ms"]
    proc = _cli("demo", "--out", str(out), "--model-rows", "3", "--run", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    demo = json.loads(proc.stdout)
    assert {"baseline_test", "baseline_heldout", "compressor_10m_test", "grpo"} <= set(demo)
    assert demo["compressor_10m_test"]["n"] == 3
    assert demo["grpo"]["steps"] == 2 and 0 <= demo["grpo"]["last_step"]["val_pass_rate"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_cli_reports_missing_data_clearly(tmp_path):
    proc = _cli("baseline", "--data", str(tmp_path / "nope"))
    assert proc.returncode != 0 and "tinycompress data" in proc.stderr
    assert Validator().validate("C3").valid  # the validator needs no data at all


def test_baseline_in_minimal_form_passes_alike_in_fewer_tokens(small):
    count = TokenCounter(small / "tokenizer")
    b, v = RuleBasedCompressor(), Validator()
    rows = read_split(small, "test").to_pylist()
    assert b.compress_minimal("Could you enforce every contract rule and save everything under run nightly-4?") \
        == "C*>nightly-4"
    for r in rows:
        plain, short = b.compress(r["intent"]), b.compress_minimal(r["intent"])
        assert v.validate(plain, r["reference_hash"]).valid == v.validate(short, r["reference_hash"]).valid
    full = evaluate_compressor(b.compress, rows, count)
    minimal = evaluate_compressor(b.compress_minimal, rows, count)
    assert minimal["pass_rate"] == full["pass_rate"]
    assert minimal["program_tokens_mean"] < full["program_tokens_mean"]
