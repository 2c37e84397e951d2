"""The Serve app over real HTTP: every endpoint's happy path, every bad input, overload.

One module-scoped app on a free loopback port (shipped checkpoints, serve/config.yaml with a
small compressor queue so that overload is reachable), called with httpx. Load, stalled
clients and health under overload: tests/test_http_load.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from rollout.datagen.intents import IntentGenerator, template_ids
from validator_actors.codebook import load_codebook
from validator_actors.jobspec import expand, jobspec_hash

TIMEOUT = httpx.Timeout(60.0)
# a small compressor queue (8 intents admitted) makes overload reachable in the test
SMALL_QUEUE = {"compressor_queue": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(limits: dict) -> str:
    """The app of serve/config.yaml with ``limits`` over its guards, on a free loopback port;
    its base URL once /readyz answers (``serve.shutdown()`` stops it)."""
    from ray import serve

    from serve.app import compose
    from serve.cli import load_config

    port = free_port()
    cfg = load_config()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    args = {**cfg["args"], "limits": {**cfg["args"]["limits"], **limits}}
    serve.run(compose(args, cfg["options"]), name="tinycompress", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail("the app did not become ready in 180 s")


@pytest.fixture(scope="module")
def url(ray_local):
    from ray import serve

    yield start_app(SMALL_QUEUE)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def examples():
    """Fresh intents with the sha256 of their reference meaning's JobSpec."""
    cb = load_codebook()
    gen, tids = IntentGenerator(cb, seed=7), template_ids(False)
    out = []
    for i in range(8):
        ex = gen.example(tids[i % len(tids)])
        out.append((ex.intent, jobspec_hash(expand(ex.meaning, cb))))
    return out


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format=fmt)
    return buf.getvalue()


PHOTOS = [("astronaut", 100, 100), ("coffee", 100, 100), ("chelsea", 200, 150), ("rocket", 200, 150),
          ("coffee", 200, 150)]


def picture(seed: int = 0, size: int = 64) -> np.ndarray:
    """A size x size crop of one of scikit-image's bundled photographs, uint8 (H, W, 3)."""
    import skimage.data

    name, y, x = PHOTOS[seed % len(PHOTOS)]
    return np.ascontiguousarray(getattr(skimage.data, name)()[y:y + size, x:x + size, :3])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail, r.text
    for w in words:
        assert w.lower() in detail.lower(), (w, detail)


# ------------------------------------------------------------------ happy paths


def test_compress_returns_a_valid_faithful_program(client, examples):
    default = client.get("/version").json()["compressor"]["max_candidates"]
    matched = 0
    for n, (intent, ref) in enumerate(examples[:5]):
        k = None if n % 2 else 4  # the configured default (greedy) and four candidates
        r = client.post("/compress", json={"intent": intent, **({"max_candidates": k} if k else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["valid"] and body["report"]["valid"] and body["source"] in ("model", "fallback")
        assert body["candidates"] == (k or default) and 0 <= body["valid_candidates"] <= body["candidates"]
        assert 0 < body["confidence"] <= 1 and body["latency_ms"] > 0
        assert body["compression"] == pytest.approx(1 - body["tokens"] / body["intent_tokens"], abs=1e-4)
        assert body["tokens"] < body["intent_tokens"]
        assert (body["reason"] is None) == (body["source"] == "model"), "a fallback says why"
        matched += body["report"]["hash"] == ref
    assert matched >= 4, f"only {matched}/5 programs mean what the intent means"


def test_a_repeated_intent_comes_from_the_cache(client, examples):
    intent = examples[0][0]
    first = client.post("/compress", json={"intent": intent, "max_candidates": 1}).json()
    again = client.post("/compress", json={"intent": intent, "max_candidates": 1}).json()
    assert again["cached"] and again["program"] == first["program"] and first["candidates"] == 1


def test_compress_batch_answers_every_intent_in_order(client, examples):
    intents = [i for i, _ in examples[5:8]]
    r = client.post("/compress/batch", json={"intents": intents, "max_candidates": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and all(x["valid"] and x["candidates"] == 2 for x in results)
    assert sum(x["report"]["hash"] == ref for x, (_, ref) in zip(results, examples[5:8])) >= 2


def test_expand_and_validate_agree(client, examples):
    e = client.post("/expand", json={"program": "C3?&I5:audit>nightly"})
    assert e.status_code == 200, e.text
    spec = e.json()
    assert spec["jobspec"]["phase"] == "audit" and spec["jobspec"]["outputs"]["durable_paths"]
    assert spec["hash"] == jobspec_hash(spec["jobspec"]) and spec["minimal"]
    v = client.post("/validate", json={"program": spec["minimal"], "reference": spec["canonical"]}).json()
    assert v["valid"] and v["hash"] == spec["hash"]
    intent, ref = examples[0]
    mismatch = client.post("/validate", json={"program": "V!", "intent": intent, "reference": ref}).json()
    assert not mismatch["valid"] and mismatch["errors"][0]["code"] == "HASH_MISMATCH"
    assert mismatch["intent_tokens"] > mismatch["tokens"] > 0 and "matches_baseline" in mismatch
    assert mismatch["compression"] is None, "an invalid program compresses nothing"
    secret = "C99?:secret-reference-text"  # not a valid program: its text must not come back
    bad_ref = client.post("/validate", json={"program": "C3?", "reference": secret})
    assert bad_ref.status_code == 200 and bad_ref.json()["errors"][0]["code"] == "INVALID_REFERENCE"
    assert "secret" not in bad_ref.text


def test_encode_png_jpeg_base64_and_batch(client):
    img = picture(seed=1)
    r = client.post("/encode", content=png(img), headers={"content-type": "image/png"},
                    params={"entity_id": "cam-7"})
    assert r.status_code == 200, r.text
    one = r.json()
    assert len(one["latent"]) == 64 and np.isfinite(one["latent"]).all() and len(one["codes"]) == 8
    trust = one["trust"]
    assert trust["entity_id"] == "cam-7" and trust["model_name"] == "tinyvae" and 0 <= trust["trust"] <= 1
    assert trust["model_version"] == client.get("/version").json()["encoder"]["version"] and trust["timestamp"]
    big = np.asarray(Image.fromarray(img).resize((256, 256), Image.Resampling.BICUBIC))
    batch = client.post("/encode", json={"images": [b64(png(img)), b64(png(img, "JPEG")), b64(png(big))],
                                         "entity_ids": ["a", "b", "c"], "codes": False}).json()["results"]
    assert [x["trust"]["entity_id"] for x in batch] == ["a", "b", "c"] and batch[0]["codes"] is None
    # the same pixels give the same latent, batched or not (up to float rounding)
    assert np.allclose(batch[0]["latent"], one["latent"], atol=1e-4)
    assert cosine(batch[0]["latent"], batch[1]["latent"]) > 0.95  # JPEG of the same picture
    assert cosine(batch[0]["latent"], batch[2]["latent"]) > 0.9  # 256x256 resized to 64x64


def test_decode_of_encode_round_trips(client):
    img = picture(seed=2)
    latent = client.post("/encode", json={"image": b64(png(img))}).json()["latent"]
    r = client.post("/decode", json={"latent": latent})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "PNG" and out.size == (64, 64) and out.mode == "RGB"
    mse = float(((np.asarray(out) / 255.0 - img / 255.0) ** 2).mean())
    assert mse < 0.02, mse  # a recognisable reconstruction (these crops score 0.002-0.014)
    again = client.post("/encode", content=r.content, headers={"content-type": "image/png"}).json()["latent"]
    assert cosine(latent, again) > 0.9


def test_similarity_of_an_image_with_itself_is_one(client):
    a, b = b64(png(picture(seed=3))), b64(png(picture(seed=4)[::-1]))
    same = client.post("/similarity", json={"image_a": a, "image_b": a}).json()
    other = client.post("/similarity", json={"image_a": a, "image_b": b}).json()
    assert same["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert other["cosine"] < same["cosine"] and 0 <= same["trust_a"] <= 1


def test_health_version_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["queues"]["compressor"]["limit"] == SMALL_QUEUE["compressor_queue"]
    v = client.get("/version").json()
    assert v["compressor"]["policy"] == "10m" and len(v["compressor"]["weights_sha256"]) == 12
    assert v["encoder"]["latent_dim"] == 64 and v["limits"]["max_intent_chars"] == 2000
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower(), "the page must load where no CDN can be reached"
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/compress", "/compress/batch", "/expand", "/validate", "/encode", "/decode",
            "/similarity", "/healthz", "/readyz", "/version"} <= set(paths)
    assert "CompressRequest" in str(paths["/compress"]["post"]["requestBody"])  # the body schema is documented


# ------------------------------------------------------------------ bad input


def post_raw(client, path: str, body: bytes, kind: str = "application/json") -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": kind})


@pytest.mark.parametrize("body, status, words", [
    ({"intent": ""}, 422, ["intent"]),
    ({"intent": "   \n "}, 422, ["empty"]),
    ({"intent": "x" * 2001}, 422, ["2000"]),
    ({"intent": 5}, 422, ["string"]),
    ({"intent": ["a"]}, 422, ["string"]),
    ({"intent": "check rule 3", "max_candidates": "4"}, 422, ["max_candidates"]),
    ({"intent": "check rule 3", "max_candidates": 9}, 422, ["max_candidates"]),
    ({"intent": "check rule 3", "max_candidates": 0}, 422, ["max_candidates"]),
    ({"intent": "check rule 3", "extra": 1}, 422, ["extra"]),
    ({}, 422, ["intent"]),
])
def test_compress_rejects_bad_json_bodies(client, body, status, words):
    assert_error(client.post("/compress", json=body), status, *words)


def test_compress_rejects_bytes_that_are_not_json_or_not_utf8(client):
    assert_error(post_raw(client, "/compress", b'{"intent": "caf\xe9 rule 3"}'), 400, "utf-8")
    assert_error(post_raw(client, "/compress", b'{"intent": "check rule 3"'), 400, "malformed json")
    assert_error(post_raw(client, "/compress", b'{"intent": "\\ud800 rule"}'), 422, "unicode")
    assert_error(post_raw(client, "/compress", b"[1, 2]"), 422)
    assert_error(client.post("/compress", content=b"intent=hello"), 422)


def test_an_intent_longer_than_the_prompt_is_a_422_naming_the_token_limit(client, examples):
    long = (" and then ".join(i for i, _ in examples) * 3)[:1990]  # under 2,000 characters, over 190 tokens
    assert_error(client.post("/compress", json={"intent": long}), 422, "tokens", "at most 190")
    assert_error(client.post("/compress/batch", json={"intents": [examples[0][0], long]}), 422,
                 "intent 1", "at most 190")


@pytest.mark.parametrize("path", ["/compress", "/compress/batch", "/expand", "/validate", "/decode", "/similarity"])
def test_json_endpoints_refuse_other_content_types_with_415(client, path):
    body = b'{"intent": "check contract rule 3"}'
    assert_error(post_raw(client, path, body, "text/plain"), 415, "application/json")
    assert_error(post_raw(client, path, body, "application/x-www-form-urlencoded"), 415)
    with_charset = post_raw(client, path, body, "application/json; charset=utf-8")
    assert with_charset.status_code != 415, "a charset parameter is still JSON"


def test_oversized_bodies_and_batches(client):
    assert_error(client.post("/compress/batch", json={"intents": ["check rule 3"] * 33}), 422, "33", "32")
    assert_error(client.post("/compress/batch", json={"intents": []}), 422, "intents")
    huge = b'{"intent": "' + b"a" * (4 * 2**20) + b'"}'
    assert_error(post_raw(client, "/compress", huge), 413, "body")
    img = b64(png(picture()))
    assert_error(client.post("/encode", json={"images": [img] * 33}), 422, "images")


def test_encode_rejects_what_is_not_a_usable_image(client):
    good = png(picture())
    cases = [
        (b"hello, not an image", "image/png", "not a png or jpeg"),
        (good[: len(good) // 2], "image/png", "corrupt"),
        (png(picture()[:, :32].copy()), "image/png", "square"),
        (png(picture(size=8)), "image/png", "16"),
        (png(np.zeros((2048, 2048, 3), np.uint8)), "image/png", "1024"),
    ]
    gif = io.BytesIO()
    Image.fromarray(picture()).save(gif, format="GIF")
    cases.append((gif.getvalue(), "image/png", "not a png or jpeg"))
    for data, kind, words in cases:
        assert_error(post_raw(client, "/encode", data, kind), 422, words)
    assert_error(post_raw(client, "/encode", good, "text/plain"), 415, "image/png")
    assert_error(client.post("/encode", json={"image": "%%% not base64 %%%"}), 422, "base64")
    assert_error(client.post("/encode", json={"image": b64(good), "images": [b64(good)]}), 422, "exactly one")
    assert_error(client.post("/encode", json={"images": [b64(good), b64(b"junk")]}), 422, "image 1")
    assert_error(client.post("/similarity", json={"image_a": b64(good)}), 422, "image_b")


@pytest.mark.parametrize("raw, words", [
    (b'{"latent": [NaN' + b", 0.0" * 63 + b"]}", ["finite"]),
    (b'{"latent": [Infinity' + b", 0.0" * 63 + b"]}", ["finite"]),
    (b'{"latent": [-1e400' + b", 0.0" * 63 + b"]}", ["finite"]),
    (b'{"latent": [1e6' + b", 0.0" * 63 + b"]}", ["100"]),
    (b'{"latent": ["0.5"' + b", 0.0" * 63 + b"]}", ["number"]),
    (b'{"latent": [0.0' + b", 0.0" * 62 + b"]}", ["63", "64"]),
    (b'{"latent": []}', ["latent"]),
])
def test_decode_rejects_latents_that_are_not_finite_or_the_wrong_size(client, raw, words):
    assert_error(post_raw(client, "/decode", raw), 422, *words)


def test_programs_never_reach_the_filesystem(client, tmp_path):
    target = tmp_path / "escape"
    r = client.post("/expand", json={"program": f"C3>{target}"})
    assert_error(r, 422, "PATH_ESCAPES_REPO_ROOT")
    assert_error(client.post("/expand", json={"program": "C3>../../etc"}), 422, "PATH_CONTAINS_TRAVERSAL")
    assert_error(client.post("/expand", json={"program": "__import__('os')"}), 422, "SYNTAX_ERROR")
    assert not target.exists()
    v = client.post("/validate", json={"program": "C14?"}).json()
    assert not v["valid"] and v["errors"][0]["code"] == "UNKNOWN_NUMBER"


JSON_ENDPOINTS = ["/compress", "/compress/batch", "/expand", "/validate", "/encode", "/decode", "/similarity"]
MALFORMED = [  # (body, status, a word of the reason)
    (b"[" * 50_000 + b"]" * 50_000, 400, "deeper"),
    (b'{"a": ' + b"[" * 17 + b"]" * 17 + b"}", 400, "deeper"),
    (b'{"intent": ' + b"1" * 5000 + b"}", 400, "digits"),
    (b'{"latent": [' + b", ".join([b"0"] * 20_001) + b"]}", 400, "values"),
    (b'{"intent": "caf\xe9"}', 400, "utf-8"),
    (b'{"intent": "open', 400, "malformed json"),
    (b"\x00\xff\xfe garbage", 400, ""),
    (b'"just a string"', 422, ""),
    (b"null", 422, ""),
    (b'{"intent": "x", "intent": 5}', 422, ""),
]


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_every_malformed_body_is_a_4xx_on_every_endpoint(client, path):
    for body, status, word in MALFORMED:
        r = post_raw(client, path, body)
        assert_error(r, status, *([word] if word else []))
    assert_error(post_raw(client, path, b"{" * (4 * 2**20 + 1)), 413, "body")


# ------------------------------------------------------------------ the OpenAPI contract


@pytest.fixture(scope="module")
def api_schema(url):
    return schemathesis.openapi.from_url(url + "/openapi.json")


CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]


def test_every_answer_is_the_one_openapi_json_declares(api_schema):
    """Schemathesis draws valid and invalid requests for every operation from /openapi.json;
    every answer must be declared there (status, content type, headers, body schema) and none
    may be a 5xx."""
    from schemathesis.generation.modes import GenerationMode

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # a GET here takes no input: there is nothing to get wrong
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(checks=CONFORMANCE, timeout=60)

        check()


# ------------------------------------------------------------------ overload, then still alive


def test_overload_gets_429_with_retry_after_and_never_hangs(url, examples):
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            calls = [c.post("/compress", json={"intent": f"{examples[i % 8][0]} (request {i})",
                                               "max_candidates": 4}) for i in range(40)]
            return await asyncio.wait_for(asyncio.gather(*calls), 120)

    t0 = time.monotonic()
    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= SMALL_QUEUE["compressor_queue"], codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "queue" in r.json()["detail"]
    assert time.monotonic() - t0 < 120


def test_the_server_still_answers_after_all_of_that(client, examples):
    assert client.get("/healthz").status_code == 200
    r = client.post("/compress", json={"intent": examples[1][0]})
    assert r.status_code == 200 and r.json()["valid"]


# ------------------------------------------------------------------ config and CLI


def test_config_file_is_a_valid_serve_config():
    import importlib
    import inspect

    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from serve.cli import CONFIG, load_config

    raw = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(raw)
    module, name = raw["applications"][0]["import_path"].split(":")
    builder = getattr(importlib.import_module(module), name)
    assert len(inspect.signature(builder).parameters) == 1  # Serve calls it with the args dict alone
    assert isinstance(builder(raw["applications"][0]["args"]), Application)
    cfg = load_config()
    assert {"TinyCompress"} == set(cfg["options"])
    assert cfg["options"]["TinyCompress"]["backpressure_config"]["status_code"] == 429


def test_cli_has_a_serve_subcommand():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--compressor" in out.stdout and "--port" in out.stdout
