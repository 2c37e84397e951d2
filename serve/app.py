"""The Ray Serve application: a FastAPI ingress composed with one deployment per model.

    HTTP -> Ingress (FastAPI: checks input, /expand, /validate)
              |-- handle -> Compressor (policy; @serve.batch of intents)
              `-- handle -> Encoder    (TinyVAE; @serve.batch of crops)

The model deployments are thin shells over :class:`serve.compressor.Compressor` and
:class:`serve.encoder.ImageCodec`. Their batch size and wait come from ``user_config``
(``serve/config.yaml``), so a running app can be re-batched by ``serve deploy``. A model whose
queue is full answers 429 and one that does not answer in time 503, both with Retry-After.
Three ways to run it: ``tinycompress serve`` (serve/cli.py), ``serve run serve/config.yaml``
and ``serve deploy serve/config.yaml`` (``build_app`` is the config's import path;
``compose`` also takes the per-deployment options, for the CLI, tests and benchmark).

No ``from __future__ import annotations`` here: the replica rebuilds the FastAPI routes from
the pickled class, where string annotations no longer resolve.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve import web
from serve.compressor import DEFAULT_COMPRESSOR, CompressorConfig
from serve.encoder import DEFAULT_ENCODER, EncoderConfig, ImageError, read_image
from serve.schemas import (MAX_IMAGE_BYTES, CompressBatchRequest, CompressRequest, DecodeRequest, EncodeRequest,
                           ExpandRequest, SimilarityRequest, ValidateRequest)

# replicas sleep instead of spinning idle OpenMP threads on a shared CPU (docs/VAE.md)
MODEL_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}}
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


class _Batched:
    """Shared shell behaviour: one worker thread for the model, batch size from user_config."""

    batch_method = ""

    def _start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)  # the event loop keeps queueing meanwhile

    def reconfigure(self, user_config: dict) -> None:
        method = getattr(self, self.batch_method)
        method.set_max_batch_size(int(user_config.get("max_batch_size", 16)))
        method.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.002)))

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def ping(self) -> bool:
        return True


@serve.deployment(name="Compressor", ray_actor_options={"num_cpus": 0.5, "runtime_env": MODEL_ENV},
                  max_ongoing_requests=32, max_queued_requests=128,
                  user_config={"max_batch_size": 16, "batch_wait_timeout_s": 0.002})
class CompressorDeployment(_Batched):
    batch_method = "compress"

    def __init__(self, config: dict | None = None):
        from serve.compressor import Compressor

        self.model = Compressor(CompressorConfig(**(config or {})))
        self._start()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def compress(self, requests: list[tuple[str, int]]) -> list[dict]:
        """Each request is (intent, k); intents that share k decode together."""
        out: list[dict | None] = [None] * len(requests)
        for k in sorted({k for _, k in requests}):
            idx = [i for i, (_, kk) in enumerate(requests) if kk == k]
            answers = await self._run(self.model.compress, [requests[i][0] for i in idx], k)
            for i, answer in zip(idx, answers):
                out[i] = {**answer.to_dict(), "batch": len(idx)}  # intents decoded together
        return out

    def info(self) -> dict:
        return {**self.model.version, "max_candidates": self.model.cfg.max_candidates,
                "temperature": self.model.cfg.temperature}


@serve.deployment(name="Encoder", ray_actor_options={"num_cpus": 0.25, "runtime_env": MODEL_ENV},
                  max_ongoing_requests=64, max_queued_requests=256,
                  user_config={"max_batch_size": 32, "batch_wait_timeout_s": 0.001})
class EncoderDeployment(_Batched):
    batch_method = "encode"

    def __init__(self, config: dict | None = None):
        from serve.encoder import ImageCodec

        self.codec = ImageCodec(EncoderConfig(**(config or {})))
        self._start()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def encode(self, requests: list[tuple[np.ndarray, str]]) -> list[dict]:
        """Each request is one (64, 64, 3) uint8 crop and its entity id."""
        return await self._run(self.codec.encode, [p for p, _ in requests], [e for _, e in requests])

    async def decode(self, latent: list[float]) -> bytes:
        return (await self._run(self.codec.decode, [latent]))[0]

    def info(self) -> dict:
        return self.codec.version


app = FastAPI(title="TinyCompress", version=web.package_version(), description=web.DESCRIPTION)
web.install_guards(app)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.1},
                  max_ongoing_requests=256, max_queued_requests=512,
                  backpressure_config={"status_code": 429, "retry_after_s": 1})
@serve.ingress(app)
class Ingress:
    def __init__(self, compressor, encoder, checkpoint: str = str(DEFAULT_COMPRESSOR), timeout_s: float = 30.0):
        from serve.compressor import ProgramTools

        self.compressor, self.encoder = compressor, encoder
        self.tools = ProgramTools(checkpoint)
        self.timeout_s = timeout_s
        self._latent_dim: int | None = None

    async def _call(self, response, what: str):
        """Await a model; a full queue is 429, no answer in time 503 (both with Retry-After)."""
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except BackPressureError:
            raise web.Overloaded(429, f"the {what} queue is full; retry shortly") from None
        except asyncio.TimeoutError:
            raise web.Overloaded(503, f"the {what} did not answer within {self.timeout_s:g} s") from None
        except DeploymentUnavailableError:
            raise web.Overloaded(503, f"the {what} is not available") from None

    # ---------------------------------------------------------------- compressor

    @app.post("/compress", summary="Compress one intent into a validated IR program")
    async def compress(self, body: CompressRequest) -> dict:
        k = body.max_candidates or 0
        return await self._call(self.compressor.compress.remote((body.intent, k)), "compressor")

    @app.post("/compress/batch", summary="Compress up to 32 intents (batched on the model)")
    async def compress_batch(self, body: CompressBatchRequest) -> dict:
        k = body.max_candidates or 0
        calls = [self._call(self.compressor.compress.remote((text, k)), "compressor") for text in body.intents]
        return {"results": list(await asyncio.gather(*calls))}

    @app.post("/expand", summary="Expand a program into its JobSpec (422 when it is invalid)")
    async def expand(self, body: ExpandRequest) -> dict:
        report = self.tools.expand(body.program)
        if not report["valid"]:
            raise web.BadInput(422, "the program is invalid: " + "; ".join(
                f"{e['code']}: {e['message']}" for e in report["errors"]), errors=report["errors"])
        return {"jobspec": report["expansion"], "hash": report["hash"], "canonical": report["canonical"],
                "minimal": report["minimal"], "warnings": report["warnings"]}

    @app.post("/validate", summary="The validator's report (levels 1-5; 6 with a reference)")
    async def validate(self, body: ValidateRequest) -> dict:
        return self.tools.validate(body.program, body.intent, body.reference)

    # ---------------------------------------------------------------- encoder

    @app.post("/encode", summary="Encode 64x64 RGB images to trusted latents",
              openapi_extra=web.ENCODE_OPENAPI)
    async def encode(self, request: Request, entity_id: str = Query("", max_length=128),
                     codes: bool = Query(True)) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if kind in RAW_IMAGE_TYPES:
            if len(body) > MAX_IMAGE_BYTES:
                raise web.BadInput(413, f"image is {len(body)} bytes; the limit is {MAX_IMAGE_BYTES}")
            results = await self._encode([body], [entity_id])
            return self._trim(results[0], codes)
        if kind != "application/json":
            raise web.BadInput(415, f"send a PNG/JPEG body (image/png, image/jpeg) or JSON, not {kind or 'no type'!r}")
        req = web.parse(EncodeRequest, body)
        if req.image is not None:
            return self._trim((await self._encode([req.image], [req.entity_id]))[0], req.codes)
        ids = req.entity_ids or [req.entity_id] * len(req.images)
        return {"results": [self._trim(r, req.codes) for r in await self._encode(req.images, ids)]}

    async def _encode(self, images: list[bytes], entity_ids: list[str]) -> list[dict]:
        pixels = []
        for i, data in enumerate(images):
            try:
                pixels.append(read_image(data))
            except ImageError as exc:
                where = f"image {i}: " if len(images) > 1 else ""
                raise web.BadInput(422, where + str(exc)) from None
        calls = [self._call(self.encoder.encode.remote((p, e)), "encoder") for p, e in zip(pixels, entity_ids)]
        return list(await asyncio.gather(*calls))

    @staticmethod
    def _trim(result: dict, codes: bool) -> dict:
        return result if codes else {**result, "codes": None}

    @app.post("/decode", summary="Decode a latent to a 64x64 PNG", response_class=Response,
              responses={200: {"content": {"image/png": {}}}})
    async def decode(self, body: DecodeRequest) -> Response:
        dim = await self._dim()
        if len(body.latent) != dim:
            raise web.BadInput(422, f"latent has {len(body.latent)} values; this encoder's latents have {dim}")
        png = await self._call(self.encoder.decode.remote(body.latent), "encoder")
        return Response(content=png, media_type="image/png")

    @app.post("/similarity", summary="Cosine similarity of two images' latents")
    async def similarity(self, body: SimilarityRequest) -> dict:
        a, b = await self._encode([body.image_a, body.image_b], ["a", "b"])
        za, zb = np.asarray(a["latent"]), np.asarray(b["latent"])
        cosine = float(za @ zb / max(np.linalg.norm(za) * np.linalg.norm(zb), 1e-12))
        return {"cosine": round(cosine, 6), "trust_a": a["trust"]["trust"], "trust_b": b["trust"]["trust"]}

    async def _dim(self) -> int:
        if self._latent_dim is None:
            self._latent_dim = int((await self._call(self.encoder.info.remote(), "encoder"))["latent_dim"])
        return self._latent_dim

    # ---------------------------------------------------------------- service

    @app.get("/healthz", summary="200 when both models answer, 503 otherwise")
    async def healthz(self) -> dict:
        try:
            await asyncio.gather(self._call(self.compressor.ping.remote(), "compressor"),
                                 self._call(self.encoder.ping.remote(), "encoder"))
        except web.Overloaded as exc:
            raise web.Overloaded(503, f"unhealthy: {exc.reason}") from None
        return {"status": "ok"}

    @app.get("/version", summary="Model versions and limits")
    async def version(self) -> dict:
        comp, enc = await asyncio.gather(self._call(self.compressor.info.remote(), "compressor"),
                                         self._call(self.encoder.info.remote(), "encoder"))
        return {"tinycompress": web.package_version(), "compressor": comp, "encoder": enc,
                "limits": web.limits()}


def build_app(args: dict):
    """The app builder named in serve/config.yaml (``serve run``/``serve deploy`` pass its args;
    they apply the config's deployment settings themselves)."""
    return compose(args)


def compose(args: dict | None = None, options: dict[str, dict] | None = None):
    """The application. ``args``: ``compressor``/``encoder`` config dicts (checkpoint, ...) and
    ``timeout_s``; ``options``: per-deployment ``.options()`` by name (the CLI's config file)."""
    args, options = dict(args or {}), options or {}
    unknown = set(args) - {"compressor", "encoder", "timeout_s"}
    if unknown:
        raise ValueError(f"unknown app args {sorted(unknown)}; expected compressor, encoder, timeout_s")
    comp_cfg, enc_cfg = dict(args.get("compressor") or {}), dict(args.get("encoder") or {})
    CompressorConfig(**comp_cfg), EncoderConfig(**enc_cfg)  # fail here, not in a replica
    compressor = CompressorDeployment.options(**options.get("Compressor", {})).bind(comp_cfg)
    encoder = EncoderDeployment.options(**options.get("Encoder", {})).bind(enc_cfg)
    checkpoint = comp_cfg.get("checkpoint", str(DEFAULT_COMPRESSOR))
    return Ingress.options(**options.get("Ingress", {})).bind(
        compressor, encoder, checkpoint, float(args.get("timeout_s", 30.0)))

