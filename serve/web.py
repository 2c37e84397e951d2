"""HTTP edges of the app: body guards, error bodies, status codes (no Ray, no models).

Every error is JSON ``{"detail": reason}`` (plus ``errors`` where there are several):

- 400: malformed JSON, a JSON body that is not UTF-8, nested deeper than ``MAX_JSON_DEPTH``,
  holding more than ``MAX_JSON_VALUES`` values or an integer of more than ``MAX_INT_DIGITS``
  digits (one parser, :func:`load_json`, reads every JSON body of every endpoint);
- 408: a body that did not arrive within ``Guards.body_timeout_s``;
- 413: a body over ``MAX_BODY_BYTES``, or an image over ``MAX_IMAGE_BYTES``;
- 415: a JSON endpoint sent another content type than ``application/json`` (none is taken as
  JSON), ``/encode`` one other than PNG, JPEG, octet-stream or JSON;
- 422: a well-formed body that breaks the schema or limits (``serve.schemas``), an intent longer
  than the compressor reads, an image that is not one or has the wrong shape, an invalid
  program for ``/expand``;
- 429 with ``Retry-After``: a model's queue is full (:class:`Gate`), or one client address has
  ``Guards.max_client_requests`` requests in flight already;
- 503 with ``Retry-After``: a model did not answer in time (the HAProxy front, serve/front.py,
  also answers 503 when a route's slots stay taken for its queue time).
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from serve import responses, schemas

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


# what each error status means, for the OpenAPI document (the module docstring says more)
ERRORS = {
    400: "malformed JSON, not UTF-8, or past a JSON limit (depth, values, digits)",
    408: "the body did not arrive in time",
    413: "the body or an image is too large",
    415: "the content type is not one this endpoint reads",
    422: "the body breaks the schema or a limit (each field named in errors)",
    429: "a queue is full or this client has too many requests in flight; retry after Retry-After",
    503: "the model did not answer in time, the front found no free slot within its queue time, or (for "
         "/readyz) a queue is full; retry after Retry-After",
}
RETRY_HEADER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def answers(body: Any, *errors: int) -> dict:
    """The ``responses`` of a route for its OpenAPI entry: 200 with ``body`` (a model; None to
    leave it to the route) and each error status with :class:`serve.responses.ErrorBody`."""
    out: dict = {} if body is None else {200: {"model": body, "description": "the answer"}}
    for status in errors:
        out[status] = {"model": responses.ErrorBody, "description": ERRORS[status],
                       **({"headers": RETRY_HEADER} if status in (429, 503) else {})}
    return out


@dataclass(frozen=True)
class Guards:
    """How the service protects itself from load and from slow or greedy clients."""

    body_timeout_s: float = 5.0
    """A request body must arrive whole within this many seconds of the request (else 408)."""
    max_client_requests: int = 128
    """Requests one client address may have in flight at once (else 429 at once)."""
    compressor_queue: int = 64
    """Intents admitted to the compressor at once, decoding or waiting (else 429 at once)."""
    encoder_queue: int = 256
    """Images admitted to the encoder at once, encoding or waiting (else 429 at once)."""

    def __post_init__(self) -> None:
        if self.body_timeout_s <= 0 or min(self.max_client_requests, self.compressor_queue, self.encoder_queue) < 1:
            raise ValueError("body_timeout_s must be > 0 and every cap >= 1")


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


class Gate:
    """Admission to one model: at most ``limit`` items inside (decoding or queued for a batch);
    the next one is refused at once (429), so a queue never grows past what drains in seconds."""

    def __init__(self, name: str, limit: int):
        self.name, self.limit, self.inside = name, limit, 0

    @property
    def full(self) -> bool:
        return self.inside >= self.limit

    @contextmanager
    def admit(self, items: int = 1):
        if self.inside + items > self.limit:
            raise Overloaded(429, f"the {self.name} queue is full ({self.limit} in flight); retry shortly")
        self.inside += items
        try:
            yield
        finally:
            self.inside -= items


def package_version() -> str:
    try:
        return version("tinycompress")
    except PackageNotFoundError:
        return "unknown"


def limits() -> dict:
    return {name.lower(): getattr(schemas, name) for name in (
        "MAX_BODY_BYTES", "MAX_INTENT_CHARS", "MAX_PROGRAM_CHARS", "MAX_BATCH", "MAX_CANDIDATES",
        "MAX_IMAGE_BYTES", "MAX_ENTITY_CHARS", "MAX_LATENT_ABS", "MAX_JSON_DEPTH", "MAX_JSON_VALUES",
        "MAX_INT_DIGITS")}


def describe_errors(errors: list[dict]) -> tuple[int, str, list[dict]]:
    """(status, reason, errors) for pydantic/FastAPI errors; input values are never echoed."""
    for e in errors:
        if e.get("type") == "json_invalid":
            return 400, f"malformed JSON: {e.get('ctx', {}).get('error', 'decode error')}", []
    rows = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
             "message": e.get("msg", ""), "type": e.get("type", "")} for e in errors[:20]]
    reason = "; ".join(f"{r['field']}: {r['message']}" for r in rows)
    return 422, reason, rows


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > schemas.MAX_INT_DIGITS:
        raise ValueError(f"an integer has {len(text.lstrip('-'))} digits; the limit is {schemas.MAX_INT_DIGITS}")
    return int(text)


def _check_shape(value: Any) -> None:
    """Raise ValueError when ``value`` nests more than MAX_JSON_DEPTH arrays/objects or holds more
    than MAX_JSON_VALUES values."""
    stack, count = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > schemas.MAX_JSON_VALUES:
            raise ValueError(f"the body holds more than {schemas.MAX_JSON_VALUES} JSON values")
        if isinstance(item, (dict, list)):
            if depth >= schemas.MAX_JSON_DEPTH:
                raise ValueError(f"the body nests deeper than {schemas.MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def load_json(body: bytes) -> Any:
    """The one JSON parser of the service: ``body`` within every limit, or BadInput(400 or 413)."""
    if len(body) > schemas.MAX_BODY_BYTES:
        raise BadInput(413, f"body over {schemas.MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body, parse_int=_integer)
        _check_shape(value)
        return value
    except json.JSONDecodeError as exc:
        raise BadInput(400, f"malformed JSON: {exc.msg} at character {exc.pos}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise BadInput(400, f"the body nests deeper than {schemas.MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise BadInput(400, str(exc)) from None


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON body into ``model``: 400/413 from :func:`load_json`, 422 for the schema."""
    try:
        return model.model_validate(load_json(body))
    except ValidationError as exc:
        raise BadInput(*describe_errors(exc.errors())) from None


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = load_json(await self.body())
            except BadInput as exc:
                raise HTTPException(exc.status, exc.reason) from None
        return self._json


def is_json(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (parameters such as charset ignored); no type at
    all counts as JSON, as FastAPI reads it."""
    kind = content_type.split(";")[0].strip().lower()
    return not kind or kind in JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json"))


class JsonRoute(APIRoute):
    """A FastAPI route whose JSON body goes through :func:`load_json` (FastAPI's own reader
    would take any depth and any number of digits), and is refused with 415 when it comes as
    another content type (FastAPI would read a ``text/plain`` body as a string and say 422)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        takes_json = self.body_field is not None

        async def guarded(request: Request):
            kind = request.headers.get("content-type", "")
            if takes_json and not is_json(kind):
                return _error(415, f"send the body as JSON with content-type: application/json, not {kind!r}")
            return await handler(_JsonRequest(request.scope, request.receive))

        return guarded


def json_response(body: dict | list) -> Response:
    """A 200 JSON answer of plain JSON values, written by ``json.dumps`` (FastAPI would first walk
    the whole body through ``jsonable_encoder``: milliseconds for a compressor answer)."""
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
                    media_type="application/json")


def _error(status: int, reason: str, errors: list | None = None, retry: bool = False) -> JSONResponse:
    body = {"detail": reason, **({"errors": errors} if errors else {})}
    return JSONResponse(body, status_code=status, headers={"Retry-After": str(RETRY_AFTER_S)} if retry else None)


class BodyGuard:
    """ASGI middleware, before any route runs: at most ``max_client_requests`` requests in flight
    per client address (429), the body whole within ``body_timeout_s`` (408) and within
    ``limit`` bytes (413), JSON bodies UTF-8 (400). The body is read once and replayed."""

    unlimited = ("/healthz", "/readyz")  # a prober is never refused for a flood from its address

    def __init__(self, app, guards: Guards | None = None, limit: int = schemas.MAX_BODY_BYTES):
        self.app, self.guards, self.limit = app, guards or Guards(), limit
        self.clients: dict[str, int] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.unlimited:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        if self.clients.get(client, 0) >= self.guards.max_client_requests:
            return await _error(429, f"{self.guards.max_client_requests} requests from this client are in flight "
                                     "already", retry=True)(scope, receive, send)
        self.clients[client] = self.clients.get(client, 0) + 1
        try:
            return await self._guard(scope, receive, send)
        finally:
            self.clients[client] -= 1
            if not self.clients[client]:
                del self.clients[client]

    async def _guard(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await _error(413, f"body over {self.limit} bytes")(scope, receive, send)
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.guards.body_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                reason = f"the body did not arrive within {self.guards.body_timeout_s:g} s"
                return await _error(408, reason)(scope, receive, send)
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
        if body and kind and is_json(kind):
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


def install_guards(app: FastAPI, guards: Guards | None = None) -> None:
    """The body guard, the JSON route class and the JSON error handlers above."""
    app.router.route_class = JsonRoute
    app.add_middleware(BodyGuard, guards=guards)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(*describe_errors(exc.errors()))

    @app.exception_handler(BadInput)
    async def _bad(request: Request, exc: BadInput):
        return _error(exc.status, exc.reason, exc.errors)

    @app.exception_handler(Overloaded)
    async def _busy(request: Request, exc: Overloaded):
        return _error(exc.status, exc.reason, retry=True)
