"""``tinycompress serve``: the HTTP service on an embedded Ray instance (or ``RAY_ADDRESS``).

Reads the deployment settings (replicas, autoscaling, queues, batching) from
``serve/config.yaml``, so the CLI, ``serve run`` and ``serve deploy`` run the same app.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import yaml

from validator_actors.cli_args import count

CONFIG = Path(__file__).resolve().parent / "config.yaml"
APP_NAME = "tinycompress"


def load_config(path: str | Path = CONFIG) -> dict:
    """The one application of a Serve config file: its args and per-deployment options."""
    raw = yaml.safe_load(Path(path).read_text())
    apps = raw.get("applications") or []
    if len(apps) != 1:
        raise ValueError(f"{path} must hold exactly one application, found {len(apps)}")
    app = apps[0]
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    return {"args": app.get("args") or {}, "options": options, "http": raw.get("http_options") or {}}


def app_config(config: str | Path = CONFIG, compressor: str | None = None, encoder: str | None = None,
               overrides: tuple[str, ...] = ()) -> dict:
    """The config file's app with the command line's checkpoints and ``--set key.sub=value``
    overrides, every setting checked: a UsageError (one line, exit 2) before Ray starts."""
    from learner.config import apply_overrides
    from serve.app import check_args
    from validator_actors.cli_args import UsageError, need_checkpoint, need_dir, yaml_error

    try:
        cfg = load_config(config)
    except FileNotFoundError:
        raise UsageError(f"--config {config}: no such file") from None
    except yaml.YAMLError as exc:
        raise UsageError(yaml_error(config, exc)) from None
    except (ValueError, AttributeError) as exc:
        raise UsageError(f"--config {config}: not a Serve config with one application ({exc})") from None
    args = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg["args"].items()}
    if compressor:
        args.setdefault("compressor", {})["checkpoint"] = str(need_checkpoint(compressor, "--compressor").resolve())
    if encoder:
        folder = need_dir(encoder, "--encoder", ("config.json", "model.safetensors"),
                          "a folder written by `tinycompress vae train`, e.g. serve/assets/tinyvae")
        args.setdefault("encoder", {})["checkpoint"] = str(folder.resolve())
    try:
        args = apply_overrides(args, overrides)
        check_args(args)
    except ValueError as exc:
        raise UsageError(f"--set: {exc}" if overrides else f"--config {config}: {exc}") from None
    return {**cfg, "args": args}


FRONTS = ("haproxy", "python")
_running: dict = {}  # the front and its keeper while the service runs


def start(compressor: str | None = None, encoder: str | None = None, host: str | None = None,
          port: int | None = None, config: str | Path = CONFIG, num_cpus: int | None = None,
          overrides: tuple[str, ...] = (), front: str = "haproxy") -> str:
    """Start Ray (if needed) and the app; return its base URL. ``stop()`` undoes it. ``host`` and
    ``port`` default to the config file's ``http_options``. ``front``: ``haproxy`` (HAProxy on the
    public port before the replicas' own HTTP servers, :mod:`serve.front`) or ``python`` (Serve's
    own proxy on it)."""
    import ray
    from ray import serve

    from cluster.runtime import init_ray
    from serve.app import compose

    if front not in FRONTS:
        raise ValueError(f"front must be one of {', '.join(FRONTS)}, got {front!r}")
    cfg = app_config(config, compressor, encoder, overrides)
    args = cfg["args"]
    if front == "haproxy":  # read when Ray starts its processes (docs/SERVE.md, "The front")
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # each replica serves HTTP on a port of its own
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")  # user code on the replica's own loop
    if not ray.is_initialized():
        init_ray(num_cpus, log_to_driver=False)
    host, port = host or cfg["http"].get("host", "127.0.0.1"), port or cfg["http"].get("port", 8000)
    serve_port = free_port(host) if front == "haproxy" else port
    serve.start(http_options={**cfg["http"], "host": host, "port": serve_port})
    serve.run(compose(args, cfg["options"]), name=APP_NAME, route_prefix="/", blocking=False)
    if front == "haproxy":
        from serve.front import Front, FrontConfig, FrontKeeper
        from serve.web import Guards

        door = Front(host, port, Guards(**(args.get("limits") or {})), float(args.get("timeout_s", 30.0)),
                     FrontConfig(**(args.get("front") or {})))
        keeper = FrontKeeper(door, APP_NAME, loopback=host in ("127.0.0.1", "localhost", "::1"))
        keeper.sync()
        door.wait_routed()
        keeper.start()
        _running.update(front=door, keeper=keeper)
    return f"http://{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop() -> None:
    import ray
    from ray import serve

    if _running:
        _running.pop("keeper").stop()
        _running.pop("front").stop()
    serve.shutdown()
    ray.shutdown()


def _serve(args: argparse.Namespace) -> int:
    url = start(args.compressor, args.encoder, args.host, args.port, args.config, args.num_cpus, tuple(args.set),
                args.front)
    print(f"[serve] listening on {url} (OpenAPI at {url}/docs); Ctrl-C stops", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):  # wakes up regularly so that the signal handler gets to run
        pass
    print("[serve] stopping", file=sys.stderr, flush=True)
    stop()
    return 0


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    value = count(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the compressor and the TinyVAE encoder over HTTP (Ray Serve)")
    p.add_argument("--compressor", help="policy checkpoint folder (default: serve/assets/compressor_10m_grpo)")
    p.add_argument("--encoder", help="TinyVAE checkpoint folder (default: serve/assets/tinyvae)")
    p.add_argument("--host", default=None, help="default: the config file's http_options.host (127.0.0.1)")
    p.add_argument("--port", type=port_number, default=None, help="default: the config file's http_options.port (8000)")
    p.add_argument("--config", default=str(CONFIG), help="Serve config file with the deployment settings")
    p.add_argument("--num-cpus", type=count(1), default=None, help="CPUs of the embedded Ray instance (default: all)")
    p.add_argument("--front", choices=FRONTS, default="haproxy",
                   help="what listens on the port: HAProxy before the replicas' own HTTP servers (default; "
                        "sheds load and slow clients in C) or Serve's Python proxy")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an app setting of the config, e.g. compressor.max_candidates=4, "
                        "limits.compressor_queue=32, timeout_s=10 (repeatable)")
    p.set_defaults(func=_serve)
