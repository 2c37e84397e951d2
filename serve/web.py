"""HTTP edges of the app: body guards, error bodies, status codes (no Ray, no models).

Every error is JSON ``{"detail": reason}`` (plus ``errors`` where there are several):

- 400: malformed JSON, or a JSON body that is not UTF-8;
- 413: a body over ``MAX_BODY_BYTES``, or an image over ``MAX_IMAGE_BYTES``;
- 415: ``/encode`` with a content type other than PNG, JPEG, octet-stream or JSON;
- 422: a well-formed body that breaks the schema or limits (``serve.schemas``), an image that
  is not one or has the wrong shape, an invalid program for ``/expand``;
- 429 / 503 with ``Retry-After``: a model's queue is full / it did not answer in time.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from serve import schemas

RETRY_AFTER_S = 1
JSON_TYPES = ("application/json",)

DESCRIPTION = """\
Compress verbose intents into validated Symbolic IR programs (the shipped 10m policy with
rule-based fallback) and encode 64x64 RGB images into 64-d TinyVAE latents with trust
metadata. Limits and status codes: docs/SERVE.md and `GET /version`."""

ENCODE_OPENAPI = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": schemas.EncodeRequest.model_json_schema()},
}}}


class BadInput(Exception):
    """A request the service refuses, with its status code and reason."""

    def __init__(self, status: int, reason: str, errors: list | None = None):
        super().__init__(reason)
        self.status, self.reason, self.errors = status, reason, errors


class Overloaded(Exception):
    """A model could not take or finish the request now: 429 or 503, with Retry-After."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def package_version() -> str:
    try:
        return version("tinycompress")
    except PackageNotFoundError:
        return "unknown"


def limits() -> dict:
    return {name.lower(): getattr(schemas, name) for name in (
        "MAX_BODY_BYTES", "MAX_INTENT_CHARS", "MAX_PROGRAM_CHARS", "MAX_BATCH", "MAX_CANDIDATES",
        "MAX_IMAGE_BYTES", "MAX_ENTITY_CHARS", "MAX_LATENT_ABS")}


def describe_errors(errors: list[dict]) -> tuple[int, str, list[dict]]:
    """(status, reason, errors) for pydantic/FastAPI errors; input values are never echoed."""
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e.get("loc", ("body", "?"))[-1]
            return 400, f"malformed JSON: {e.get('ctx', {}).get('error', 'decode error')} at character {where}", []
    rows = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
             "message": e.get("msg", ""), "type": e.get("type", "")} for e in errors[:20]]
    reason = "; ".join(f"{r['field']}: {r['message']}" for r in rows)
    return 422, reason, rows


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON body into ``model``, with the same 400/422 answers as FastAPI's own bodies."""
    try:
        return model.model_validate(json.loads(body))
    except json.JSONDecodeError as exc:
        raise BadInput(400, f"malformed JSON: {exc.msg} at character {exc.pos}") from None
    except ValidationError as exc:
        status, reason, rows = describe_errors(exc.errors())
        raise BadInput(status, reason, rows) from None


def _error(status: int, reason: str, errors: list | None = None, retry: bool = False) -> JSONResponse:
    body = {"detail": reason, **({"errors": errors} if errors else {})}
    return JSONResponse(body, status_code=status, headers={"Retry-After": str(RETRY_AFTER_S)} if retry else None)


class BodyGuard:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413) and JSON that is not UTF-8 (400)
    before any route runs; the body is read once, within the limit, and replayed to the app."""

    def __init__(self, app, limit: int = schemas.MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await _error(413, f"body over {self.limit} bytes")(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _error(413, f"body over {self.limit} bytes")(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if body and kind in JSON_TYPES:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return await _error(400, f"body is not valid UTF-8 (byte {exc.start})")(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def install_guards(app: FastAPI) -> None:
    """The body guard and the JSON error handlers above."""
    app.add_middleware(BodyGuard)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(*describe_errors(exc.errors()))

    @app.exception_handler(BadInput)
    async def _bad(request: Request, exc: BadInput):
        return _error(exc.status, exc.reason, exc.errors)

    @app.exception_handler(Overloaded)
    async def _busy(request: Request, exc: Overloaded):
        return _error(exc.status, exc.reason, retry=True)
