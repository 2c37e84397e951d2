"""The service's one JSON parser and its admission gate, without Ray or HTTP."""

from __future__ import annotations

import json

import pytest

from serve import schemas, web
from serve.schemas import CompressRequest


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("body, words", [
    (nested(50_000), "deeper"),  # the C decoder's own recursion limit
    (nested(schemas.MAX_JSON_DEPTH + 1), "deeper"),  # parsed, then refused
    (b'{"intent": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"intent": -' + b"9" * (schemas.MAX_INT_DIGITS + 1) + b"}", "digits"),
    (json.dumps([0] * (schemas.MAX_JSON_VALUES + 1)).encode(), "values"),
    (b'{"intent": "a"', "malformed json"),
    (b'{"intent": "caf\xe9"}', "utf-8"),
    (b"", "malformed json"),
])
def test_every_malformed_body_is_a_400_with_a_reason(body, words):
    with pytest.raises(web.BadInput) as err:
        web.load_json(body)
    assert err.value.status == 400 and words in err.value.reason.lower()


def test_a_body_over_the_size_limit_is_a_413():
    with pytest.raises(web.BadInput) as err:
        web.load_json(b" " * (schemas.MAX_BODY_BYTES + 1))
    assert err.value.status == 413


def test_bodies_within_the_limits_parse_as_json_does():
    ok = [nested(schemas.MAX_JSON_DEPTH), b'{"a": -' + b"9" * schemas.MAX_INT_DIGITS + b"}",
          json.dumps({"latent": [0.5] * 4096}).encode(), b'{"x": NaN, "y": 1e400}']
    for body in ok:
        assert json.dumps(web.load_json(body)) == json.dumps(json.loads(body))


def test_parse_gives_422_for_the_schema_and_400_for_the_syntax():
    assert web.parse(CompressRequest, b'{"intent": "check rule 3"}').intent == "check rule 3"
    with pytest.raises(web.BadInput) as err:
        web.parse(CompressRequest, b'{"intent": 3}')
    assert err.value.status == 422 and err.value.errors[0]["field"] == "intent"
    with pytest.raises(web.BadInput) as err:
        web.parse(CompressRequest, nested(100))
    assert err.value.status == 400


def test_a_gate_admits_up_to_its_limit_and_refuses_at_once_beyond():
    gate = web.Gate("compressor", 3)
    with gate.admit(2):
        with gate.admit():
            assert gate.full
            with pytest.raises(web.Overloaded) as err:
                with gate.admit():
                    pass
            assert err.value.status == 429 and "compressor" in err.value.reason
        with pytest.raises(web.Overloaded):
            with gate.admit(2):
                pass
    assert gate.inside == 0 and not gate.full


def test_guards_refuse_nonsense_settings():
    with pytest.raises(ValueError):
        web.Guards(body_timeout_s=0)
    with pytest.raises(ValueError):
        web.Guards(compressor_queue=0)
