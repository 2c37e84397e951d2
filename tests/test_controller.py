"""The GRPO loop end to end on a local Ray instance (tiny policy): sync, async, faults, resume, bad configs."""

from __future__ import annotations

import json
import time

import pytest
import ray
import torch

from learner.config import RunConfig


@pytest.fixture(scope="module")
def setup(tiny_grpo):
    return tiny_grpo


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


def test_a_stopped_run_resumes_where_it_left_off(ray_local, setup):
    from cluster.controller import GRPOController
    from cluster.run_folder import latest_checkpoint

    raw = {"model": {"preset": "tiny"}, "grpo": {"lr": 1e-3, "max_completion_length": 12, "beta": 0.04},
           "train": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "rollout_workers": 1,
                     "validator_actors": 1, "max_new_tokens": 12, "eval_every": 50,
                     "eval_samples": 2, "checkpoint_every": 1, "keep_checkpoints": 2}}
    out = setup / "resumable"
    first = GRPOController(RunConfig.from_dict(raw), setup / "data", setup / "init", out, log=lambda m: None)
    first.run()
    saved = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert saved["step"] == 2 and saved["position"] == 4
    with open(out / "metrics.jsonl", "a") as fh:  # a step logged after the checkpoint, then a kill mid-line
        fh.write(json.dumps({"step": 3}) + "\n" + '{"step": 4, "loss": 0.')
    raw["train"]["steps"] = 3
    second = GRPOController(RunConfig.from_dict(raw), setup / "data", setup / "init", out,
                            log=lambda m: None, resume=True)
    assert (second.step, second.position, second.order) == (2, 4, saved["order"])
    assert ray.get(second.workers[0].version.remote()) == 2
    second.run()
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3], "no step lost or repeated"
    assert rows[-1]["policy_version"] == 3 and second.position == 6
    assert rows[-1]["kl"] > 1e-6, "the KL reference is still the run's start, not the checkpoint resumed from"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["latest", "step_000002", "step_000003"], "train.keep_checkpoints: 2 keeps the newest two"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        GRPOController(RunConfig.from_dict(raw), setup / "data", setup / "init", setup / "empty",
                       log=lambda m: None, resume=True)


def _tiny(**train) -> RunConfig:
    # one rollout worker unless a test needs two: each actor's process imports torch and transformers
    base = {"steps": 3, "prompts_per_step": 4, "group_size": 2, "rollout_workers": 1, "validator_actors": 1,
            "max_new_tokens": 12, "eval_every": 50, "eval_samples": 4, "checkpoint_every": 50,
            "tensorboard": False}
    return RunConfig.from_dict({"model": {"preset": "tiny"}, "grpo": {"lr": 1e-3, "max_completion_length": 12},
                                "train": {**base, **train}})


def test_async_mode_trains_on_rollouts_one_version_old(ray_local, setup):
    from cluster.controller import GRPOController

    ctl = GRPOController(_tiny(mode="async"), setup / "data", setup / "init", setup / "async", log=lambda m: None)
    ctl.run()
    rows = [json.loads(line) for line in open(setup / "async" / "metrics.jsonl")]
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert [r["rollout_version"] for r in rows] == [0, 0, 1], "generated while the previous step trained"
    assert [r["staleness"] for r in rows] == [0, 1, 1]
    assert ctl.position == 3 * 4, "no batch drawn beyond the last step"


def test_a_resumed_async_run_ends_as_an_uninterrupted_one(ray_local, setup):
    """Stopped right after its step-2 checkpoint, with step 3's batch in flight (generated from
    version 1), an async run resumes by drawing that batch again from the same weights and RNG
    states: every step's figures and the final weights equal an uninterrupted run's."""
    from safetensors.torch import load_file

    from cluster.controller import GRPOController

    cfg = _tiny(mode="async", steps=4, checkpoint_every=2, keep_checkpoints=0)
    whole = GRPOController(cfg, setup / "data", setup / "init", setup / "async_whole", log=lambda m: None)
    whole.run()
    cut = GRPOController(cfg, setup / "data", setup / "init", setup / "async_cut", log=lambda m: None)
    cut.evaluate()  # as run() does at step 0
    with open(setup / "async_cut" / "metrics.jsonl", "a") as fh:
        for _ in range(2):
            fh.write(json.dumps(cut.train_step()) + "\n")
    cut.save_checkpoint()
    assert cut.inflight is not None, "step 3's batch was in flight at the checkpoint"
    cut.shutdown()  # as a kill right after the checkpoint
    resumed = GRPOController(cfg, setup / "data", setup / "init", setup / "async_cut", log=lambda m: None, resume=True)
    resumed.run()
    rows = {run: [json.loads(line) for line in open(setup / run / "metrics.jsonl")] for run in ("async_whole", "async_cut")}
    keys = ("step", "policy_version", "rollout_version", "reward_mean", "ir_tokens", "loss")
    assert [[r[k] for k in keys] for r in rows["async_cut"]] == [[r[k] for k in keys] for r in rows["async_whole"]]
    a = load_file(str(setup / "async_whole" / "checkpoints" / "step_000004" / "model.safetensors"))
    b = load_file(str(setup / "async_cut" / "checkpoints" / "step_000004" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's final weights differ"


def test_killed_rollout_worker_and_validator_mid_step(ray_local, setup):
    """Kill a rollout worker and a validator actor between two steps of a run: the next step
    completes with every sample scored exactly once, and the run goes on."""
    from cluster.controller import GRPOController

    ctl = GRPOController(_tiny(steps=3, rollout_workers=2), setup / "data", setup / "init", setup / "faults",
                         log=lambda m: None)
    ctl.train_step()
    captured = []
    score = ctl.score
    ctl.score = lambda rows, ro: captured.append(score(rows, ro)) or captured[-1]
    ray.kill(ctl.workers[0])
    ray.kill(ctl.pool.actors[0])
    m = ctl.train_step()
    _, scores = captured[0]
    assert sorted(s.index for s in scores) == list(range(4 * 2)), "every sample scored once"
    assert not any({"VALIDATOR_CRASH", "VALIDATOR_TIMEOUT"} & set(s.codes) for s in scores)
    assert m["worker_restarts"] == 1 and m["validator_restarts"] >= 1 and m["policy_version"] == 2
    ctl.train_step()  # the replacement worker holds the learner's weights and keeps going
    assert ctl.step == 3
    assert ray.get(ctl.workers[0].version.remote(), timeout=60) == 3
    ctl.shutdown()


def test_evaluation_survives_a_dead_rollout_worker(ray_local, setup):
    """Worker 0 evaluates; killed before an evaluation, it is replaced with the learner's
    weights and the evaluation is redone: the same figures as from the worker it replaced."""
    from cluster.controller import GRPOController

    ctl = GRPOController(_tiny(steps=1), setup / "data", setup / "init", setup / "eval_fault", log=lambda m: None)
    ctl.train_step()
    before = ctl.evaluate()
    ray.kill(ctl.workers[0])
    after = ctl.evaluate()
    assert after == before, "greedy decoding of the same weights gives the same evaluation"
    assert ctl.worker_restarts == 1
    assert ray.get(ctl.workers[0].version.remote(), timeout=60) == 1, "the replacement holds the trained weights"
    ctl.shutdown()


@pytest.mark.parametrize("train, message", [
    ({"group_size": 1}, "train.group_size must be >= 2"),
    ({"prompts_per_step": 5, "rollout_workers": 2}, "must be divisible by train.rollout_workers"),
    ({"stepz": 3}, "unknown key train.stepz"),
    ({"mode": "turbo"}, "train.mode must be sync or async"),
    ({"minimal_rewrites": 4, "group_size": 4}, "train.minimal_rewrites must be in"),
    ({"rewrite_form": "shortest"}, "train.rewrite_form must be one of ('edit', 'shortcut', 'clauses')"),
    ({"oversample": 0}, "train.oversample must be >= 1"),
    ({"set_token_init": -1}, "train.set_token_init must be >= 0"),
    ({"split": "val"}, "train.split must be train or rl"),
    ({"wrong_steps": True}, "train.wrong_steps needs grpo.unlikelihood > 0"),
    ({"imitate_best": True}, "train.imitate_best needs grpo.rewrite_nll > 0"),
    ({"worker_cpus": 0}, "train.learner_cpus, worker_cpus and validator_cpus must be > 0"),
    ({"keep_checkpoints": -1}, "train.keep_checkpoints must be >= 0"),
])
def test_bad_configs_fail_at_start_naming_the_key(tmp_path, capsys, train, message):
    import yaml

    from cluster.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "train": train}))
    rc = main(["train", "--config", str(path), "--data", "nowhere", "--init", "nowhere", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "bad.yaml" in err


def test_a_learned_encoding_trains_as_factors_and_reaches_workers_folded(ray_local, setup, tmp_path):
    """A ``d_enc`` warm start keeps its two factors through GRPO; workers sample with their product."""
    import dataclasses

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from cluster.controller import GRPOController
    from learner.policy import ENCODING_FILE, PRESETS, build_policy, load_policy, save_policy
    from rollout.sampler import Sampler

    tok = AutoTokenizer.from_pretrained(str(setup / "data" / "tokenizer"))
    pcfg = dataclasses.replace(PRESETS["tiny"], d_enc=16)
    save_policy(build_policy(pcfg, tok, seed=1), tok, pcfg, tmp_path / "init", {"stage": "init"})
    cfg = RunConfig.from_dict({
        "model": {"preset": "tiny", "d_enc": 16}, "grpo": {"lr": 1e-2, "max_completion_length": 12},
        "train": {"steps": 2, "prompts_per_step": 4, "group_size": 2, "rollout_workers": 1,
                  "validator_actors": 1, "max_new_tokens": 12, "eval_every": 50, "eval_samples": 2,
                  "checkpoint_every": 50, "tensorboard": False}})
    ctl = GRPOController(cfg, setup / "data", tmp_path / "init", tmp_path / "run", log=lambda m: None)
    try:
        for _ in range(2):
            ctl.train_step()
        saved = ctl.save_checkpoint()
        published = ray.get(ctl.learner.weights.remote(), timeout=60).arrays
        intents = [r["intent"] for r in ctl.val_rows[:4]]
        worker_greedy = ray.get(ctl.workers[0].greedy.remote(intents), timeout=120)
    finally:
        ctl.shutdown()
    before, after = load_file(str(tmp_path / "init" / ENCODING_FILE)), load_file(str(saved / ENCODING_FILE))
    assert not torch.equal(before["codes"], after["codes"]) and not torch.equal(before["proj"], after["proj"]), \
        "the factors themselves were trained"
    assert "model.embed_tokens.weight" in published and not any(".codes." in k or ".proj." in k for k in published)
    folded = (after["codes"] @ after["proj"].T).numpy()
    assert abs(published["model.embed_tokens.weight"] - folded).max() < 1e-5, "workers get codes @ proj"
    model, tok2, _ = load_policy(saved)
    assert Sampler(model, tok2, max_new_tokens=12).sample(intents, 1, greedy=True).texts == worker_greedy


def test_actor_sizes_come_from_the_config(ray_local, setup, tmp_path):
    """``train.*_cpus`` set what each actor reserves: 1 learner + 2 workers + 1 validator at 0.25 = 1 CPU."""
    from cluster.controller import GRPOController

    cfg = RunConfig.from_dict({
        "model": {"preset": "tiny"}, "grpo": {"lr": 1e-3, "max_completion_length": 12},
        "train": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "rollout_workers": 2,
                  "validator_actors": 1, "max_new_tokens": 12, "eval_every": 50, "eval_samples": 2,
                  "checkpoint_every": 50, "tensorboard": False,
                  "learner_cpus": 0.25, "worker_cpus": 0.25, "validator_cpus": 0.25}})
    total = ray.cluster_resources()["CPU"]
    deadline = time.monotonic() + 60  # actors of earlier tests give their CPUs back lazily
    while ray.available_resources().get("CPU", 0.0) < total - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.2)
    ctl = GRPOController(cfg, setup / "data", setup / "init", tmp_path / "run", log=lambda m: None)
    try:
        ctl.train_step()  # every actor is up and has worked
        used = total - ray.available_resources().get("CPU", 0.0)
    finally:
        ctl.shutdown()
    assert used == pytest.approx(1.0, abs=0.02)


def test_dynamic_sampling_trains_on_the_groups_whose_rewards_differ(ray_local, setup, tmp_path):
    """``train.oversample``: a step draws prompts_per_step x oversample intents and the learner gets
    at most prompts_per_step groups (which ones: tests/test_shaping.py)."""
    from cluster.controller import GRPOController

    cfg = _tiny(steps=1, prompts_per_step=2, oversample=2, group_size=3, rollout_workers=1, max_new_tokens=48)
    ctl = GRPOController(cfg, setup / "data", setup / "init", tmp_path / "run", log=lambda m: None)
    m = ctl.train_step()  # the tiny policy's own samples: at most prompts_per_step groups train
    assert ctl.position == 4 and 1 <= m["groups_trained"] <= 2 and m["policy_version"] == 1
    ctl.shutdown()


def test_set_token_init_reaches_the_learner_and_every_worker(ray_local, setup, tmp_path):
    """``train.set_token_init``: the learner starts from the checkpoint with its full-set rows at
    scale x their members' mean, and the controller publishes those weights to the workers."""
    from transformers import AutoTokenizer

    from cluster.controller import GRPOController
    from learner.policy import PRESETS, build_policy, save_policy

    tok = AutoTokenizer.from_pretrained("serve/assets/compressor_10m")  # has C*, I*?, ...
    init = tmp_path / "init"
    save_policy(build_policy(PRESETS["tiny"], tok, seed=0), tok, PRESETS["tiny"], init, {"stage": "init"})
    saved = build_policy(PRESETS["tiny"], tok, seed=0).get_input_embeddings().weight.detach()
    ctl = GRPOController(_tiny(steps=1, set_token_init=2.0), setup / "data", init, tmp_path / "run", log=lambda m: None)
    try:
        star, members = tok.convert_tokens_to_ids("C*!"), tok.convert_tokens_to_ids([f"C{k}!" for k in range(1, 14)])
        learner = torch.from_numpy(ray.get(ctl.learner.weights.remote()).arrays["model.embed_tokens.weight"].copy())
        assert torch.allclose(learner[star], 2.0 * saved[members].mean(0), atol=1e-6)
        assert torch.equal(learner[members], saved[members]), "only the full-set rows move"
        for w in ctl.workers:
            assert torch.equal(ray.get(w.parameter.remote("model.embed_tokens.weight")), learner)
    finally:
        ctl.shutdown()
