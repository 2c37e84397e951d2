"""Run by ``test_multinode``: a GRPO run over three Ray nodes that loses one mid-step.

- head: the driver and the learner (``train.learner_resource: learner``; only the head has it);
- nodes A and B: one rollout worker each (``train.rollout_resource: rollout``). A node's one
  CPU holds one 0.75-CPU worker and at most one 0.25-CPU validator, never two workers.

During step LOSE_AT, right after its shards are dispatched, the node of rollout worker 0 is
removed with its processes killed at once, as a lost machine (``lose_node``). The controller
replaces the worker; the replacement cannot fit on B, so it waits until node C is added, and
regenerates the lost shard there. (A replacement asked for before the GCS has declared A dead,
about 3 s here, may still be scheduled onto A and die with it: the controller then replaces
it again, up to three attempts a shard.) Prints one JSON line of what it saw.

    python tests/multinode_grpo.py CONFIG.json DATA INIT OUT LOSE_AT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray

from cluster.controller import GRPOController
from learner.config import RunConfig
from multinode_cluster import add_node, emit, local_cluster, log, lose_node, node_of, where

ROLLOUT_NODE = {"num_cpus": 1, "resources": {"rollout": 10}}
FAILED = {"VALIDATOR_CRASH", "VALIDATOR_TIMEOUT"}


def main(config: str, data: str, init: str, out: str, lose_at: str) -> None:
    cfg = RunConfig.from_dict(json.loads(Path(config).read_text()))
    lose_at = int(lose_at)
    with local_cluster({"num_cpus": 1, "resources": {"learner": 1}}, [ROLLOUT_NODE, ROLLOUT_NODE]) as (cluster, ab):
        log("cluster up")
        ctl = GRPOController(cfg, Path(data), Path(init), Path(out), log=log)
        actors = [where(a) for a in [ctl.learner, *ctl.workers, *ctl.pool.actors]]
        seen = {"head": cluster.head_node.node_id, "rollout_nodes": [n.node_id for n in ab],
                "learner": actors[0][0], "workers_start": [node for node, _ in actors[1:1 + len(ctl.workers)]],
                "validators_start": [node for node, _ in actors[1 + len(ctl.workers):]], "scored": []}
        log("actors up")
        nodes = {n.node_id: n for n in ab}
        submit, restart, score, shutdown = ctl.submit, ctl._restart_worker, ctl.score, ctl.shutdown

        def submit_and_lose(rows):
            refs = submit(rows)
            if ctl.step + 1 == lose_at and "lost" not in seen:
                lost = seen["workers_start"][0]
                seen["shard_pending_at_loss"] = not ray.wait([refs[0]], timeout=0)[0]
                seen["remove_s"] = lose_node(cluster, nodes[lost], [pid for node, pid in actors if node == lost])
                seen["lost"] = lost
                log(f"removed node {seen['lost'][:8]} during step {lose_at}")
            return refs

        def restart_then_add(i):
            worker = restart(i)  # waits for a node with `rollout` and 0.75 CPU free: none is left
            seen.setdefault("restarts", []).append({"worker": i, "step": ctl.step + 1})
            if "added" not in seen:
                t0 = time.perf_counter()
                seen["added"] = add_node(cluster, **ROLLOUT_NODE).node_id
                seen["add_s"] = round(time.perf_counter() - t0, 2)
                log(f"added node {seen['added'][:8]}")
            return worker

        def score_once(rows, rollout):
            batch, sampled = score(rows, rollout)
            seen["scored"].append({"step": ctl.step + 1, "indices": sorted(s.index for s in sampled),
                                   "failed": sum(bool(FAILED & set(s.codes)) for s in sampled)})
            return batch, sampled

        def shutdown_after_census():
            seen["workers_end"] = [node_of(w) for w in ctl.workers]
            shutdown()

        ctl.submit, ctl._restart_worker, ctl.score, ctl.shutdown = (submit_and_lose, restart_then_add, score_once,
                                                                    shutdown_after_census)
        t0 = time.perf_counter()
        result = ctl.run()
        emit({**seen, "steps": result["steps"], "run_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main(*sys.argv[1:])
