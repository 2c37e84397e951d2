"""What the multi-node scripts share: a Ray cluster of several nodes on one machine.

``ray.cluster_utils.Cluster`` starts each node as its own raylet with its own logical resources
and object store, on this host; ``remove_node(node, allow_graceful=False)`` kills a node's
processes as a lost machine would. Each script runs in a subprocess of ``tests/test_multinode.py``
(the test process keeps its one embedded Ray, see ``conftest.ray_local``) and prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster

STORE = 128 * 1024**2  # object store of every node: the tiny policy's weights are a few MB
# The GCS declares a node dead after this many missed health checks of this period: about 3 s
# here instead of Ray's default 5 x 3 s, so that a lost node is noticed quickly in a short test.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                   "health_check_failure_threshold": 3}


@contextmanager
def local_cluster(head: dict, nodes: list[dict], connect: bool = True):
    """A head with ``head`` (num_cpus, resources) and one node per entry of ``nodes``; yields
    (cluster, [nodes]), with this process connected as the driver (on the head) if ``connect``."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "include_dashboard": False, "object_store_memory": STORE, "_system_config": FAST_NODE_DEATH, **head})
    try:
        added = [cluster.add_node(object_store_memory=STORE, **node) for node in nodes]
        if connect:
            ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, added
    finally:
        ray.shutdown()
        cluster.shutdown()


def add_node(cluster: Cluster, **node):
    """A node started while the cluster runs; returns once it has registered."""
    return cluster.add_node(object_store_memory=STORE, **node)


def where(actor, timeout: float = 120) -> tuple[str, int]:
    """(node id, pid) of the process running ``actor`` (queued behind the actor's earlier calls)."""
    return tuple(ray.get(actor.__ray_call__.remote(
        lambda self: (ray.get_runtime_context().get_node_id(), os.getpid())), timeout=timeout))


def node_of(actor, timeout: float = 120) -> str:
    return where(actor, timeout)[0]


def lose_node(cluster: Cluster, node, pids: list[int]) -> float:
    """Kill ``node`` as a lost machine: the given processes on it (actors holding work) and its
    raylet at once, with no graceful shutdown (a worker process outlives its raylet by up to a
    second otherwise, and may still deliver a result). Returns the seconds it took."""
    t0 = time.perf_counter()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)
    return round(time.perf_counter() - t0, 3)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


RESULT = "multinode result: "


def emit(result: dict) -> None:
    """The script's result line, which the test reads (node processes also write to stdout)."""
    print(RESULT + json.dumps(result), flush=True)
