"""ValidatorPool: same scores as plain ``score()``, whatever the sharding, and no sample lost or
scored twice when an actor dies or a chunk times out."""

from __future__ import annotations

import pickle
import threading

import pytest

ray = pytest.importorskip("ray")

from validator_actors.pool import FaultInjection, PoolConfig, ValidatorPool  # noqa: E402
from validator_actors.tokens import TokenCounter  # noqa: E402
from validator_actors.validator import Validator, score  # noqa: E402

TIMEOUT = 60  # every ray.get / pool call in this file finishes well within this


def make_batch(n: int) -> tuple[list[str], list[str], list[str | None]]:
    """Valid, invalid, reference-matching and mismatching samples, repeating every 12."""
    v = Validator()
    forms = [
        ("check rule 3 when building", "C3?:build", "C3?:build"),
        ("check rule 3 when building", "C?3 : build", v.validate("C3?:build").hash),
        ("enforce every invariant", "I*", "L.I"),
        ("enforce rule 3", "C3", "C4"),  # HASH_MISMATCH
        ("audit contracts", "@FULL_AUDIT:audit>report", None),
        ("nonsense", "C14", None),  # UNKNOWN_NUMBER
        ("nonsense", "X?", None),
        ("nonsense", "", None),
        ("escape", "C1>/etc/passwd", None),
        ("traverse", "C1>../x", None),
        ("canon", "C1>LAW/CANON/x", None),
        ("two", "V?&R|C2!:security>a>b", None),
    ]
    rows = [forms[i % len(forms)] for i in range(n)]
    intents = [f"{intent} #{i}" for i, (intent, _, _) in enumerate(rows)]
    programs = [p if i % 5 else f"{p}>run{i}" if p and ">" not in p else p
                for i, (_, p, _) in enumerate(rows)]
    references = [r for _, _, r in rows]
    return intents, programs, references


def test_pool_equals_plain_score_in_order(ray_local):
    batch = make_batch(500)
    with ValidatorPool(num_actors=2, chunk_size=37) as pool:
        got = pool.score(*batch)
        assert pool.stats.chunks == 14 and pool.stats.restarts == 0
    expected = score(*batch, validator=Validator())
    assert [s.index for s in got] == list(range(500))
    assert got == expected
    assert {c for s in got for c in s.codes} >= {"HASH_MISMATCH", "UNKNOWN_NUMBER", "EMPTY_PROGRAM"}


def test_pool_of_two_and_of_one_agree(ray_local):
    batch = make_batch(300)
    with ValidatorPool(num_actors=1, chunk_size=64, inflight_per_actor=1) as one:
        a = one.score(*batch)
    with ValidatorPool(num_actors=2, chunk_size=29) as two:
        first, second = two.score_async(*batch), two.score_async(*make_batch(50))
        b = first.result(timeout=TIMEOUT)
        assert second.result(timeout=TIMEOUT) == a[:50]
    assert a == b


def test_pool_config_is_checked():
    with pytest.raises(ValueError, match="chunk_size must be > 0"):
        PoolConfig(chunk_size=0)
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        PoolConfig(max_retries=-1)


def test_killing_an_actor_mid_batch_loses_nothing(ray_local):
    batch = make_batch(240)
    pool = ValidatorPool(num_actors=2, chunk_size=30, timeout_s=20,
                         fault=FaultInjection(delay_s=0.4))
    try:
        pool.wait_ready(TIMEOUT)
        victim = pool.actors[0]
        killer = threading.Timer(0.2, ray.kill, args=(victim,))  # inside its first 0.4 s chunk
        killer.start()
        seen: list[int] = []
        for chunk in pool.iter_scores(*batch):
            seen += [s.index for s in chunk]
        killer.join()
        assert sorted(seen) == list(range(240)), "every sample exactly once"
        got = pool.score(*batch)  # the replaced pool keeps working
    finally:
        pool.shutdown()
    assert victim not in pool.actors
    assert pool.stats.crashes == 1 and pool.stats.restarts == 1 and pool.stats.retries == 1
    assert pool.stats.failed_samples == 0
    assert got == score(*batch, validator=Validator())


def test_a_crash_without_retries_fails_exactly_that_chunk(ray_local):
    batch = make_batch(80)
    pool = ValidatorPool(num_actors=1, chunk_size=40, timeout_s=20, max_retries=0,
                         inflight_per_actor=1, fault=FaultInjection(delay_s=1.0))
    try:
        pool.wait_ready(TIMEOUT)
        threading.Timer(0.3, ray.kill, args=(pool.actors[0],)).start()  # during chunk 0..39
        got = pool.score(*batch)
    finally:
        pool.shutdown()
    assert [s.index for s in got if s.codes == ("VALIDATOR_CRASH",)] == list(range(40))
    assert all(s.reward == -1.0 and not s.valid for s in got[:40])
    assert got[40:] == score(*batch, validator=Validator())[40:]
    assert pool.stats.crashes == 1 and pool.stats.retries == 0 and pool.stats.failed_samples == 40


def test_a_chunk_that_always_times_out_fails_explicitly(ray_local):
    intents, programs, references = make_batch(200)
    programs[75] = "C3?>SLOW"  # chunk 50..99 always sleeps past the timeout
    pool = ValidatorPool(num_actors=2, chunk_size=50, timeout_s=1.0, max_retries=1,
                         fault=FaultInjection(delay_s=4.0, marker="SLOW"))
    try:
        got = pool.score(intents, programs, references)
    finally:
        pool.shutdown()
    failed = [s.index for s in got if s.codes == ("VALIDATOR_TIMEOUT",)]
    assert failed == list(range(50, 100))
    assert all(s.reward == -1.0 and not s.valid and s.tokens == 0 for s in got[50:100])
    expected = score(intents, programs, references, validator=Validator())
    assert got[:50] == expected[:50] and got[100:] == expected[100:]
    assert pool.stats.timeouts == 2 and pool.stats.retries == 1 and pool.stats.restarts == 2
    assert pool.stats.failed_samples == 50


def test_token_counter_pickles_and_scores_like_plain(ray_local, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"])
    intents, programs, references = make_batch(120)
    tok.train_from_iterator(intents + programs, trainer)
    (tmp_path / "tokenizer").mkdir()
    tok.save(str(tmp_path / "tokenizer" / "tokenizer.json"))

    counter = TokenCounter(tmp_path / "tokenizer")
    assert counter(["C3?:build"]) == [len(tok.encode("C3?:build", add_special_tokens=False).ids)]
    clone = pickle.loads(pickle.dumps(counter))
    assert clone(programs) == counter(programs)
    with ValidatorPool(num_actors=2, chunk_size=40, token_counter=counter) as pool:
        got = pool.score(intents, programs, references)
    assert got == score(intents, programs, references, token_counter=counter)


def test_pool_rejects_ragged_batches(ray_local):
    with ValidatorPool(num_actors=1) as pool:
        with pytest.raises(ValueError, match="differ in length"):
            pool.score(["a"], ["C3", "C4"], [None])
