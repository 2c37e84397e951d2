"""Run by ``test_multinode``: the Serve app over three Ray nodes, one lost under load.

- head: the Serve controller and the one HTTP proxy (``HeadOnly``); no replica (no CPU);
- nodes A and B: one replica of every deployment of the app each (node and replica ask for one
  unit of the deployment's own custom resource, so two replicas need two nodes).

CLIENTS threads POST /compress (answer cache off, so every request reaches the model) without
pause through four phases: ``before`` (replicas on A and B), ``lost`` (node A removed with its
processes killed at once, as a lost machine; Serve cannot place the replacements anywhere),
``rejoin`` (node C added, until the replacements run there) and ``after``. Every answer's
status and latency is counted under the phase in which it came back (a request in flight when
A goes counts under ``lost``). Prints one JSON line.

    python tests/multinode_serve.py PORT PHASE_S
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import Counter

import httpx
import ray
from ray import serve

from multinode_cluster import add_node, emit, local_cluster, log, lose_node, where
from rollout.datagen.intents import IntentGenerator, template_ids
from serve import app as serve_app
from serve.cli import load_config
from validator_actors.codebook import load_codebook

CLIENTS = 4


def deployments() -> dict:
    """The app's deployments by name, as ``serve.app`` declares them."""
    return {d.name: d for d in vars(serve_app).values() if isinstance(d, serve.Deployment)}


def spread_options(cfg: dict) -> dict:
    """serve/config.yaml's deployment options, each deployment at two replicas that ask for one
    unit of ``replica_<name>``."""
    out = {}
    for name, opts in cfg["options"].items():
        actor = {**deployments()[name].ray_actor_options, **opts.get("ray_actor_options", {})}
        out[name] = {**opts, "num_replicas": 2, "autoscaling_config": None,
                     "ray_actor_options": {**actor, "resources": {f"replica_{name}": 1}}}
    return out


def replica_node(names: list[str]) -> dict:
    """A node that holds one replica of each deployment in ``names``."""
    return {"num_cpus": 2, "resources": {f"replica_{name}": 1 for name in names}}


def replicas(deployment: str) -> list[tuple[str, int] | None]:
    """(node id, pid) of each live replica of ``deployment`` (None: not placed yet)."""
    found = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"#{deployment}#" in actor["name"]:
            try:
                found.append(where(ray.get_actor(actor["name"], namespace="serve"), timeout=2))
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                found.append(None)
    return found


def census(names: list[str]) -> dict[str, list[str | None]]:
    """The nodes of each deployment's replicas (None: one not placed yet)."""
    return {name: sorted((r[0] if r else None for r in replicas(name)), key=str) for name in names}


class Load:
    """CLIENTS threads posting /compress until stopped; each answer tagged with the phase."""

    def __init__(self, url: str, intents: list[str]):
        self.url, self.intents, self.phase = url, intents, "before"
        self.answers: list[tuple[str, int, float, float]] = []  # (phase at the answer, status or 0, s, at)
        self.started = {}  # phase -> when it began
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(CLIENTS)]

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = k
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = client.post("/compress", json={"intent": self.intents[i % len(self.intents)]}).status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((self.phase, status, time.perf_counter() - t0, time.perf_counter()))
                i += CLIENTS

    def summary(self) -> dict:
        out = {}
        for phase in ("before", "lost", "rejoin", "after"):
            rows = [(s, t, at) for p, s, t, at in self.answers if p == phase]
            ok = [t for s, t, _ in rows if s == 200]
            failed_at = [at - self.started.get(phase, 0.0) for s, _, at in rows if s != 200]
            out[phase] = {"requests": len(rows), "ok": len(ok), "errors": dict(Counter(s for s, _, _ in rows if s != 200)),
                          "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
                          "last_error_s": round(max(failed_at), 2) if failed_at else None}
        return out


def main(port: str, phase_s: str) -> None:
    port, phase_s = int(port), float(phase_s)
    cb, tids = load_codebook(), template_ids(False)
    gen = IntentGenerator(cb, seed=11)
    intents = [gen.example(tids[i % len(tids)]).intent for i in range(64)]
    cfg = load_config()
    args = {**cfg["args"], "compressor": {**cfg["args"]["compressor"], "cache_size": 0}}
    names = sorted(cfg["options"])
    node = replica_node(names)
    with local_cluster({"num_cpus": 0}, [node, node]) as (cluster, ab):
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        t0 = time.perf_counter()
        serve.run(serve_app.compose(args, spread_options(cfg)), name="tinycompress", route_prefix="/")
        seen = {"head": cluster.head_node.node_id, "replica_nodes": [n.node_id for n in ab], "deployments": names,
                "deploy_s": round(time.perf_counter() - t0, 1), "replicas_start": census(names)}
        load = Load(f"http://127.0.0.1:{port}", intents)
        for thread in load.threads:
            thread.start()
        try:
            time.sleep(phase_s)
            lost = [r[1] for name in names for r in replicas(name) if r and r[0] == ab[0].node_id]
            load.started["lost"], load.phase = time.perf_counter(), "lost"
            seen["remove_s"] = lose_node(cluster, ab[0], lost)
            log(f"removed node {ab[0].node_id[:8]} and its {len(lost)} replicas")
            time.sleep(phase_s)
            seen["replicas_lost"] = census(names)
            load.started["rejoin"], load.phase = time.perf_counter(), "rejoin"
            t0 = time.perf_counter()
            seen["added"] = add_node(cluster, **node).node_id
            deadline = time.monotonic() + 120
            while (any(seen["added"] not in nodes for nodes in census(names).values())
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            seen["replicas_back_s"] = round(time.perf_counter() - t0, 1)
            load.started["after"], load.phase = time.perf_counter(), "after"
            time.sleep(phase_s)
        finally:
            load.stop.set()
            for thread in load.threads:
                thread.join(timeout=60)
        seen["replicas_end"] = census(names)
        emit({**seen, "phases": load.summary(), "clients": CLIENTS, "phase_s": phase_s})
        serve.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
