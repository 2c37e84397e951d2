"""Latent context compression (learner/latent): data, views, the reader, training, the study."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from learner.latent.data import FAMILIES, DataConfig, bindings, generate, load_split, load_tokenizer, write_dataset
from learner.latent.evaluate import evaluate, parts, token_f1
from learner.latent.model import LatentConfig, LatentReader, mean_pool
from learner.latent.report import finite, mean_ci
from learner.latent.study import plan, quick_settings, run_study
from learner.latent.train import (ARMS, WARM, TrainConfig, batch_loss, build_reader, load_reader, quick, reader_inputs,
                                  train, warm_start)
from learner.latent.views import bm25_view, context_batch, examples, text_ids, token_view
from learner.policy import special_ids

ROOT = Path(__file__).resolve().parents[1]
QUICK_DATA = DataConfig(train=96, val=24, test=24, max_turns=24, vocab_size=512, seed=3)
TCFG = quick(TrainConfig())


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent_data")
    write_dataset(out, QUICK_DATA)
    return out


@pytest.fixture(scope="module")
def tok(data):
    return load_tokenizer(data)


@pytest.fixture(scope="module")
def rows(data, tok):
    return examples(tok, load_split(data, "train"))


def test_histories_are_deterministic_disjoint_and_answerable():
    a, b = generate(QUICK_DATA), generate(QUICK_DATA)
    assert a == b and a != generate(replace(QUICK_DATA, seed=4))
    texts = {s: {"\n".join(r["turns"]) + r["question"] for r in rows} for s, rows in a.items()}
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["test"]) and not (texts["val"] & texts["test"])
    assert {r["family"] for r in a["train"]} == set(FAMILIES)
    for r in a["train"]:
        asked = r["job"]
        assert r["question"] == f"which check does job {asked} run?" and bindings(r["turns"])[asked] == r["answer"]
        assert f"<{r['answer']}>" in r["turns"][r["relevant_turn"]]
        mentions = [i for i, t in enumerate(r["turns"]) if re.search(rf"\b{asked}\b", t)]
        if r["family"] == "needle":
            assert mentions == [r["relevant_turn"]]
        elif r["family"] == "versioning":  # the latest setting wins
            assert len(mentions) >= 2 and mentions[-1] == r["relevant_turn"]
        else:  # two-hop: the asked job is set only by reference to the job holding the value
            assert r["relevant_turn"] not in mentions and len(mentions) == 1


def test_answer_tokens_are_copyable_and_lengths_reach_past_the_window(rows):
    for e in rows:
        turn, ans = list(e.turns[e.relevant_turn]), list(e.answer)
        assert any(turn[i:i + len(ans)] == ans for i in range(len(turn)))
    assert min(e.n_context for e in rows) < 96 < max(e.n_context for e in rows)


def test_training_text_targets_only_answers_and_extra_questions_are_about_other_jobs(tok, rows):
    e = next(e for e in rows if len(e.extra) >= 2)
    ids, target = text_ids(e, 3, 2, prefix=[7, 7], queries=2)
    answers = [i for i, t in zip(ids, target) if t]
    assert answers == [*e.answer, 2, *e.extra[0][1], 2, *e.extra[1][1], 2]
    assert ids[:2] == [7, 7] and ids[2:2 + len(e.question)] == list(e.question)
    assert text_ids(e, 3, 2, answer=False, queries=2) == ([*e.question, 3], [False] * (len(e.question) + 1))
    assert all(q != e.question for q, _ in e.extra)


def test_views_keep_the_budget_and_bm25_finds_the_needle(rows):
    for e in rows[:30]:
        for view in ("first", "last", "bm25"):
            assert len(token_view(e, view, 8, 96)) <= 8
        assert token_view(e, "first", 8, 96) == e.context[:8] and token_view(e, "last", 8, 96) == e.context[-8:]
        assert (token_view(e, "full", 0, 96) is None) == (e.n_context > 96)
        if e.family == "needle":  # the only turn naming the asked job ranks first
            assert bm25_view(e, len(e.turns[e.relevant_turn])) == list(e.turns[e.relevant_turn])


def test_mean_pool_equals_a_loop_over_chunks():
    x = torch.randn(10, 3)
    pooled = mean_pool(x, 4)
    bounds = [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert torch.allclose(pooled, torch.stack([x[a:b].mean(0) for a, b in bounds]))
    assert mean_pool(x[:2], 4).shape == (4, 3) and torch.isfinite(mean_pool(x[:2], 4)).all()


def _reader(tok, **changes) -> LatentReader:
    return LatentReader(LatentConfig(k=4, **changes), TCFG.policy, tok, seed=0)


def test_latents_reach_the_reasoner_only_through_inputs_embeds(tok, rows):
    model, special = _reader(tok), special_ids(tok)
    batch = rows[:4]
    seen = []
    forward = model.reasoner.forward
    model.reasoner.forward = lambda *a, **kw: seen.append(kw) or forward(*a, **kw)
    z, texts, _ = reader_inputs(model, batch, "latent", 4, 96, special)
    batch_loss(model, batch, "latent", 4, TCFG, special)
    (kw,) = seen
    assert not kw.get("input_ids") and kw["inputs_embeds"].shape[1] == 4 + max(len(t) for t, _ in texts)
    assert torch.allclose(kw["inputs_embeds"][:, :4], z)
    assert z.shape == (4, 4, TCFG.width)
    # the context's tokens never appear in the reasoner's text
    assert all(list(t[:len(e.question)]) == list(e.question) for (t, _), e in zip(texts, batch))

    def answer_logits(b):
        torch.manual_seed(0)
        return batch_loss(model, b, "latent", 4, TCFG, special)[0]

    other = [replace(e, turns=tuple(tuple((t + 7) % len(tok) for t in turn) for turn in e.turns)) for e in batch]
    assert answer_logits(batch) != answer_logits(other)  # the context matters ...
    fixed = model.latents(context_batch(batch))
    model.latents = lambda ctx: fixed
    assert answer_logits(batch) == answer_logits(other)  # ... only through the latents


def test_pointer_scores_cover_the_turns_and_ablations_change_the_parts(tok, rows):
    model = _reader(tok)
    ctx = context_batch(rows[:5])
    z, scores = model.latents(ctx)
    n_turns = [len(e.turns) for e in rows[:5]]
    assert scores.shape == (5, max(n_turns))
    for i, n in enumerate(n_turns):
        assert torch.isfinite(scores[i, :n]).all() and torch.isinf(scores[i, n:]).all()
    assert _reader(tok, projection=False).project.__class__.__name__ == "Identity"
    assert _reader(tok, features="last").mix.in_features == TCFG.width
    assert model.mix.in_features == (TCFG.layers + 1) * TCFG.width  # the embeddings and every layer
    assert _reader(tok, time_embeddings=False).recency is None
    asks = _reader(tok, question=True)
    other = dict(ctx, question=(ctx["question"] + 5) % len(tok))
    assert not torch.allclose(asks.latents(ctx)[0], asks.latents(other)[0])  # the variant reads the question
    assert torch.allclose(model.latents(ctx)[0], model.latents(other)[0])  # the design does not
    shared = _reader(tok, shared=True)
    assert shared.encoder is None
    before = shared.features(ctx)
    with torch.no_grad():
        shared.reasoner.model.layers[0].mlp.down_proj.weight.add_(0.1)
    assert not torch.allclose(before, shared.features(ctx))  # the encoder is the reasoner


def test_one_step_gives_every_parameter_a_finite_nonzero_gradient(tok, rows):
    model = _reader(tok)
    loss, parts_ = batch_loss(model, rows[:8], "latent", 4, TCFG, special_ids(tok))
    loss.backward()
    assert math.isfinite(loss.item()) and parts_["aux_loss"] > 0
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
            or p.grad.abs().sum() == 0]
    assert not dead


def test_training_resumes_to_the_same_weights_and_is_deterministic(tmp_path, data):
    tcfg = replace(TCFG, steps=6, eval_every=3, save_every=3)
    a = train(tmp_path / "a", data, "latent", 4, tcfg, log=lambda _: None)

    def stop_at_the_end(line):
        if "step 6/6" in line:
            raise KeyboardInterrupt  # after the step-3 state, before the final one
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", data, "latent", 4, tcfg, log=stop_at_the_end)
    assert json.loads((tmp_path / "b" / "state" / "state.json").read_text())["step"] == 3
    b = train(tmp_path / "b", data, "latent", 4, tcfg, log=lambda _: None)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    c = build_reader("latent", 4, replace(tcfg, seed=1), load_tokenizer(data))
    assert not torch.equal(c.queries, a.queries)
    with pytest.raises(ValueError, match="another configuration"):
        train(tmp_path / "a", data, "no_aux", 4, tcfg)


def test_a_warm_start_seeds_the_reasoner_and_a_copy_of_it_as_encoder(tmp_path, data):
    tcfg = replace(TCFG, warm_steps=2, steps=1)
    warm = train(tmp_path / "warm", data, WARM, 0, tcfg, log=lambda _: None)
    fresh = build_reader("latent", 4, tcfg, load_tokenizer(data))
    model = build_reader("latent", 4, tcfg, load_tokenizer(data))
    warm_start(model, tmp_path / "warm")
    for name, p in warm.reasoner.state_dict().items():
        assert torch.equal(model.reasoner.state_dict()[name], p)
    for name, p in warm.reasoner.model.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], p)
        assert not torch.equal(fresh.encoder.state_dict()[name], p) or "norm" in name
    assert model.encoder.embed_tokens.weight.data_ptr() != model.reasoner.model.embed_tokens.weight.data_ptr()


def test_scores_are_the_squad_f1_over_program_parts():
    assert parts("C8!:build") == ["C8", "!", ":build"]
    assert token_f1("C8!:build", "C8!:build") == 1.0
    assert token_f1("C8?:build", "C8!:build") == pytest.approx(2 / 3)
    assert token_f1("I2", "C8!:build") == 0.0 and token_f1("", "C8!:build") == 0.0
    from scipy import stats

    x = [0.2, 0.5, 0.4]
    lo, hi = stats.t.interval(0.95, 2, loc=sum(x) / 3, scale=stats.sem(x))
    assert mean_ci(x)["ci"] == pytest.approx((hi - lo) / 2)
    assert math.isnan(mean_ci([0.3])["ci"])


def test_quick_study_subprocess_reports_every_cell_and_resumes(tmp_path, data):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "cluster.cli", "latent", "study", "--data", str(data), "--out", str(out), "--quick"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["cells"] == len(plan(quick_settings()))
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert [(c["arm"], c["view"], c["k"], c["seed"]) for c in cells] == plan(quick_settings())
    test_rows = examples(load_tokenizer(data), load_split(data, "test"))
    for c in cells:
        assert 0 <= c["em"] <= c["f1"] <= 1 and c["n"] == (sum(e.n_context <= 96 for e in test_rows)
                                                          if c["view"] == "full" else len(test_rows))
        expect = 1.0 if c["view"] == "full" else sum(e.n_context for e in test_rows) / len(test_rows) / c["k"]
        assert c["ratio"] == pytest.approx(expect)
        assert ("pointer_acc" in c) == (c["view"] == "latent")
    summary = json.loads((out / "summary.json").read_text())
    assert finite(summary) and set(summary["table"]) == {"full", "first", "last", "bm25", "mean", "latent", "no_time"}
    for name in ("table.md", "latent_k.png", "latent_buckets.png", "latent_curves.png"):
        assert (out / name).stat().st_size > 0
    # a rerun finds every cell done and trains nothing
    lines = []
    assert run_study(data, out, quick_settings(), log=lines.append) == cells and not lines
    assert (out / "cells.jsonl").read_text().count("\n") == len(cells)
    model, _ = load_reader(out / "runs" / "latent-k4-s0", data)
    first = evaluate(model, test_rows[:8], "latent", 4, 96, load_tokenizer(data), 6)
    assert first == evaluate(model, test_rows[:8], "latent", 4, 96, load_tokenizer(data), 6)


def test_every_arm_is_known():
    assert set(ARMS) == {"latent", "shared", "no_time", "single_layer", "no_projection", "no_aux", "query"}
