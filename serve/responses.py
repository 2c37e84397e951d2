"""Response bodies of the HTTP API, as ``/openapi.json`` declares them.

The routes return plain dicts (built by :mod:`serve.compressor` and :mod:`serve.encoder`); these
models describe them for the OpenAPI document and its clients. tests/test_serve.py holds every
real answer of the running service against them (schemathesis), so a field added to an
answer without being declared here fails a test.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Issue(BaseModel):
    code: str = Field(description="the validator's error or warning code (docs/IR.md)")
    message: str
    level: int = Field(description="validation level 0-6 that raised it")


class ErrorItem(BaseModel):
    field: str = Field(description="the body field, dotted ('intents.3'), or 'body'")
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: one reason; ``errors`` lists the fields when there are several."""

    detail: str = Field(description="what was wrong and, where it helps, the limit or the fix")
    errors: list[ErrorItem | Issue] | None = Field(None, description="per-field errors (422), or the "
                                                                     "validator's errors (/expand)")


class Report(BaseModel):
    """The validator's report on one program (levels 1-5; 6 with a reference)."""

    valid: bool
    errors: list[Issue]
    warnings: list[Issue]
    expansion: dict[str, Any] | None = Field(description="the JobSpec the program expands to (null when invalid)")
    hash: str | None = Field(description="sha256 of the canonical JobSpec (null when invalid)")
    canonical: str | None
    minimal: str | None
    codebook_version: str


class Finding(BaseModel):
    code: str
    message: str


class Faithfulness(BaseModel):
    findings: list[Finding] = Field(description="what the program says that the intent does not")
    baseline_agrees: bool = Field(description="the rule-based compressor reads the intent to the same meaning")
    agreement: float | None = Field(description="share of the candidates with the same meaning (null for one)")


class Compression(BaseModel):
    """One intent's answer. A failed answer (``valid`` false) has ``compression`` null and a ``reason``."""

    program: str
    tokens: int = Field(description="IR tokens of the program")
    intent_tokens: int
    compression: float | None = Field(description="1 - tokens / intent_tokens; null when the program is invalid")
    valid: bool
    reason: str | None = Field(description="why the answer is not a valid program of the model's (null when it is)")
    report: Report
    source: str = Field(description="'model', or 'fallback' (the rule-based compressor)")
    confidence: float = Field(description="share of the candidates whose meaning equals the program's")
    candidates: int
    valid_candidates: int
    latency_ms: float
    faithful: bool
    faithfulness: Faithfulness | None
    cached: bool
    batch: int = Field(description="intents decoded together with this one")


class CompressBatch(BaseModel):
    results: list[Compression]


class Expansion(BaseModel):
    jobspec: dict[str, Any]
    hash: str
    canonical: str
    minimal: str
    warnings: list[Issue]


class Validation(Report):
    """The report; with ``intent``, also the token counts, compression and faithfulness."""

    tokens: int | None = None
    intent_tokens: int | None = None
    compression: float | None = Field(None, description="null without an intent or when the program is invalid")
    faithful: bool | None = None
    faithfulness: Faithfulness | None = None
    matches_baseline: bool | None = None


class Trust(BaseModel):
    entity_id: str
    model_name: str
    model_version: str
    timestamp: str
    trust: float = Field(description="0..1, how well the encoder knows images like this one")
    recon_mse: float
    kl_per_dim: float


class Encoding(BaseModel):
    latent: list[float]
    codes: list[int] | None = Field(description="the discrete dictionary's codes (null with codes=false)")
    trust: Trust


class EncodingBatch(BaseModel):
    results: list[Encoding]


class Similarity(BaseModel):
    cosine: float
    trust_a: float
    trust_b: float


class Health(BaseModel):
    status: str


class Queue(BaseModel):
    in_flight: int
    limit: int


class Ready(BaseModel):
    status: str
    queues: dict[str, Queue]


class Version(BaseModel):
    tinycompress: str
    compressor: dict[str, Any]
    encoder: dict[str, Any]
    limits: dict[str, int | float]
    guards: dict[str, int | float]
