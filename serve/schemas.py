"""Request bodies of the HTTP API and the limits they enforce (docs/SERVE.md lists them).

Every model is strict (no type coercion: ``"4"`` is not an int) and forbids unknown fields, so
a wrong type or a misspelt key is a 422 that names the field.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_BODY_BYTES = 4 * 2**20  # a whole request body (413 beyond)
MAX_INTENT_CHARS = 2000  # an intent (the generator's longest is about 420)
MAX_PROGRAM_CHARS = 4096  # a program or reference sent to /expand or /validate
MAX_BATCH = 32  # intents in /compress/batch, images in /encode
MAX_CANDIDATES = 8  # candidates sampled per intent
MAX_IMAGE_BYTES = 1 * 2**20  # one encoded image (PNG/JPEG file), after base64 decoding
MAX_ENTITY_CHARS = 128
MAX_LATENT_ABS = 100.0  # latent values are about N(0, 1); far outside is not a latent
MAX_JSON_DEPTH = 16  # nested arrays/objects in a JSON body (the deepest valid body has 2)
MAX_JSON_VALUES = 20_000  # values in a JSON body (a 4,096-value latent is the largest valid one)
MAX_INT_DIGITS = 32  # digits of one JSON integer (no valid field needs more than a few)


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid UTF-8 (it holds a lone surrogate)") from None
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("intent is empty or whitespace")
    return text


def _image_bytes(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if not data:
        raise ValueError("image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    return data


Intent = Annotated[str, Field(min_length=1, max_length=MAX_INTENT_CHARS,
                              description=f"the request in English, 1..{MAX_INTENT_CHARS} characters"),
                   AfterValidator(_utf8), AfterValidator(_not_blank)]
Program = Annotated[str, Field(max_length=MAX_PROGRAM_CHARS, description="an IR program"), AfterValidator(_utf8)]
Candidates = Annotated[int, Field(ge=1, le=MAX_CANDIDATES, description="candidates to sample (1 = greedy)")]
EntityId = Annotated[str, Field(max_length=MAX_ENTITY_CHARS), AfterValidator(_utf8)]
Base64Image = Annotated[str, Field(max_length=MAX_IMAGE_BYTES * 4 // 3 + 64,
                                   description="a PNG or JPEG file, base64 (a data: URL also works)"),
                        AfterValidator(_image_bytes)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_LATENT_ABS, le=MAX_LATENT_ABS)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CompressRequest(Strict):
    intent: Intent
    max_candidates: Candidates | None = None


class CompressBatchRequest(Strict):
    intents: list[Intent] = Field(min_length=1, max_length=MAX_BATCH)
    max_candidates: Candidates | None = None


class ExpandRequest(Strict):
    program: Program


class ValidateRequest(Strict):
    program: Program
    intent: Intent | None = None
    reference: Program | None = Field(None, description="a reference program or its 64-hex hash (level 6)")


class EncodeRequest(Strict):
    """Either ``image`` or ``images`` (a batch)."""

    image: Base64Image | None = None
    images: list[Base64Image] | None = Field(None, min_length=1, max_length=MAX_BATCH)
    entity_id: EntityId = ""
    entity_ids: list[EntityId] | None = None
    codes: bool = True

    @model_validator(mode="after")
    def _one_form(self) -> EncodeRequest:
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of 'image' or 'images'")
        if self.entity_ids is not None and (self.images is None or len(self.entity_ids) != len(self.images)):
            raise ValueError("'entity_ids' needs 'images' and one id per image")
        return self


class DecodeRequest(Strict):
    latent: list[Finite] = Field(min_length=1, max_length=4096,
                                 description=f"finite values within ±{MAX_LATENT_ABS:g}")


class SimilarityRequest(Strict):
    image_a: Base64Image
    image_b: Base64Image
