"""The Ray Serve application: one deployment holds the HTTP API and both models.

    HTTP -> Serve proxy -> TinyCompress replica
                             FastAPI routes (serve.api; bodies and guards: serve.web)
                             |-- @serve.batch -> Compressor  (its own worker thread)
                             `-- @serve.batch -> ImageCodec  (its own worker thread)

One deployment, because every Serve hop (proxy -> replica, replica -> replica) costs
milliseconds of a small CPU, and because requests that reach the model process one at a time
through another hop never queue up into a batch (docs/BENCHMARKS.md measures both). The models
run on worker threads, so the replica's event loop keeps taking requests, and so filling the
next batch, while a batch decodes; the compressor and the encoder each have their own thread.

Load (docs/SERVE.md): Serve's ``max_ongoing_requests`` / ``max_queued_requests`` with a 429 +
Retry-After backpressure answer in front; inside, one admission :class:`serve.web.Gate` per
model refuses at once what would only wait, and :class:`serve.web.BodyGuard` cuts slow bodies
and caps one client's requests in flight. ``/healthz`` and ``/readyz`` touch no model.

Batch size and wait come from ``user_config`` (``serve/config.yaml``), so ``serve deploy`` can
re-batch a running app. Three ways to run it: ``tinycompress serve`` (serve/cli.py), ``serve run
serve/config.yaml`` and ``serve deploy serve/config.yaml`` (``build_app`` is the config's import
path; ``compose`` also takes the deployment options, for the CLI, tests and benchmarks).
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from serve import web
from serve.compressor import CompressorConfig
from serve.encoder import EncoderConfig
from serve.front import FrontConfig

# the replica sleeps instead of spinning idle OpenMP threads on a shared CPU (docs/VAE.md)
MODEL_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}}
# a decode thread runs Python between small torch ops and so holds the GIL most of the time;
# the event loop should not wait the default 5 ms for it at every step of every request (the
# replica still shares one GIL between the two: docs/BENCHMARKS.md, serving, second run)
GIL_SWITCH_S = 0.0005
BATCHING = {"compressor": {"max_batch_size": 16, "batch_wait_timeout_s": 0.0},
            "encoder": {"max_batch_size": 32, "batch_wait_timeout_s": 0.001}}
APP_ARGS = ("compressor", "encoder", "limits", "timeout_s", "front")


@serve.deployment(name="TinyCompress", ray_actor_options={"num_cpus": 1, "runtime_env": MODEL_ENV},
                  max_ongoing_requests=1024, max_queued_requests=1024,
                  backpressure_config={"status_code": 429, "retry_after_s": web.RETRY_AFTER_S},
                  user_config=BATCHING)
@serve.ingress()
class Service:
    """The replica: models, worker threads, admission gates; routes come from ``serve.api``."""

    def __init__(self, compressor: dict | None = None, encoder: dict | None = None,
                 limits: dict | None = None, timeout_s: float = 30.0):
        from serve.compressor import Compressor
        from serve.encoder import ImageCodec

        self.compressor = Compressor(CompressorConfig(**(compressor or {})))
        self.codec = ImageCodec(EncoderConfig(**(encoder or {})))
        self.tools = self.compressor.tools  # /expand and /validate: no model, answered inline
        self.guards = web.Guards(**(limits or {}))
        self.gates = {"compressor": web.Gate("compressor", self.guards.compressor_queue),
                      "encoder": web.Gate("encoder", self.guards.encoder_queue)}
        self.timeout_s = timeout_s
        self._threads = {name: ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) for name in self.gates}
        sys.setswitchinterval(GIL_SWITCH_S)
        self.compressor.compress(["warm up: check contract rule 3 during the build"], [2])
        self.compressor._cache.clear()

    def __serve_build_asgi_app__(self):
        from serve.api import build_api

        return build_api(self)

    def reconfigure(self, user_config: dict) -> None:
        for name, method in (("compressor", self._compress_batch), ("encoder", self._encode_batch)):
            cfg = {**BATCHING[name], **(user_config.get(name) or {})}
            method.set_max_batch_size(int(cfg["max_batch_size"]))
            method.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))

    # ------------------------------------------------------------------ what the routes call

    async def compress(self, intents: list[str], k: int | None) -> list[dict]:
        counts = self.compressor.count(intents)  # counted once: the answers reuse them
        long = [(i, n) for i, n in enumerate(counts) if n > self.compressor.max_intent_tokens]
        if long:
            where = "the intent is" if len(intents) == 1 else f"intent {long[0][0]} is"
            raise web.BadInput(422, f"{where} {long[0][1]} tokens; the compressor reads at most "
                                    f"{self.compressor.max_intent_tokens} (shorten it or split it into several)")
        with self.gates["compressor"].admit(len(intents)):
            return await self._within(asyncio.gather(*(self._compress_batch((t, k or 0, n))
                                                       for t, n in zip(intents, counts))), "compressor")

    async def encode(self, pixels: list, entity_ids: list[str]) -> list[dict]:
        with self.gates["encoder"].admit(len(pixels)):
            return await self._within(asyncio.gather(*(self._encode_batch(pe) for pe in zip(pixels, entity_ids))),
                                      "encoder")

    async def decode(self, latent: list[float]) -> bytes:
        with self.gates["encoder"].admit():
            return (await self._within(self._run("encoder", self.codec.decode, [latent]), "encoder"))[0]

    def info(self) -> dict:
        return {"compressor": {**self.compressor.version, "max_candidates": self.compressor.cfg.max_candidates,
                               "temperature": self.compressor.cfg.temperature},
                "encoder": self.codec.version}

    def queues(self) -> dict:
        return {name: {"in_flight": g.inside, "limit": g.limit} for name, g in self.gates.items()}

    # ------------------------------------------------------------------ batching

    @serve.batch(**BATCHING["compressor"])
    async def _compress_batch(self, requests: list[tuple[str, int, int]]) -> list[dict]:
        """Each request is (intent, k, intent tokens); the whole batch decodes in one pass,
        whatever each k."""
        answers = await self._run("compressor", self.compressor.compress, [t for t, _, _ in requests],
                                  [k for _, k, _ in requests], [n for _, _, n in requests])
        return [{**a.to_dict(), "batch": len(requests)} for a in answers]

    @serve.batch(**BATCHING["encoder"])
    async def _encode_batch(self, requests: list[tuple]) -> list[dict]:
        """Each request is one (64, 64, 3) uint8 crop and its entity id."""
        return await self._run("encoder", self.codec.encode, [p for p, _ in requests], [e for _, e in requests])

    async def _run(self, model: str, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._threads[model], fn, *args)

    async def _within(self, call, what: str):
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except asyncio.TimeoutError:
            raise web.Overloaded(503, f"the {what} did not answer within {self.timeout_s:g} s") from None


def build_app(args: dict):
    """The app builder named in serve/config.yaml (``serve run``/``serve deploy`` pass its args;
    they apply the config's deployment settings themselves)."""
    return compose(args)


def compose(args: dict | None = None, options: dict[str, dict] | None = None):
    """The application. ``args``: ``compressor``/``encoder`` config dicts (checkpoint, ...),
    ``limits`` (:class:`serve.web.Guards`) and ``timeout_s``; ``options``: the deployment's
    ``.options()`` under its name (the CLI's config file)."""
    args, options = dict(args or {}), options or {}
    comp, enc, lim = check_args(args)  # fail here, not in a replica
    unknown = set(options) - {Service.name}
    if unknown:
        raise ValueError(f"unknown deployments {sorted(unknown)}; the app has one, {Service.name}")
    return Service.options(**options.get(Service.name, {})).bind(comp, enc, lim, float(args.get("timeout_s", 30.0)))


SECTIONS = {"compressor": CompressorConfig, "encoder": EncoderConfig, "limits": web.Guards, "front": FrontConfig}


def check_args(args: dict) -> tuple[dict, dict, dict]:
    """The compressor, encoder and limits sections of the app args, every section checked by its
    config class (``front`` is read by ``tinycompress serve``, not the replica); a ValueError
    naming the key for anything unknown or out of range."""
    unknown = set(args) - set(APP_ARGS)
    if unknown:
        raise ValueError(f"unknown app arg {sorted(unknown)[0]}; the app takes {', '.join(APP_ARGS)}")
    timeout = args.get("timeout_s", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout!r}")
    from learner.config import build_section  # the run configs' strict loader: keys and types named

    out = []
    for name, cls in SECTIONS.items():
        given = args.get(name) or {}
        try:
            build_section(cls, given, name)
        except TypeError as exc:  # a wrong type, named with its dotted key
            raise ValueError(str(exc)) from None
        except ValueError as exc:  # an unknown key (named), or a value the section refuses
            raise ValueError(str(exc) if str(exc).startswith("unknown key") else f"{name}: {exc}") from None
        out.append(dict(given))
    return out[0], out[1], out[2]  # the front's section is the CLI's
