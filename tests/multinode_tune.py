"""Run by ``test_multinode``: a small Tune sweep over three Ray nodes on one machine.

The head has no CPUs (the Tune driver only); nodes A, B and C have one CPU each, which holds one
trial's placement group and not two, so concurrent trials must land on different nodes. Three
trials could run at once; the sweep's ``tune.max_concurrent`` (2) must hold them to two. The
sweep runs as ``tinycompress tune`` runs it (``sweep.cli.run_sweep``, joining the cluster
through ``RAY_ADDRESS``). A thread reads the placement-group table while the trials run and
records the nodes of each trial's bundles and the most groups alive at once. Prints one JSON
line.

    python tests/multinode_tune.py SWEEP.yaml DATA OUT
"""

from __future__ import annotations

import os
import sys
import threading
import time

import ray

from multinode_cluster import emit, local_cluster, log
from sweep.cli import run_sweep

TRIAL_NODE = {"num_cpus": 1}


def watch_placement_groups(seen: dict, peak: dict, want: int, stop: threading.Event) -> None:
    """``seen[pg id] = node ids of its bundles`` for every created placement group, and in
    ``peak`` the most groups alive at one time with their nodes, until ``want`` groups are seen
    and none is alive (then this thread stops calling Ray, well before the sweep's
    ``ray.shutdown``)."""
    alive = 1
    while not stop.is_set() and (len(seen) < want or alive):
        if ray.is_initialized():
            try:
                now = {pg_id: sorted(set(info["bundles_to_node_id"].values()))
                       for pg_id, info in ray.util.placement_group_table().items()
                       if info["state"] == "CREATED" and info["bundles_to_node_id"]}
                seen.update(now)
                alive = len(now)
                if alive > peak.get("groups", 0):
                    peak.update(groups=alive, nodes=sorted(n for nodes in now.values() for n in nodes))
            except Exception:  # Ray still connecting
                pass
        time.sleep(0.2)


def main(sweep_file: str, data: str, out: str) -> None:
    with local_cluster({"num_cpus": 0}, [TRIAL_NODE] * 3, connect=False) as (cluster, nodes):
        os.environ["RAY_ADDRESS"] = cluster.address  # run_sweep joins it, as under `ray job submit`
        seen: dict[str, list[str]] = {}
        peak: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_placement_groups, args=(seen, peak, 3, stop), daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        try:
            summary = run_sweep(sweep_file, data, out, log=log)  # ends with ray.shutdown()
        finally:
            stop.set()
            watcher.join(timeout=10)
        emit({"head": cluster.head_node.node_id, "trial_nodes": [n.node_id for n in nodes],
              "placement_groups": seen, "peak": peak, "trials": summary["trials"], "errors": summary["errors"],
              "results": summary["results"], "sweep_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main(*sys.argv[1:])
