"""Load-shedding and stalled clients, over real HTTP: how fast excess requests are refused,
whether health stays answerable, and what stalled connections cost other clients.

One embedded Ray instance, the app as in serve/config.yaml, behind its HAProxy front as
``tinycompress serve`` runs it (``--front python``: through Serve's own proxy instead). Clients come from distinct loopback
addresses (127.0.1.x, 127.0.2.x, ...), as distinct machines would, so the per-client cap only
applies where a case says so. Cases, in order:

1. quiet: one steady client (sequential ``/compress`` of distinct intents, greedy, and
   ``/healthz``) for ``--seconds``: its latency percentiles;
2. overload: ``--burst`` clients send one ``/compress`` each at the same moment while a prober
   calls ``/healthz`` every 10 ms: latency of the 429/503 answers and of ``/healthz``, each from
   the moment its bytes were written (raw sockets, connections opened beforehand);
3. stalled, one address: ``--stalled`` connections from one address send headers and half a
   body, then nothing, while the steady client runs again;
4. stalled, many addresses: the same from ``--stalled`` distinct addresses.

    python benchmarks/bench_serve_load.py --out docs/bench/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import intents, quantile, save, start, stop_all  # noqa: E402


def address(i: int, block: int) -> str:
    """The i-th loopback address of a block (127.<block>.x.y)."""
    return f"127.{block}.{i // 250}.{i % 250 + 1}"


def client(base: str, source: str, timeout: float = 60) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=timeout, transport=httpx.AsyncHTTPTransport(local_address=source))


async def steady(base: str, texts: list[str], seconds: float) -> dict:
    """One client, one request at a time: /compress and /healthz alternately."""
    lat = {"compress": [], "healthz": []}
    codes: dict[str, int] = {}
    end = time.monotonic() + seconds
    async with client(base, "127.0.0.9") as c:
        while time.monotonic() < end and texts:
            for kind in ("compress", "healthz"):
                t0 = time.perf_counter()
                try:
                    r = await (c.post("/compress", json={"intent": texts.pop()}) if kind == "compress"
                               else c.get("/healthz"))
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                lat[kind].append((time.perf_counter() - t0) * 1000)
                codes[key] = codes.get(key, 0) + 1
    return {"codes": codes, **{f"{k}_{q}_ms": quantile(v, p) for k, v in lat.items()
                               for q, p in (("p50", 0.5), ("p99", 0.99))}}


async def read_answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 answer (status line, headers, a Content-Length body); its status."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n").encode() + data


async def overload(base: str, texts: list[str]) -> dict:
    """Every client's connection is opened first; then each request is written at once and timed
    from its write to its answer, on raw sockets, so the load client's own Python (an httpx
    request costs it milliseconds, 400 of them over a second) does not count. A prober sends
    ``/healthz`` every 10 ms on a kept-alive connection the same way."""
    host, port = base.removeprefix("http://").split(":")
    conns = [await asyncio.open_connection(host, int(port), local_addr=(address(i, 1), 0)) for i in range(len(texts))]
    health: list[float] = []
    stop = asyncio.Event()

    async def probe():
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.8", 0))
        while not stop.is_set():
            t0 = time.perf_counter()
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n")
            status = await read_answer(reader)
            health.append((time.perf_counter() - t0) * 1000 if status == 200 else float("inf"))
            await asyncio.sleep(0.01)
        writer.close()

    async def answer(reader: asyncio.StreamReader, sent: float):
        try:
            key = await asyncio.wait_for(read_answer(reader), 120)
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, IndexError) as exc:
            key = type(exc).__name__
        return key, (time.perf_counter() - sent) * 1000

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    waits = []
    for (reader, writer), text in zip(conns, texts):
        writer.write(post("/compress", {"intent": text}))
        waits.append(answer(reader, time.perf_counter()))
    answers = await asyncio.gather(*waits)
    seconds = time.perf_counter() - t0
    stop.set()
    await prober
    for _, writer in conns:
        writer.close()
    by: dict[str, list[float]] = {}
    for key, ms in answers:
        by.setdefault(str(key), []).append(ms)
    return {"clients": len(texts), "seconds": round(seconds, 2),
            "status": {k: {"n": len(v), "p50_ms": quantile(v, 0.5), "p99_ms": quantile(v, 0.99),
                           "max_ms": round(max(v), 1)} for k, v in sorted(by.items())},
            "healthz": {"n": len(health), "p50_ms": quantile(health, 0.5), "p99_ms": quantile(health, 0.99)}}


async def stalled(base: str, sources: list[str], texts: list[str], seconds: float) -> dict:
    """``len(sources)`` connections (one per source) that send headers and half a body."""
    host, port = base.removeprefix("http://").split(":")
    body = b'{"intent": "check contract rule 3 during the build, please, and nothing else at all"}'
    head = (f"POST /compress HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    streams = []
    for source in sources:
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
        writer.write(head + body[: len(body) // 2])
        streams.append((reader, writer))
    opened = time.monotonic()
    others = await steady(base, texts, seconds)

    async def status(reader: asyncio.StreamReader) -> str:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            return line.split()[1].decode() if line else "closed"
        except (asyncio.TimeoutError, IndexError, ConnectionError):
            return "no answer"

    replies = await asyncio.gather(*(status(r) for r, _ in streams))
    for _, writer in streams:
        writer.close()
    counts: dict[str, int] = {}
    for code in replies:
        counts[code] = counts.get(code, 0) + 1
    return {"connections": len(sources), "seconds_held": round(time.monotonic() - opened, 1),
            "stalled_got": counts, "other_client": others}


async def run(base: str, args) -> dict:
    texts = intents(args.burst + 4 * 400, seed=41)
    pool = texts[args.burst:]
    out = {"quiet": await steady(base, pool[:400], args.seconds)}
    out["overload"] = await overload(base, texts[:args.burst])
    await asyncio.sleep(2)
    out["quiet again"] = await steady(base, pool[400:800], args.seconds)
    out["stalled, one address"] = await stalled(base, ["127.0.0.2"] * args.stalled, pool[800:1200], args.seconds)
    await asyncio.sleep(2)
    out["stalled, many addresses"] = await stalled(base, [address(i, 2) for i in range(args.stalled)],
                                                   pool[1200:1600], args.seconds)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--burst", type=int, default=400)
    p.add_argument("--stalled", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=8.0, help="how long the steady client runs per case")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--front", choices=("haproxy", "python"), default="haproxy",
                   help="through the HAProxy front (as tinycompress serve runs) or Serve's own proxy")
    p.add_argument("--out")
    args = p.parse_args()
    load_before = os.getloadavg()
    bases = start(args.num_cpus, {"batched": "/"})
    base = bases["batched"] if args.front == "haproxy" else bases["batched via serve proxy"]
    try:
        report = asyncio.run(run(base, args))
    finally:
        stop_all()
    report = {"command": "python " + " ".join(sys.argv),
              "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)], **report}
    print(json.dumps(report, indent=2))
    save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
