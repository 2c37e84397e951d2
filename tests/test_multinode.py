"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``), each run in a subprocess.

- GRPO: the learner pinned to the head by ``train.learner_resource``, rollout workers on two
  other nodes; one of those nodes is removed mid-step. The run finishes every step, every
  sample of every step is scored exactly once, and a node added afterwards takes the lost
  worker's shard and the rest of its work.
- Tune: two trials of a small sweep run at once on two different nodes.
- Serve: a replica of each of the app's deployments on each of two nodes; one node is removed
  under load, requests keep being answered (the errors are counted and bounded), and the
  replicas come back on a new node.

The scripts are ``tests/multinode_*.py``; each prints one JSON line of what it saw.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from learner.config import RunConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the scripts' shared module
from multinode_cluster import RESULT  # noqa: E402

CONFIGS = HERE.parent / "tune_configs"
TINY_TRAIN = {"prompts_per_step": 4, "group_size": 2, "rollout_workers": 2, "validator_actors": 1,
              "max_new_tokens": 16, "eval_every": 50, "eval_samples": 4, "checkpoint_every": 50,
              "tensorboard": False}


def run_script(name: str, *args, timeout: float) -> dict:
    # a cluster of its own, Serve as `serve run` runs it (tests/conftest.py turns direct ingress on
    # for this process's Ray)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_THROUGHPUT_OPTIMIZED")}
    proc = subprocess.run([sys.executable, str(HERE / name), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    return json.loads(line.removeprefix(RESULT))


# ---- train.learner_resource ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", " ", "CPU", "GPU", "memory", "object_store_memory", "node:127.0.0.1"])
def test_resource_fields_must_name_a_custom_resource(name):
    for key in ("learner_resource", "rollout_resource"):
        with pytest.raises(ValueError, match=f"train.{key} must name a custom Ray resource"):
            RunConfig.from_dict({"model": {"preset": "tiny"}, "train": {key: name}})
    assert RunConfig.from_dict({"train": {"learner_resource": "learner"}}).train.learner_resource == "learner"


def test_learner_resource_reaches_the_trials_learner_bundle():
    from sweep.space import load_sweep
    from sweep.trial import TrialSetup, trial_resources

    sweep = load_sweep(CONFIGS / "sweep_tiny.yaml")
    bases = {p: {**b, "train": {**b["train"], "learner_resource": "learner"}} for p, b in sweep.bases.items()}
    base, pinned = (TrialSetup(s, "data", {}, {}) for s in (sweep, dataclasses.replace(sweep, bases=bases)))
    trial = {"preset": "tiny", "point": {}}
    for gpu in (False, True):
        plain, learner = (trial_resources(trial, s, gpu).bundles[1] for s in (base, pinned))
        assert learner == {**plain, "learner": 0.01}, "the learner's bundle, and only it, asks for the resource"
    assert sum("learner" in b for b in trial_resources(trial, pinned, False).bundles) == 1


def test_a_run_pinned_to_a_resource_no_node_offers_fails_at_start(ray_local, tiny_grpo, tmp_path):
    """The embedded Ray has no custom resource: the learner would wait for one forever."""
    from cluster.controller import GRPOController

    cfg = RunConfig.from_dict({"model": {"preset": "tiny"},
                               "train": {**TINY_TRAIN, "rollout_workers": 1, "learner_resource": "learner"}})
    with pytest.raises(RuntimeError, match="train.learner_resource is 'learner' but no node of the cluster offers it"):
        GRPOController(cfg, tiny_grpo / "data", tiny_grpo / "init", tmp_path / "run", log=lambda m: None)


# ---- GRPO over three nodes, one lost mid-step ---------------------------------------------------

@pytest.mark.slow
def test_grpo_run_survives_losing_a_rollout_node_mid_step(tiny_grpo, tmp_path):
    steps, lose_at = 4, 2
    cfg = {"model": {"preset": "tiny"}, "grpo": {"lr": 1e-3, "max_completion_length": 16},
           "train": {**TINY_TRAIN, "steps": steps, "learner_cpus": 0.5, "worker_cpus": 0.75,
                     "validator_cpus": 0.25, "rollout_resource": "rollout", "learner_resource": "learner"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    seen = run_script("multinode_grpo.py", tmp_path / "cfg.json", tiny_grpo / "data", tiny_grpo / "init",
                      tmp_path / "run", lose_at, timeout=420)
    head, (a, b), added = seen["head"], seen["rollout_nodes"], seen["added"]
    # placement: the learner on the head by its resource, one worker on each rollout node
    assert seen["learner"] == head
    assert sorted(seen["workers_start"]) == sorted([a, b]) and head not in seen["workers_start"]
    # the loss struck a shard in flight, and the controller noticed it in that same step
    assert seen["lost"] == seen["workers_start"][0] and seen["shard_pending_at_loss"]
    assert seen["restarts"] and all(r == {"worker": 0, "step": lose_at} for r in seen["restarts"])
    # the node added afterwards took over the lost worker; the other worker never moved
    assert added not in (head, a, b)
    assert seen["workers_end"] == [added, seen["workers_start"][1]]
    # no step lost, every sample of every step scored exactly once, none as a validator failure
    assert seen["steps"] == steps
    B, G = TINY_TRAIN["prompts_per_step"], TINY_TRAIN["group_size"]
    assert [s["step"] for s in seen["scored"]] == list(range(1, steps + 1))
    assert all(s["indices"] == list(range(B * G)) and s["failed"] == 0 for s in seen["scored"])
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert [r["policy_version"] for r in rows] == [r["worker_version"] for r in rows] == list(range(1, steps + 1))
    assert all(r["groups_trained"] == B for r in rows)
    restarts = len(seen["restarts"])  # 2 when the first replacement was placed on the dying node
    assert [r["worker_restarts"] for r in rows] == [0 if r["step"] < lose_at else restarts for r in rows]


# ---- Tune: trials on different nodes ------------------------------------------------------------

@pytest.mark.slow
def test_tune_trials_run_on_different_nodes_and_at_most_max_concurrent_at_once(tiny_grpo, tmp_path):
    import pandas as pd

    sweep = {"presets": {"tiny": {"config": str(CONFIGS / "tiny.yaml"), "init": str(tiny_grpo / "init"), "trials": 3}},
             "fixed": {"grpo": {"max_completion_length": 12},
                       "train": {**TINY_TRAIN, "steps": 2, "prompts_per_step": 2, "rollout_workers": 1,
                                 "max_new_tokens": 12, "eval_every": 1, "learner_cpus": 0.25, "worker_cpus": 0.25,
                                 "validator_cpus": 0.25}},
             "search": {"grpo.lr": {"choice": [1e-3, 3e-3]}},
             "tune": {"max_concurrent": 2, "grace_period": 2, "reduction_factor": 2, "max_failures": 0}}
    sweep["fixed"]["train"].pop("checkpoint_every")  # the sweep sets it to eval_every
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    seen = run_script("multinode_tune.py", tmp_path / "sweep.yaml", tiny_grpo / "data", tmp_path / "out", timeout=420)
    assert seen["trials"] == 3 and seen["errors"] == 0
    groups = list(seen["placement_groups"].values())
    assert len(groups) == 3 and all(len(nodes) == 1 for nodes in groups), "each trial's bundles on one node"
    # three one-CPU nodes could hold all three trials at once: tune.max_concurrent holds them to two
    assert seen["peak"]["groups"] == 2, seen["peak"]
    peak_nodes = seen["peak"]["nodes"]
    assert len(set(peak_nodes)) == 2 and set(peak_nodes) <= set(seen["trial_nodes"]), "concurrent trials, two nodes"
    table = pd.read_parquet(seen["results"])
    assert len(table) == 3 and (table.steps == 2).all() and (table.stop_reason == "steps").all()
    for trial in (tmp_path / "out" / "trials").glob("run_trial_*"):
        progress = pd.read_csv(trial / "progress.csv")
        assert (progress.actors_in_trial_pg == progress.actors).all(), "actors outside the trial's placement group"


# ---- Serve: a replica's node lost under load ----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_keeps_answering_when_a_replica_node_is_lost(tmp_path):
    seen = run_script("multinode_serve.py", free_port(), 6, timeout=420)
    head, (a, b), added = seen["head"], seen["replica_nodes"], seen["added"]
    for name in seen["deployments"]:
        assert seen["replicas_start"][name] == sorted([a, b]), f"{name}: one replica on each of two nodes"
        assert a not in seen["replicas_lost"][name] and b in seen["replicas_lost"][name]
        assert seen["replicas_end"][name] == sorted([added, b]), f"{name}: the replacement runs on the new node"
    assert head not in {n for nodes in seen["replicas_end"].values() for n in nodes}
    phases = seen["phases"]
    assert phases["before"]["errors"] == {} and phases["before"]["ok"] > 0
    # requests kept being answered by the surviving replicas; only those in flight may fail
    lost_errors = sum(phases["lost"]["errors"].values())
    assert phases["lost"]["ok"] >= 5 and lost_errors <= seen["clients"]
    assert phases["after"]["errors"] == {} and phases["after"]["ok"] > 0
