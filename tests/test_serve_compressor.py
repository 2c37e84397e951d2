"""The served compressor as a plain class: the shortest equivalent spelling wins."""

from __future__ import annotations

import pytest

from rollout.intents import IntentGenerator, template_ids
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
