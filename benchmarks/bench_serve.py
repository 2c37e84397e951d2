"""HTTP load test of the Serve app: /compress and /encode latency, throughput, errors, batching.

Starts one embedded Ray instance with the app twice: ``/`` as in serve/config.yaml
(@serve.batch up to 16 intents / 32 crops) and ``/nobatch`` with ``max_batch_size: 1``, one
replica each, so that every variant runs on the same machine in the same minutes. An asyncio
client (httpx) keeps ``concurrency`` requests in flight and records each latency; every
non-200 answer or transport error counts as an error. Intents are distinct (the answer cache
never hits) except in the ``cached`` row.

    python benchmarks/bench_serve.py --out docs/bench/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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

ONE_REPLICA = {"num_replicas": 1, "autoscaling_config": None}
NO_BATCH = {"Compressor": {**ONE_REPLICA, "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}},
            "Encoder": {**ONE_REPLICA, "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def intents(n: int, seed: int = 11) -> list[str]:
    from rollout.intents import IntentGenerator, template_ids
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


async def load(base: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body once with ``concurrency`` in flight; latency percentiles and throughput."""
    lat, errors, codes, model_ms, batches = [], 0, {}, [], []
    queue = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in queue:
            t0 = time.perf_counter()
            try:
                r = await client.post(path, **bodies[i])
                ok = r.status_code == 200
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
            except httpx.HTTPError as exc:
                ok = False
                codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
            lat.append((time.perf_counter() - t0) * 1000)
            errors += not ok
            if ok and path.endswith("compress"):
                model_ms.append(r.json()["latency_ms"])
                batches.append(r.json()["batch"])

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 1)  # noqa: E731
    row = {"path": path, "concurrency": concurrency, "requests": len(bodies), "errors": errors,
           "status": codes, "p50_ms": q(0.5), "p99_ms": q(0.99), "mean_ms": round(statistics.fmean(lat), 1),
           "throughput_rps": round(len(bodies) / seconds, 1)}
    if model_ms:
        row["model_p50_ms"] = round(statistics.median(model_ms), 1)
        row["batch_mean"] = round(statistics.fmean(batches), 2)  # intents decoded together
    return row


def start(args) -> str:
    import ray
    from ray import serve

    from serve.app import compose
    from serve.cli import load_config

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    cfg = load_config()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    batched = {**cfg["options"], "Compressor": {**cfg["options"]["Compressor"], **ONE_REPLICA}}
    serve.run(compose(cfg["args"], batched), name="batched", route_prefix="/", blocking=False)
    serve.run(compose(cfg["args"], {**cfg["options"], **NO_BATCH}), name="nobatch",
              route_prefix="/nobatch", blocking=False)
    base = f"http://127.0.0.1:{port}"
    for prefix in ("", "/nobatch"):
        deadline = time.monotonic() + 300
        while httpx.get(base + prefix + "/healthz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not become healthy")
            time.sleep(0.5)
    return base


async def bench(base: str, args) -> list[dict]:
    texts = intents(args.c1 * 3 + args.c32 * 3 + 8)
    take = iter(texts)
    comp = lambda n, **kw: [{"json": {"intent": next(take), **kw}} for _ in range(n)]  # noqa: E731
    images = crops(64)
    enc = lambda n: [{"content": images[i % len(images)], "headers": {"content-type": "image/png"}}  # noqa: E731
                     for i in range(n)]
    for prefix in ("", "/nobatch"):  # warm-up: first calls pay for lazy imports and batch queues
        await load(base, prefix + "/compress", comp(4), 2)
        await load(base, prefix + "/encode", enc(8), 4)
    rows = []
    for variant, prefix in (("batched", ""), ("no batch", "/nobatch")):
        for path, bodies, c in ((prefix + "/compress", comp(args.c1), 1), (prefix + "/compress", comp(args.c32), 32),
                                (prefix + "/encode", enc(args.c1 * 4), 1), (prefix + "/encode", enc(args.c32 * 4), 32)):
            rows.append({"variant": variant, **await load(base, path, bodies, c)})
    greedy = await load(base, "/compress", comp(args.c1, max_candidates=1), 1)
    rows.append({"variant": "batched, max_candidates=1 (greedy)", **greedy})
    repeat = [{"json": {"intent": texts[0]}}] * args.c1
    rows.append({"variant": "batched, cached intent", **await load(base, "/compress", repeat, 1)})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| endpoint | variant | concurrency | requests | errors | p50 ms | p99 ms | throughput req/s "
            "| model p50 ms | intents per batch |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| `{r['path']}` | {r['variant']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | {r.get('model_p50_ms', '')} | "
                     f"{r.get('batch_mean', '')} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--c1", type=int, default=40, help="requests at concurrency 1 (x4 for /encode)")
    p.add_argument("--c32", type=int, default=192, help="requests at concurrency 32 (x4 for /encode)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args()
    load_before = os.getloadavg()
    base = start(args)
    try:
        rows = asyncio.run(bench(base, args))
    finally:
        from ray import serve
        import ray

        serve.shutdown()
        ray.shutdown()
    report = {"command": "python " + " ".join(sys.argv), "machine": f"{os.cpu_count()} logical CPUs, "
              f"{platform.machine()}, Python {platform.python_version()}",
              "loadavg_1m_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)], "rows": rows}
    print(table(rows))
    print(f"load average (1 min) before/after: {report['loadavg_1m_before_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
