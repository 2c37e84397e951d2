"""The HTTP routes, built inside the replica around its :class:`serve.app.Service`.

Every JSON body is read by ``serve.web.load_json`` (depth, size and number limits) through
the route class that ``serve.web.install_guards`` sets, then checked by the strict models of
``serve.schemas``. ``/expand``, ``/validate``, ``/healthz``, ``/readyz`` and ``/version`` are
answered on the event loop without a model; the model routes go through the service's
admission gates and batch queues.
"""

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from serve import responses as out
from serve import web
from serve.encoder import ImageError, read_image
from serve.schemas import (MAX_IMAGE_BYTES, CompressBatchRequest, CompressRequest, DecodeRequest, EncodeRequest,
                           ExpandRequest, SimilarityRequest, ValidateRequest)

RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


def build_api(service) -> FastAPI:
    """The FastAPI app of one replica; ``service`` is the replica's :class:`serve.app.Service`."""
    app = FastAPI(title="TinyCompress", version=web.package_version(), description=web.DESCRIPTION,
                  docs_url=None, redoc_url=None)
    web.install_guards(app, service.guards)
    _compressor_routes(app, service)
    _encoder_routes(app, service)
    _service_routes(app, service)
    _swagger_ui(app)
    return app


# what each kind of route can answer besides 200 (serve.web lists why)
GUARDED = (408, 413, 429)  # every route behind the body guard
JSON_BODY = (400, 415, 422) + GUARDED
MODEL = JSON_BODY + (503,)


def _compressor_routes(app: FastAPI, service) -> None:
    tools = service.tools

    @app.post("/compress", summary="Compress one intent into a validated IR program",
              response_model=None, responses=web.answers(out.Compression, *MODEL))
    async def compress(body: CompressRequest) -> Response:
        return web.json_response((await service.compress([body.intent], body.max_candidates))[0])

    @app.post("/compress/batch", summary="Compress up to 32 intents (batched on the model)",
              response_model=None, responses=web.answers(out.CompressBatch, *MODEL))
    async def compress_batch(body: CompressBatchRequest) -> Response:
        return web.json_response({"results": await service.compress(body.intents, body.max_candidates)})

    @app.post("/expand", summary="Expand a program into its JobSpec (422 when it is invalid)",
              response_model=None, responses=web.answers(out.Expansion, *JSON_BODY))
    async def expand(body: ExpandRequest) -> dict:
        report = tools.expand(body.program)
        if not report["valid"]:
            raise web.BadInput(422, "the program is invalid: " + "; ".join(
                f"{e['code']}: {e['message']}" for e in report["errors"]), errors=report["errors"])
        return {"jobspec": report["expansion"], "hash": report["hash"], "canonical": report["canonical"],
                "minimal": report["minimal"], "warnings": report["warnings"]}

    @app.post("/validate", summary="The validator's report (levels 1-5; 6 with a reference)",
              response_model=None, responses=web.answers(out.Validation, *JSON_BODY))
    async def validate(body: ValidateRequest) -> dict:
        return tools.validate(body.program, body.intent, body.reference)


def _encoder_routes(app: FastAPI, service) -> None:
    async def encode_images(images: list[bytes], entity_ids: list[str]) -> list[dict]:
        pixels = []
        for i, data in enumerate(images):
            try:
                pixels.append(read_image(data))
            except ImageError as exc:
                where = f"image {i}: " if len(images) > 1 else ""
                raise web.BadInput(422, where + str(exc)) from None
        return await service.encode(pixels, entity_ids)

    def trim(result: dict, codes: bool) -> dict:
        return result if codes else {**result, "codes": None}

    @app.post("/encode", summary="Encode 64x64 RGB images to trusted latents", openapi_extra=web.ENCODE_OPENAPI,
              response_model=None, responses=web.answers(out.Encoding | out.EncodingBatch, *MODEL))
    async def encode(request: Request, entity_id: str = Query("", max_length=128),
                     codes: bool = Query(True)) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if kind in RAW_IMAGE_TYPES:
            if len(body) > MAX_IMAGE_BYTES:
                raise web.BadInput(413, f"image is {len(body)} bytes; the limit is {MAX_IMAGE_BYTES}")
            return trim((await encode_images([body], [entity_id]))[0], codes)
        if kind != "application/json":
            raise web.BadInput(415, f"send a PNG/JPEG body (image/png, image/jpeg) or JSON, not {kind or 'no type'!r}")
        req = web.parse(EncodeRequest, body)
        if req.image is not None:
            return trim((await encode_images([req.image], [req.entity_id]))[0], req.codes)
        ids = req.entity_ids or [req.entity_id] * len(req.images)
        return {"results": [trim(r, req.codes) for r in await encode_images(req.images, ids)]}

    @app.post("/decode", summary="Decode a latent to a 64x64 PNG", response_class=Response,
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the decoded crop, a PNG file"},
                         **web.answers(None, *MODEL)})
    async def decode(body: DecodeRequest) -> Response:
        dim = service.codec.latent_dim
        if len(body.latent) != dim:
            raise web.BadInput(422, f"latent has {len(body.latent)} values; this encoder's latents have {dim}")
        return Response(content=await service.decode(body.latent), media_type="image/png")

    @app.post("/similarity", summary="Cosine similarity of two images' latents",
              response_model=None, responses=web.answers(out.Similarity, *MODEL))
    async def similarity(body: SimilarityRequest) -> dict:
        a, b = await encode_images([body.image_a, body.image_b], ["a", "b"])
        za, zb = np.asarray(a["latent"]), np.asarray(b["latent"])
        cosine = float(za @ zb / max(np.linalg.norm(za) * np.linalg.norm(zb), 1e-12))
        return {"cosine": round(cosine, 6), "trust_a": a["trust"]["trust"], "trust_b": b["trust"]["trust"]}


def _service_routes(app: FastAPI, service) -> None:
    @app.get("/healthz", summary="200 while the replica answers (touches no model)",
             response_model=None, responses=web.answers(out.Health))
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 when both models can take a request now, else 503 (touches no model)",
             response_model=None, responses=web.answers(out.Ready, 503))
    async def readyz() -> dict:
        queues = service.queues()
        full = [name for name, gate in service.gates.items() if gate.full]
        if full:
            raise web.Overloaded(503, f"not ready: the {' and '.join(full)} queue is full")
        return {"status": "ready", "queues": queues}

    @app.get("/version", summary="Model versions and limits",
             response_model=None, responses=web.answers(out.Version, *GUARDED))
    async def version() -> dict:
        return {"tinycompress": web.package_version(), **service.info(), "limits": web.limits(),
                "guards": vars(service.guards)}


def _swagger_ui(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the files of the ``swagger-ui-bundle`` package, so the page
    loads where no CDN can be reached."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title="TinyCompress API",
                                   swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png")
