"""Run by ``test_train_faults``: two Ray nodes on one machine, rollout workers on the second.

A script, not a test, so that its multi-node Ray lives in its own process (the test process
keeps a single embedded Ray; see ``conftest.ray_local``). Prints one JSON line with what it saw.

    python tests/multinode_placement.py CONFIG.json DATA INIT OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from cluster.controller import GRPOController
from learner.config import RunConfig


def main(config: str, data: str, init: str, out: str) -> None:
    cfg = RunConfig.from_dict(json.loads(Path(config).read_text()))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 256 * 1024**2})
    rollout_node = cluster.add_node(num_cpus=2, resources={"rollout": 10}, object_store_memory=256 * 1024**2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        ctl = GRPOController(cfg, Path(data), Path(init), Path(out), log=lambda m: None)
        worker_nodes = ray.get([w.node_id.remote() for w in ctl.workers], timeout=120)
        result = ctl.run()
        print(json.dumps({"worker_nodes": worker_nodes, "rollout_node": rollout_node.node_id,
                          "head_node": cluster.head_node.node_id, "steps": result["steps"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
