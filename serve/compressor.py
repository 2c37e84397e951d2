"""The served compressor: decode candidates, validate them, keep the shortest valid one.

A plain class (no Ray), so it is tested and benchmarked on its own; ``serve.app`` holds it in
the Serve replica. A batch of intents, each with its own ``k``, is decoded in one pass of
:class:`serve.decode.StaticDecoder` (each prompt prefilled once): candidate 0 of every intent
is the greedy program and candidates 1..k-1 are sampled. The validator checks levels 1-5 (no
reference meaning exists at serving time), the shortest valid candidate wins (IR tokens of the
checkpoint's own tokenizer, ties broken by text), and the rule-based compressor answers when
no candidate is valid (:func:`rollout.choose.choose`). Confidence is self-consistency (Wang et
al., "Self-Consistency Improves Chain of Thought Reasoning", 2023): the share of the ``k``
candidates whose canonical expansion (its sha256) equals the returned program's. ``faithful`` is the estimate of
:mod:`validator_actors.faithful` that the program says what the intent says.

Answers are deterministic per intent: a sampled candidate's noise comes from a generator seeded
by the intent and the candidate's index, so the answer does not depend on which other intents
share the batch. A small LRU cache returns a repeated intent's answer without decoding.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_COMPRESSOR = ASSETS / "compressor_10m_grpo"  # GRPO from the warm start, compressor_10m
RUNTIMES = ("torch", "onnx")


@dataclass(frozen=True)
class CompressorConfig:
    """How the compressor decodes. Set from ``serve/config.yaml`` or the CLI."""

    checkpoint: str = str(DEFAULT_COMPRESSOR)
    """Folder of an HF-format policy checkpoint with its tokenizer (``tinycompress sft --out``)."""
    max_candidates: int = 1
    """Candidates per intent when the request does not say: the greedy program, then k-1 samples
    (1 = greedy only, the lowest latency; docs/SERVE.md compares)."""
    temperature: float = 0.7
    """Sampling temperature for k > 1 (0.7 and 1.0 gave the same pass rate on 120 intents)."""
    top_p: float = 1.0
    """Nucleus sampling mass for k > 1."""
    max_new_tokens: int = 96
    """Longest program decoded, in tokens."""
    cache_size: int = 4096
    """Recent (intent, k) answers kept; 0 turns the cache off."""
    threads: int = 1
    """torch threads of the replica (intra-op): one per replica on a small, shared CPU."""
    int8: bool = False
    """Decode with int8 projection weights and dynamically quantized activations: faster on a
    CPU, the same greedy program on most intents (docs/SERVE.md measures both)."""
    runtime: str = "torch"
    """``torch`` (:class:`serve.decode.StaticDecoder`, plain torch ops) or ``onnx`` (the same
    forward pass exported once and run by ONNX Runtime, :mod:`serve.onnx_decode`: one call per
    step instead of one torch op per layer, the GIL released while it computes)."""
    shortest_form: bool = True
    """Also consider each valid candidate's shortest equivalent form (``rollout.rewrite``:
    default context and output root left out, ``R*`` for full sets), kept only if the
    validator gives it the same meaning hash."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_candidates <= 16:
            raise ValueError(f"max_candidates must be in 1..16, got {self.max_candidates}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.cache_size < 0 or self.threads < 1 or self.max_new_tokens < 1:
            raise ValueError("cache_size must be >= 0, threads and max_new_tokens >= 1")


@dataclass(frozen=True)
class Compression:
    """One answer of ``/compress``; ``to_dict`` is the JSON body."""

    intent: str
    program: str
    tokens: int  # IR tokens of the program (checkpoint tokenizer)
    intent_tokens: int
    valid: bool
    report: dict  # the validator's report (levels 1-5)
    source: str  # "model" or "fallback"
    confidence: float  # share of candidates whose expansion hash equals the program's
    candidates: int
    valid_candidates: int
    latency_ms: float
    faithful: bool = False  # valid, and no check of validator_actors.faithful found anything
    faithfulness: dict | None = None  # {findings, baseline_agrees, agreement}: what faithful rests on
    cached: bool = False

    @property
    def compression(self) -> float | None:
        """1 - tokens / intent_tokens; None for an invalid program (it compresses nothing)."""
        if not self.valid:
            return None
        return round(1.0 - self.tokens / self.intent_tokens, 4) if self.intent_tokens else 0.0

    @property
    def reason(self) -> str | None:
        """Why the answer is not a valid program of the model's; None when it is."""
        if self.source == "model":
            return None
        why = f"none of the model's {self.candidates} candidate(s) passed the validator"
        if self.valid:
            return why + "; the rule-based compressor answered"
        errors = "; ".join(f"{e['code']}: {e['message']}" for e in self.report["errors"]) or "no program"
        return why + f", nor did the rule-based compressor's answer ({errors})"

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("intent")
        out["compression"], out["reason"] = self.compression, self.reason
        return out


def file_digest(path: Path) -> str:
    """First 12 hex digits of a file's sha256 (the version label used across the project)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


class Compressor:
    """Loads a policy checkpoint once and answers batches of intents."""

    def __init__(self, cfg: CompressorConfig | None = None):
        import torch

        from learner.policy import load_policy
        from serve.decode import StaticDecoder

        self.cfg = cfg or CompressorConfig()
        torch.set_num_threads(self.cfg.threads)
        path = Path(self.cfg.checkpoint)
        self.model, self.tok, self.meta = load_policy(path, device="cpu")
        if self.cfg.runtime == "onnx":
            from serve.onnx_decode import OnnxDecoder

            self.decoder = OnnxDecoder(self.model, self.tok, path / "model.safetensors",
                                       max_new_tokens=self.cfg.max_new_tokens, int8=self.cfg.int8,
                                       threads=self.cfg.threads)
        else:
            self.decoder = StaticDecoder(self.model, self.tok, max_new_tokens=self.cfg.max_new_tokens,
                                         int8=self.cfg.int8)
        self.tools = ProgramTools(path)
        self.validator, self.count, self.baseline = self.tools.validator, self.tools.count, self.tools.baseline
        self._cache: OrderedDict[tuple[str, int], Compression] = OrderedDict()
        self.version = {"name": path.name, "runtime": self.cfg.runtime, "int8": self.cfg.int8, "policy": self.meta.get("policy", {}).get("name"),
                        "params": self.meta.get("params"), "stage": self.meta.get("stage"),
                        "step": self.meta.get("step"), "weights_sha256": file_digest(path / "model.safetensors"),
                        "codebook_version": self.validator.cb.version}

    @property
    def max_intent_tokens(self) -> int:
        """The longest intent the policy reads whole: its prompt is ``<bos> intent <sep>``. A longer
        one is refused (the decoder would cut it, and the program would answer another request)."""
        return self.decoder.max_prompt_len - 2

    def compress(self, intents: list[str], k: int | list[int | None] | None = None,
                 intent_tokens: list[int] | None = None) -> list[Compression]:
        """Answer every intent; ``k`` candidates each (one for all, or one per intent; None or 0 =
        ``cfg.max_candidates``). Intents not in the cache are decoded together in one batch.
        ``intent_tokens``: the intents' token counts, when the caller has them already."""
        ks = [kk or self.cfg.max_candidates for kk in (k if isinstance(k, list) else [k] * len(intents))]
        t0 = time.perf_counter()
        todo = [i for i, key in enumerate(zip(intents, ks)) if key not in self._cache]
        counts = [intent_tokens[i] for i in todo] if intent_tokens is not None else None
        fresh = dict(zip(todo, self._decode([intents[i] for i in todo], [ks[i] for i in todo], t0, counts))) \
            if todo else {}
        out = []
        for i, key in enumerate(zip(intents, ks)):
            if i in fresh:
                self._remember(key, fresh[i])
                out.append(fresh[i])
            else:
                hit = self._cache[key]
                self._cache.move_to_end(key)
                ms = round((time.perf_counter() - t0) * 1000, 3)
                out.append(Compression(**{**asdict(hit), "latency_ms": ms, "cached": True}))
        return out

    def _decode(self, intents: list[str], ks: list[int], t0: float,
                intent_tokens: list[int] | None = None) -> list[Compression]:
        from serve.decode import Row

        rows = [Row(i, None if j == 0 else candidate_generator(intent, j))
                for i, (intent, k) in enumerate(zip(intents, ks)) for j in range(k)]
        texts = self.decoder.texts(self.decoder.generate(intents, rows, temperature=self.cfg.temperature,
                                                         top_p=self.cfg.top_p))
        intent_tokens = intent_tokens if intent_tokens is not None else self.count(intents)
        ms = round((time.perf_counter() - t0) * 1000, 3)
        out, at = [], 0
        for intent, k, n in zip(intents, ks, intent_tokens):
            out.append(self._choose(intent, texts[at:at + k], n, ms))
            at += k
        return out

    def _choose(self, intent: str, candidates: list[str], intent_tokens: int, ms: float) -> Compression:
        from rollout.choose import choose

        c = choose(candidates, intent, validator=self.validator, count=self.count, fallback=self.baseline.compress,
                   shorter_forms=self.cfg.shortest_form)
        agree = round(c.agreement, 4)
        faithful, why = self.tools.faithfulness(intent, c.program, c.report, agree)
        return Compression(intent, c.program, c.tokens, intent_tokens, c.report.valid, c.report.to_dict(), c.source,
                           agree, len(candidates), c.valid_candidates, ms, faithful, why)

    def _remember(self, key: tuple[str, int], answer: Compression) -> None:
        if self.cfg.cache_size:
            self._cache[key] = answer
            if len(self._cache) > self.cfg.cache_size:
                self._cache.popitem(last=False)


def candidate_generator(intent: str, index: int):
    """The generator of candidate ``index`` of ``intent``: seeded by both, nothing else."""
    import torch

    seed = hashlib.sha256(f"{index}:{intent}".encode()).digest()[:8]
    return torch.Generator().manual_seed(int.from_bytes(seed, "little") & (2**63 - 1))


class ProgramTools:
    """``/expand`` and ``/validate``: the validator, the token counter and the baseline, no model.

    Pure Python (plus the Rust tokenizer), so the ingress answers these without a model hop.
    """

    def __init__(self, checkpoint: str | Path = DEFAULT_COMPRESSOR):
        from rollout.baseline import RuleBasedCompressor
        from validator_actors.tokens import TokenCounter
        from validator_actors.validator import Validator

        self.validator = Validator()
        self.count = TokenCounter(checkpoint)
        self.baseline = RuleBasedCompressor(self.validator.cb)

    def expand(self, program: str) -> dict:
        """The validator's report for ``program``; its ``expansion`` is the JobSpec."""
        return self.validator.validate(program).to_dict()

    def validate(self, program: str, intent: str | None = None, reference: str | None = None) -> dict:
        """The report; with ``intent``, also token counts, compression, the baseline's verdict and
        the faithfulness estimate."""
        checked = self.validator.validate(program, reference)
        report = checked.to_dict()
        if intent is not None:
            tokens, intent_tokens = self.count([program, intent])
            report["tokens"], report["intent_tokens"] = tokens, intent_tokens
            report["compression"] = (round(1 - tokens / intent_tokens, 4) if intent_tokens else 0.0) if checked.valid \
                else None
            report["faithful"], report["faithfulness"] = self.faithfulness(intent, program, checked)
            report["matches_baseline"] = report["faithfulness"]["baseline_agrees"]
        return report

    def faithfulness(self, intent: str, program: str, report, agreement: float | None = None) -> tuple[bool, dict]:
        """(faithful, why): ``validator_actors.faithful``'s findings for the program against its
        intent, the rule-based compressor's reading as a second opinion (same meaning hash or
        not) and, when there were several candidates, their agreement. ``faithful`` is a valid
        program with no finding (docs/SERVE.md has its calibration)."""
        from validator_actors.faithful import check

        base = self.validator.validate(self.baseline.compress(intent))
        findings = check(intent, program, self.validator.cb) if report.valid else []
        why = {"findings": [asdict(f) for f in findings],
               "baseline_agrees": bool(report.valid and base.valid and base.hash == report.hash),
               "agreement": agreement}
        return bool(report.valid and not findings), why
