"""The served compressor as a plain class: the shortest equivalent spelling wins."""

from __future__ import annotations

import pytest

from rollout.datagen.intents import IntentGenerator, template_ids
from serve.compressor import Compressor, CompressorConfig
from validator_actors.codebook import load_codebook
from validator_actors.jobspec import expand, jobspec_hash


@pytest.fixture(scope="module")
def examples():
    cb = load_codebook()
    gen, tids = IntentGenerator(cb, seed=11), template_ids(False)
    return [(ex.intent, jobspec_hash(expand(ex.meaning, cb)))
            for ex in (gen.example(tids[i % len(tids)]) for i in range(12))]


def test_shortest_form_keeps_the_meaning_and_never_lengthens(examples):
    plain = Compressor(CompressorConfig(shortest_form=False, cache_size=0))
    short = Compressor(CompressorConfig(shortest_form=True, cache_size=0))
    intents = [i for i, _ in examples]
    a, b = plain.compress(intents, k=1), short.compress(intents, k=1)
    shorter = 0
    for x, y in zip(a, b):
        assert y.report["hash"] == x.report["hash"] and y.valid == x.valid, "same meaning, same verdict"
        assert y.tokens <= x.tokens and y.confidence == x.confidence
        shorter += y.tokens < x.tokens
        if y.program != x.program:
            assert short.validator.validate(y.program).hash == x.report["hash"]
    assert shorter >= 3, "the greedy programs spell out the default context or root on most intents"
    assert sum(y.report["hash"] == ref for y, (_, ref) in zip(b, examples)) >= 10


# ------------------------------------------------------------------ the serving decoder


@pytest.fixture(scope="module")
def policy():
    from learner.policy import load_policy
    from serve.compressor import DEFAULT_COMPRESSOR

    model, tok, _ = load_policy(DEFAULT_COMPRESSOR)
    return model, tok


def test_static_decoder_logits_equal_the_transformers_model(policy, examples):
    import torch

    from rollout.sampler import encode_prompts, left_pad
    from serve.decode import Row, StaticDecoder

    model, tok = policy
    dec = StaticDecoder(model, tok, max_new_tokens=1)
    intents = [i for i, _ in examples[:5]]  # different lengths: left padding is exercised
    ids, attn = left_pad(encode_prompts(tok, intents, 192), tok.pad_token_id, "cpu")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    captured = {}
    real_forward = dec._forward

    def spy(*args, **kwargs):
        captured.setdefault("logits", real_forward(*args, **kwargs))
        return captured["logits"]

    dec._forward = spy
    dec.generate(intents, [Row(i) for i in range(len(intents))])
    assert torch.allclose(captured["logits"], ref.float(), atol=1e-4), (captured["logits"] - ref).abs().max()


def test_static_decoder_greedy_programs_equal_the_training_sampler(policy, examples):
    from rollout.sampler import Sampler
    from serve.decode import Row, StaticDecoder

    model, tok = policy
    intents = [i for i, _ in examples]
    ref = Sampler(model, tok, max_new_tokens=96).sample(intents, 1, greedy=True).texts
    dec = StaticDecoder(model, tok, max_new_tokens=96)
    assert dec.texts(dec.generate(intents, [Row(i) for i in range(len(intents))])) == ref
    # one intent alone decodes to the same program as inside the batch
    assert dec.texts(dec.generate(intents[3:4], [Row(0)])) == ref[3:4]


def test_int8_decoder_mostly_keeps_the_greedy_programs(policy, examples):
    from serve.decode import Row, StaticDecoder

    model, tok = policy
    intents = [i for i, _ in examples]
    rows = [Row(i) for i in range(len(intents))]
    fp32 = StaticDecoder(model, tok).generate(intents, rows)
    int8 = StaticDecoder(model, tok, int8=True).generate(intents, rows)
    assert sum(a == b for a, b in zip(fp32, int8)) >= len(intents) - 2  # the measured rate: docs/SERVE.md


# ------------------------------------------------------------------ the ONNX Runtime decoder


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def test_onnx_decoder_logits_and_programs_equal_the_torch_decoder(policy, examples, onnx_cache):
    import numpy as np
    import torch

    from serve.compressor import DEFAULT_COMPRESSOR
    from serve.decode import Row, StaticDecoder
    from serve.onnx_decode import OnnxDecoder

    model, tok = policy
    intents = [i for i, _ in examples]
    onnx = OnnxDecoder(model, tok, DEFAULT_COMPRESSOR / "model.safetensors", cache_folder=onnx_cache)
    ref = StaticDecoder(model, tok)
    captured = {}
    real_run = onnx._run

    def spy(*args):
        out = real_run(*args)
        captured.setdefault("logits", out[0])
        return out

    onnx._run = spy
    rows = [Row(i) for i in range(len(intents))]
    assert onnx.generate(intents, rows) == ref.generate(intents, rows)  # left padding, rows of different lengths
    ref_logits = {}
    real_forward = ref._forward

    def ref_spy(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        ref_logits.setdefault("logits", out)  # the prefill's
        return out

    ref._forward = ref_spy
    ref.generate(intents, rows)
    ref._forward = real_forward
    assert np.allclose(captured["logits"], ref_logits["logits"].numpy(), atol=1e-3)
    # candidates: a prompt's cache copied to its rows; sampled rows follow their own generator
    sampled = [Row(0), Row(0, torch.Generator().manual_seed(5)), Row(1, torch.Generator().manual_seed(6))]
    again = [Row(0), Row(0, torch.Generator().manual_seed(5)), Row(1, torch.Generator().manual_seed(6))]
    a = onnx.generate(intents[:2], sampled, temperature=1.0)
    assert a == ref.generate(intents[:2], again, temperature=1.0)
    assert a[0] == ref.generate(intents[:1], [Row(0)])[0]


def test_onnx_export_is_cached_by_weights_and_int8_keeps_the_programs(policy, examples, onnx_cache):
    from serve.compressor import DEFAULT_COMPRESSOR
    from serve.decode import Row
    from serve.onnx_decode import OnnxDecoder

    model, tok = policy
    weights = DEFAULT_COMPRESSOR / "model.safetensors"
    first = OnnxDecoder(model, tok, weights, int8=True, cache_folder=onnx_cache)
    stamp = first.path.stat().st_mtime_ns
    second = OnnxDecoder(model, tok, weights, int8=True, cache_folder=onnx_cache)
    assert second.path == first.path and second.path.stat().st_mtime_ns == stamp, "exported once"
    assert "int8" in first.path.name and first.path.stat().st_size < 0.5 * (weights.stat().st_size * 2)
    intents = [i for i, _ in examples]
    rows = [Row(i) for i in range(len(intents))]
    fp32 = OnnxDecoder(model, tok, weights, cache_folder=onnx_cache).generate(intents, rows)
    assert sum(a == b for a, b in zip(fp32, first.generate(intents, rows))) >= len(intents) - 1


def test_compressor_answers_the_same_on_either_runtime(examples):
    intents = [i for i, _ in examples[:6]]
    torch_rt = Compressor(CompressorConfig(cache_size=0, runtime="torch"))
    onnx_rt = Compressor(CompressorConfig(cache_size=0, runtime="onnx"))
    for a, b in zip(torch_rt.compress(intents, k=3), onnx_rt.compress(intents, k=3)):
        assert (a.program, a.valid, a.confidence, a.faithful) == (b.program, b.valid, b.confidence, b.faithful)
    assert onnx_rt.version["runtime"] == "onnx"
    with pytest.raises(ValueError, match="runtime must be one of"):
        CompressorConfig(runtime="tensorrt")


def test_sampled_candidates_depend_on_their_intent_only(examples):
    comp = Compressor(CompressorConfig(cache_size=0, temperature=1.0))
    intents = [i for i, _ in examples]
    alone = comp.compress(intents[:1], k=6)[0]
    batched = comp.compress(intents[5:8] + intents[:1], k=[2, 3, 1, 6])
    assert batched[3].program == alone.program and batched[3].confidence == alone.confidence
    assert [b.candidates for b in batched] == [2, 3, 1, 6]
    greedy = comp.compress(intents[:1], k=1)[0]
    assert greedy.valid and greedy.confidence == 1.0  # candidate 0 is always the greedy program


def test_a_failed_answer_has_no_compression_and_says_why(monkeypatch):
    comp = Compressor(CompressorConfig(cache_size=0))
    monkeypatch.setattr(comp.decoder, "generate", lambda intents, rows, **kw: [[] for _ in rows])  # no program
    fallback, failed = comp.compress(["check contract rule 3 while building", "hello there"], k=1)
    assert fallback.source == "fallback" and fallback.valid, "the rules answer what the model could not"
    assert fallback.to_dict()["compression"] > 0 and "rule-based compressor answered" in fallback.reason
    body = failed.to_dict()
    assert not body["valid"] and body["compression"] is None, "an invalid program compresses nothing"
    assert "nor did the rule-based compressor" in body["reason"]
