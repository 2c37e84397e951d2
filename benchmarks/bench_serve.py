"""HTTP benchmark of the Serve app: latency of each hop, /compress and /encode latency and
throughput, batching, batched against unbatched, and the two fronts, in the same run.

Starts one embedded Ray instance as ``tinycompress serve`` does (direct ingress: each replica
serves HTTP on its own port) with the app twice: ``/`` as in serve/config.yaml (``@serve.batch``
up to 16 intents / 32 crops) and ``/nobatch`` with ``max_batch_size: 1``, each behind its own
HAProxy front (serve/front.py); Serve's Python proxy serves both too. Each round drives the
variants in turn (interleaved) with an asyncio httpx client keeping 1 or 32 requests in flight:
``batched`` and ``no batch`` through their fronts, ``serve proxy`` the batched app through
Serve's proxy; the first round is a warm-up and is dropped; each figure is the median over the
remaining rounds. Every non-200 answer or transport error counts as an error. Intents are
distinct (the answer cache never hits) except in the ``cached`` row.

Hops, at one client, through the front: ``/healthz`` (answered by HAProxy), ``/readyz``
(HAProxy -> replica, no model), ``/expand`` (plus the validator), ``/compress`` of a cached
intent (plus the batch queue and worker thread), ``/compress`` (plus the decode; ``model ms`` is
the replica's own time for the batch).

    python benchmarks/bench_serve.py --out docs/bench/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

NO_BATCH = {"compressor": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
            "encoder": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}
APPS = {"batched": "/", "nobatch": "/nobatch"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def intents(n: int, seed: int = 11) -> list[str]:
    from rollout.datagen.intents import IntentGenerator, template_ids
    from validator_actors.codebook import load_codebook

    gen, tids = IntentGenerator(load_codebook(), seed), template_ids(False)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[gen.example(tids[len(seen) % len(tids)]).intent] = None
    return list(seen)


def crops(n: int) -> list[bytes]:
    """PNG files of 64x64 crops of scikit-image's bundled photographs."""
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng, out = np.random.default_rng(0), []
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 64), rng.integers(0, p.shape[1] - 64)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(p[y:y + 64, x:x + 64, :3])).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else float("nan")


async def load(base: str, method: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body once with ``concurrency`` in flight; latency percentiles and throughput."""
    lat, codes, model_ms, batches = [], {}, [], []
    queue = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in queue:
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, **bodies[i])
                key = r.status_code
            except httpx.HTTPError as exc:
                r, key = None, type(exc).__name__
            lat.append((time.perf_counter() - t0) * 1000)
            codes[key] = codes.get(key, 0) + 1
            if key == 200 and "/compress" in path:
                model_ms.append(r.json()["latency_ms"])
                batches.append(r.json()["batch"])

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    row = {"path": path, "concurrency": concurrency, "requests": len(bodies),
           "errors": len(bodies) - codes.get(200, 0), "status": codes, "p50_ms": quantile(lat, 0.5),
           "p99_ms": quantile(lat, 0.99), "throughput_rps": round(len(bodies) / seconds, 1)}
    if model_ms:
        row["model_p50_ms"] = round(statistics.median(model_ms), 1)
        row["batch_mean"] = round(statistics.fmean(batches), 2)  # intents decoded together
    return row


FRONTS: list = []  # the HAProxy fronts started here (stop_all stops them)


def start(num_cpus: int, apps: dict[str, str]) -> dict[str, str]:
    """Ray, Serve and the app of serve/config.yaml as each of ``apps`` (name: route prefix;
    ``nobatch`` with ``max_batch_size: 1``), each behind an HAProxy front as ``tinycompress serve``
    runs it. Base URLs once all are ready: ``{name}`` through its front, ``{name} via serve proxy``
    through Serve's proxy."""
    import ray
    from ray import serve

    from serve.app import compose
    from serve.cli import load_config
    from serve.front import Front, FrontConfig, FrontKeeper
    from serve.web import Guards

    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # as serve.cli.start does
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    cfg = load_config()
    serve.start(http_options={**cfg["http"], "host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    bases = {}
    for name, prefix in apps.items():
        options = cfg["options"] if name != "nobatch" else {
            dep: {**opts, "user_config": NO_BATCH} for dep, opts in cfg["options"].items()}
        serve.run(compose(cfg["args"], options), name=name, route_prefix=prefix, blocking=False)
        bases[f"{name} via serve proxy"] = f"http://127.0.0.1:{port}{prefix.rstrip('/')}"
        wait_ready(bases[f"{name} via serve proxy"])
        args = cfg["args"]
        door = Front("127.0.0.1", free_port(), Guards(**args.get("limits", {})), float(args.get("timeout_s", 30)),
                     FrontConfig(**args.get("front", {})), route_prefix=prefix)
        FrontKeeper(door, name, loopback=True).sync()
        door.wait_routed()
        FRONTS.append(door)
        bases[name] = f"http://127.0.0.1:{door.port}"
        wait_ready(bases[name])
    return bases


def stop_all() -> None:
    import ray
    from ray import serve

    while FRONTS:
        FRONTS.pop().stop()
    serve.shutdown()
    ray.shutdown()


def wait_ready(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready in {seconds:g} s")
        time.sleep(0.5)


class Bodies:
    """Fresh request bodies: every /compress intent is used once in the whole run."""

    def __init__(self, n_intents: int):
        self.texts, self.images, self.used = intents(n_intents), crops(64), 0

    def compress(self, n: int, **extra) -> list[dict]:
        out = [{"json": {"intent": t, **extra}} for t in self.texts[self.used:self.used + n]]
        if len(out) < n:
            raise RuntimeError("ran out of distinct intents: raise Bodies(n_intents)")
        self.used += n
        return out

    def encode(self, n: int) -> list[dict]:
        return [{"content": self.images[i % len(self.images)], "headers": {"content-type": "image/png"}}
                for i in range(n)]


VARIANTS = (("batched", "batched"), ("no batch", "nobatch"), ("serve proxy", "batched via serve proxy"))


async def one_round(bases: dict[str, str], bodies: Bodies, args) -> list[dict]:
    rows = []
    for variant, app in VARIANTS:
        base = bases[app]
        cases = [("POST", "/compress", bodies.compress(args.c1), 1),
                 ("POST", "/compress", bodies.compress(args.c32), 32),
                 ("POST", "/encode", bodies.encode(args.c1 * 4), 1),
                 ("POST", "/encode", bodies.encode(args.c32 * 4), 32)]
        for method, path, batch, c in cases:
            rows.append({"variant": variant, **await load(base, method, path, batch, c)})
    base = bases["batched"]
    hops = [("GET", "/healthz", [{}] * args.c1),
            ("GET", "/readyz", [{}] * args.c1),
            ("POST", "/expand", [{"json": {"program": "C3?&I5:audit>nightly"}}] * args.c1),
            ("POST", "/compress", [{"json": {"intent": bodies.texts[0]}}] * args.c1),  # cached after the 1st
            ("POST", "/compress", bodies.compress(args.c1, max_candidates=4))]
    for (method, path, batch), name in zip(hops, ("hop: answered by the front", "hop: replica, no model",
                                                  "hop: validator", "hop: cached answer", "4 candidates")):
        rows.append({"variant": name, **await load(base, method, path, batch, 1)})
    return rows


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """Each row's figures: the median over rounds (same row order in every round)."""
    out = []
    for same in zip(*rounds):
        row = dict(same[0])
        for key in ("p50_ms", "p99_ms", "throughput_rps", "model_p50_ms", "batch_mean"):
            if key in row:
                row[key] = round(statistics.median(r[key] for r in same), 2)
        row["errors"] = sum(r["errors"] for r in same)
        row["requests"] = sum(r["requests"] for r in same)
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| endpoint | variant | clients | requests | errors | p50 ms | p99 ms | req/s | model ms | batch |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| `{r['path']}` | {r['variant']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | {r.get('model_p50_ms', '')} | "
                     f"{r.get('batch_mean', '')} |")
    return "\n".join(lines)


def ratios(rows: list[dict], against: str) -> dict:
    """Batched over ``against``, for each (endpoint, clients): throughput and p50."""
    by = {(r["variant"], r["path"], r["concurrency"]): r for r in rows}
    out = {}
    for (variant, path, c), r in by.items():
        other = by.get((against, path, c))
        if variant == "batched" and other:
            out[f"{path} c={c}"] = {"throughput": round(r["throughput_rps"] / other["throughput_rps"], 2),
                                    "p50": round(r["p50_ms"] / other["p50_ms"], 2)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--c1", type=int, default=40, help="requests at one client per round (x4 for /encode)")
    p.add_argument("--c32", type=int, default=192, help="requests at 32 clients per round (x4 for /encode)")
    p.add_argument("--rounds", type=int, default=3, help="rounds after the dropped warm-up round")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args()
    load_before = os.getloadavg()
    bases = start(args.num_cpus, APPS)
    bodies = Bodies((args.rounds + 1) * len(VARIANTS) * (args.c1 + args.c32) + (args.rounds + 1) * args.c1 + 8)
    try:
        rounds = [asyncio.run(one_round(bases, bodies, args)) for _ in range(args.rounds + 1)][1:]
    finally:
        stop_all()
    rows = median_rows(rounds)
    report = {"command": "python " + " ".join(sys.argv), "machine": f"{os.cpu_count()} logical CPUs, "
              f"{platform.machine()}, Python {platform.python_version()}",
              "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "rounds": args.rounds, "rows": rows, "batched_over_unbatched": ratios(rows, "no batch"),
              "front_over_serve_proxy": ratios(rows, "serve proxy")}
    print(table(rows))
    print("batched / unbatched:", json.dumps(report["batched_over_unbatched"]))
    print("front / serve proxy:", json.dumps(report["front_over_serve_proxy"]))
    print(f"load average (1 min) before/after: {report['loadavg_1m_before_after']}")
    save(report, args.out)
    return 0


def save(report: dict, out: str | None) -> None:
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
