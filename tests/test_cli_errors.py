"""Every bad input to the command line is one clear line on stderr, exit 2, before any work.

Each row drives the real ``tinycompress`` in a subprocess and checks three things: the exit
code, that stderr is one line naming the flag or file (and the fix), and that nothing was
written: the run/output folder given is absent afterwards, or unchanged when it existed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tune_configs"
SHIPPED = ROOT / "serve" / "assets" / "compressor_10m"


def tc(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd or ROOT)


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tiny_grpo, tmp_path_factory):
    """A data folder, a tiny checkpoint, a config with a YAML syntax error, an empty folder."""
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "broken.yaml").write_text("model:\n  preset: [tiny\ntrain:\n  steps: 2\n")
    (root / "empty").mkdir()
    shutil.copytree(tiny_grpo / "init", root / "truncated")  # weights cut in half, as by a full disk
    weights = (root / "truncated" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return {"data": tiny_grpo / "data", "init": tiny_grpo / "init", "root": root, "truncated": root / "truncated",
            "broken": root / "broken.yaml", "empty": root / "empty", "tiny": CONFIGS / "tiny.yaml"}


# (command words with {placeholders}, what the one line must say); {out} is the folder that must
# stay unwritten, {full} a folder holding one file that must stay as it was
CASES = [
    # train: config, data, warm start and run folder are checked before Ray starts
    ("train --config {tiny} --data {data} --init /nonexistent --out {out}", "--init /nonexistent: no such folder"),
    ("train --config {tiny} --data {empty} --init {init} --out {out}", "--data"),
    ("train --config {tiny} --data /nonexistent --init {init} --out {out}", "tinycompress data"),
    ("train --config {broken} --data {data} --init {init} --out {out}", "broken.yaml: line 3 not valid YAML"),
    ("train --config /nonexistent.yaml --data {data} --init {init} --out {out}", "/nonexistent.yaml not found"),
    ("train --config " + str(CONFIGS / "10m.yaml") + " --data {data} --init {init} --out {out}",
     "the checkpoint holds the tiny policy, the config asks for 10m"),
    ("train --config {tiny} --data {data} --init {init} --out {out} --resume", "--resume: nothing to resume"),
    ("train --config {tiny} --data {data} --init {truncated} --out {out}",
     "model.safetensors is not a whole safetensors file (truncated"),
    ("eval --checkpoint {truncated} --data {data}", "not a whole safetensors file"),
    ("train --config {tiny} --data {data} --init {init} --out {full}", "folder is not empty"),
    ("train --config {tiny} --data {data} --init {init} --out {full} --resume --overwrite", "contradict"),
    ("train --config {tiny} --data {data} --init {init} --out {out} --max-steps 0", "--max-steps: must be >= 1"),
    ("train --config {tiny} --data {data} --init {init} --out {out} --set train.mode=fast",
     "train.mode must be sync or async"),
    ("train --config {tiny} --data {data} --init {init} --out {out} --set train.stepz=2", "unknown key train.stepz"),
    ("train --config {tiny} --data {data} --init {init} --out {out} --set steps", "expected key.sub=value"),
    ("train --config {tiny} --data {data} --init {init} --out {out} --set grpo.loss_type=dr_grpo "
     "--set grpo.max_completion_length=8", "dr_grpo needs grpo.max_completion_length >= train.max_new_tokens, got 8 < 48"),
    # sft
    ("sft --config {tiny} --data {data} --out {out} --set sft.max_steps=-5", "sft.max_steps must be >= 0"),
    ("sft --config {tiny} --data {data} --out {out} --max-steps -5", "--max-steps: must be >= 1"),
    ("sft --config {broken} --data {data} --out {out}", "not valid YAML"),
    ("sft --config {tiny} --data {data} --out {full}", "folder is not empty"),
    ("sft --config {tiny} --data {data} --out {full} --resume", "--resume: nothing to resume"),
    ("sft --config " + str(CONFIGS / "10m.yaml") + " --data {data} --out {out} --init {init}",
     "the checkpoint holds the tiny policy"),
    ("sft --config {tiny} --data {data} --out {out} --device tpu", "--device: expected cpu or cuda"),
    # eval, baseline, report
    ("eval --checkpoint {init} --data {data} --limit -3", "--limit: must be >= 0, got -3"),
    ("eval --checkpoint {init} --data {data} --threads -1", "--threads: must be >= 0"),
    ("eval --checkpoint /nonexistent --data {data}", "--checkpoint /nonexistent: no such folder"),
    ("eval --checkpoint {empty} --data {data}", "config.json is missing"),
    ("eval --checkpoint {init} --data {data} --out {out}/eval.json --split validation", "invalid choice"),
    ("baseline --data /nonexistent", "tinycompress data --out DIR"),
    ("baseline --data {data} --limit -1", "--limit: must be >= 0"),
    ("report --data {data} --arm nonsense --out {out}", "--arm takes baseline"),
    ("report --data /nonexistent --arm baseline --out {out}", "--data /nonexistent"),
    # data: every number checked while parsing, --rl-only needs a dataset
    ("data --out {out} --vocab-size -1", "--vocab-size: must be >= 64"),
    ("data --out {out} --paraphrases -1", "--paraphrases: must be >= 0"),
    ("data --out {out} --rl -4", "--rl: must be >= 0"),
    ("data --out {out} --n 5", "--n: must be >= 30"),
    ("data --out {out} --rl 10 --rl-set-share 2.0", "--rl-set-share: must be in [0, 1]"),
    ("data --out {empty} --rl 10 --rl-only", "--out"),
    ("data --out {out} --rl 10 --rl-only", "no such folder"),
    ("data --out {data} --rl-only", "--rl N"),
    # tune
    ("tune --config {broken} --data {data} --out {out}", "bad sweep file"),
    ("tune --config " + str(CONFIGS / "sweep_tiny.yaml") + " --data {data} --out {out} --set tune.max_concurent=1",
     "unknown key tune.max_concurent"),
    ("tune --config " + str(CONFIGS / "sweep_tiny.yaml") + " --data /nonexistent --out {out}", "--data /nonexistent"),
    # ppo: config, data, warm start and run folder before Ray starts
    ("ppo --config " + str(CONFIGS / "tiny_ppo.yaml") + " --data {data} --init {init} --out {out} --set ppo.lrr=1",
     "unknown key ppo.lrr"),
    ("ppo --config " + str(CONFIGS / "tiny_ppo.yaml") + " --data {data} --init /nonexistent --out {out}",
     "--init /nonexistent: no such folder"),
    ("ppo --config " + str(CONFIGS / "10m_ppo.yaml") + " --data {data} --init {init} --out {out} --set ppo.split=train",
     "the checkpoint holds the tiny policy, the config asks for 10m"),
    ("ppo --config " + str(CONFIGS / "10m_ppo.yaml") + " --data {data} --init {init} --out {out}",
     "rl.parquet is missing"),
    ("ppo --config " + str(CONFIGS / "tiny_ppo.yaml") + " --data {data} --init {init} --out {full}", "folder is not empty"),
    # serve: checkpoints, config and --set checked before Ray starts
    ("serve --compressor /nonexistent", "--compressor /nonexistent: no such folder"),
    ("serve --compressor {truncated}", "not a whole safetensors file"),
    ("serve --encoder {empty}", "--encoder"),
    ("serve --config {broken}", "broken.yaml: line 3 not valid YAML"),
    ("serve --set compressor.max_candidates=99", "--set: compressor: max_candidates must be in 1..16"),
    ("serve --set limits.queue=3", "--set: unknown key limits.queue; known keys: body_timeout_s"),
    ("serve --set timeout_s=-1", "timeout_s must be a number of seconds > 0"),
    ("serve --port 70000", "--port: must be a TCP port in 1..65535"),
    # vae: numbers, folders
    ("vae train --data {empty} --out {out}", "crops.npz is missing (write one with `tinycompress vae data"),
    ("vae train --data {empty} --out {out} --lr 0", "--lr: must be > 0"),
    ("vae train --data {empty} --out {out} --widths 16,x", "expected comma-separated integers"),
    ("vae train --data {empty} --out {out} --steps -3", "--steps: must be >= 1"),
    ("vae data --out {out} --test-fraction 1.5", "--test-fraction: must be in [0, 1]"),
    ("vae eval --checkpoint /nonexistent --data {empty}", "--checkpoint /nonexistent: no such folder"),
    # the command itself
    ("trian --data x", "invalid choice: 'trian'"),
    ("", "the following arguments are required: COMMAND"),
]


@pytest.fixture(scope="module")
def refused(inputs, tmp_path_factory):
    """Each case run once, four subprocesses at a time (most of each is importing torch):
    the case's process, its folders, and snapshots of every input before and after."""
    from concurrent.futures import ThreadPoolExecutor

    def run(words: str) -> dict:
        root = tmp_path_factory.mktemp("case")
        out, full = root / "out", root / "full"
        full.mkdir()
        (full / "metrics.jsonl").write_text('{"step": 1}\n')
        watched = {"data": inputs["data"], "empty": inputs["empty"], "full": full}
        before = {k: snapshot(v) for k, v in watched.items()}
        proc = tc(*[w.format(**inputs, out=out, full=full) for w in words.split()])
        return {"proc": proc, "root": root, "out": out, "before": before,
                "after": {k: snapshot(v) for k, v in watched.items()}}

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([w for w, _ in CASES], pool.map(run, [w for w, _ in CASES])))


@pytest.mark.parametrize("words, message", CASES, ids=[c[0].split(" --")[0] + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(refused, words, message):
    case = refused[words]
    proc = case["proc"]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not case["out"].exists(), "an output was written for a refused command"
    assert case["after"] == case["before"], "an input or an existing folder was changed"
    assert sorted(p.name for p in case["root"].iterdir()) == ["full"], "something was left beside the output"


def test_cuda_without_a_gpu_is_refused_while_parsing(inputs, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = tc("sft", "--config", inputs["tiny"], "--data", inputs["data"], "--out", tmp_path / "o", "--device", "cuda")
    assert proc.returncode == 2 and "torch sees no CUDA device here; use cpu" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_staged_output_moves_in_on_success_and_leaves_nothing_on_failure(tmp_path):
    """``tinycompress data`` writes through staged_dir: a build that fails half-way leaves --out
    as it was (absent, or its old files), one that succeeds replaces the files it wrote."""
    from validator_actors.cli_args import staged_dir

    out = tmp_path / "d"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "train.parquet").write_text("half")
        raise RuntimeError("killed half-way")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("old")
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "stale.json").write_text("old")
    with staged_dir(out) as tmp:
        (tmp / "train.parquet").write_text("new")
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "tokenizer.json").write_text("new")
    assert snapshot(out) == {"keep.txt": b"old", "train.parquet": b"new", "tokenizer/tokenizer.json": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "the staging folder was left behind"


def test_overrides_and_max_steps_are_what_runs_and_what_is_saved(inputs, tmp_path):
    """--set and --max-steps change the config that trains, and config.yaml records them."""
    from learner.config import RunConfig

    out = tmp_path / "run"
    proc = tc("train", "--config", inputs["tiny"], "--data", inputs["data"], "--init", inputs["init"], "--out", out,
              "--max-steps", 1, "--set", "train.eval_every=1", "--set", "train.eval_samples=4",
              "--set", "train.prompts_per_step=2", "--set", "train.group_size=2", "--set", "train.rollout_workers=1",
              "--set", "train.max_new_tokens=8", "--set", "grpo.max_completion_length=8",
              "--set", "train.checkpoint_every=1", "--set", "grpo.lr=3e-4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = RunConfig.from_yaml(out / "config.yaml")
    assert saved.train.steps == 1 and saved.grpo.lr == pytest.approx(3e-4) and saved.train.group_size == 2
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1, "one step ran"
    again = tc("train", "--config", inputs["tiny"], "--data", inputs["data"], "--init", inputs["init"], "--out", out)
    assert again.returncode == 2 and "folder is not empty" in again.stderr
    assert (out / "metrics.jsonl").read_text().splitlines() == rows, "a refused rerun touched the run"


def test_version_and_debug():
    proc = tc("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("tinycompress ")
    proc = tc("baseline", "--data", "/nonexistent", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UsageError" in proc.stderr


def test_overrides_parse_yaml_values_and_reject_bad_paths(tmp_path):
    from learner.config import RunConfig, apply_overrides

    raw = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    got = apply_overrides(raw, ["grpo.lr=1e-4", "train.top_p=0.9", "model.d_enc=null", "train.tensorboard=false"])
    cfg = RunConfig.from_dict(got)
    assert (cfg.grpo.lr, cfg.train.top_p, cfg.model.d_enc, cfg.train.tensorboard) == (1e-4, 0.9, None, False)
    assert raw == yaml.safe_load((CONFIGS / "tiny.yaml").read_text()), "the input mapping was changed"
    with pytest.raises(ValueError, match="is not a section"):
        apply_overrides(raw, ["train.steps.x=1"])


def test_make_demo_takes_a_free_port_and_refuses_a_taken_one():
    """``make demo`` serves on a free port unless PORT is given; a taken PORT stops it at once,
    before any work, instead of calling whatever answers there."""
    import re
    import socket

    if shutil.which("make") is None or not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("needs make and the installed .venv")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        planned = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        chosen = {int(p) for p in re.findall(r"serve --port (\d+)", planned.stdout)}
        assert len(chosen) == 1 and chosen != {port}, planned.stdout[-2000:]
        proc = subprocess.run(["make", "demo", f"PORT={port}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and f"port {port} is taken" in proc.stdout
    assert "tinycompress demo" not in proc.stdout, "the demo job started although its port was taken"
