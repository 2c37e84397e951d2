"""The policy, its warm start, the sampler and the evaluator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.config import RunConfig
from learner.policy import NOMINAL_PARAMS, PRESETS, build_policy, count_params, load_policy, save_policy
from learner.sft import IGNORE, SFTTrainer, build_examples, collate, completion_loss
from rollout.datagen.dataset import build_dataset, read_split
from rollout.sampler import Sampler, sequence_logprobs
from validator_actors.validator import Validator

TINY = {"model": {"preset": "tiny"},
        "sft": {"lr": 3e-3, "warmup_steps": 1, "batch_size": 8, "max_steps": 4, "eval_every": 2,
                "eval_samples": 8, "patience": 0, "max_new_tokens": 24, "precision": "fp32"}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy_data")
    build_dataset(out, n=300, seed=2, progress=lambda m: None)
    return out


@pytest.fixture(scope="module")
def tok(data):
    return AutoTokenizer.from_pretrained(str(data / "tokenizer"))


@pytest.mark.parametrize("preset", ["10m", "50m"])
def test_preset_parameter_counts_within_ten_percent(preset, tok):
    n = count_params(build_policy(PRESETS[preset], tok))
    assert abs(n - NOMINAL_PARAMS[preset]) / NOMINAL_PARAMS[preset] < 0.10, n


def test_learned_encoding_factorizes_the_embedding(tok):
    plain = count_params(build_policy(PRESETS["tiny"], tok))
    fact = build_policy(PRESETS["tiny"].with_(d_enc=16), tok)
    emb = fact.model.embed_tokens
    assert emb.codes.weight.shape == (len(tok), 16) and emb.proj.weight.shape == (64, 16)
    assert count_params(fact) != plain


def test_completion_only_loss(tok, data):
    rows = read_split(data, "train").to_pylist()[:4]
    batch = collate(build_examples(tok, rows, 192), tok.pad_token_id)
    n_prompt = [len(tok(r["intent"], add_special_tokens=False)["input_ids"]) + 2 for r in rows]
    for i, n in enumerate(n_prompt):
        assert (batch["labels"][i, :n] == IGNORE).all() and (batch["labels"][i, n] != IGNORE)
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, len(tok))
    base = completion_loss(logits, batch["labels"])
    bumped = logits.clone()
    for i, n in enumerate(n_prompt):  # positions < n-1 predict prompt tokens
        bumped[i, : n - 1] += 5 * torch.randn_like(bumped[i, : n - 1])
    assert torch.allclose(completion_loss(bumped, batch["labels"]), base)
    bumped[0, n_prompt[0] - 1] += 5 * torch.randn(len(tok))  # predicts the first program token
    assert not torch.allclose(completion_loss(bumped, batch["labels"]), base)


def test_one_sft_step_changes_every_parameter_and_lowers_the_loss(data, tmp_path):
    trainer = SFTTrainer(RunConfig.from_dict(TINY), data, tmp_path / "ck", device="cpu", log=lambda m: None)
    batch = collate(trainer.train[:8], trainer.tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    first = trainer.step(batch)
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(before[n], p)]
    assert not unchanged, unchanged
    assert torch.isfinite(torch.tensor(first))
    for _ in range(5):
        last = trainer.step(batch)
    assert last < first


def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it():
    from learner.scoring import native_bf16
    from learner.sft import use_bf16

    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu) == native_bf16(cpu)  # emulated bf16 trained 20x slower
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)


def test_forms_target_redraws_equivalent_programs_each_epoch(data, tmp_path):
    from validator_actors import ir
    from validator_actors.codebook import load_codebook

    cfg = RunConfig.from_dict({**TINY, "sft": {**TINY["sft"], "target": "forms"}})
    trainer = SFTTrainer(cfg, data, tmp_path / "ck", log=lambda m: None)
    cb = load_codebook()
    texts = [trainer.tok.decode(ids[n:-1]) for ids, n in trainer.train]
    assert len(texts) == len(trainer.train_rows)
    for text, row in zip(texts, trainer.train_rows):  # every target means its row's program
        assert ir.meaning(ir.parse(text, cb), cb) == ir.meaning(ir.parse(row["program"], cb), cb)
    assert sum(t != r["surface"] for t, r in zip(texts, trainer.train_rows)) > len(texts) // 4
    cfg2 = RunConfig.from_dict({**TINY, "sft": {**TINY["sft"], "target": "forms", "epochs": 2.0,
                                                "max_steps": 0, "batch_size": 512, "eval_every": 1000}})
    before = list(SFTTrainer(cfg2, data, tmp_path / "ck2", log=lambda m: None).train)
    trainer2 = SFTTrainer(cfg2, data, tmp_path / "ck2", log=lambda m: None)
    assert trainer2.train == before  # the first epoch's draw is seeded
    trainer2.fit()
    assert trainer2.train != before and [i[:n] for i, n in trainer2.train] == [i[:n] for i, n in before]


def test_sft_init_continues_a_checkpoint_and_refuses_another_preset(data, tmp_path):
    first = SFTTrainer(RunConfig.from_dict(TINY), data, tmp_path / "a", log=lambda m: None)
    first.fit()
    second = SFTTrainer(RunConfig.from_dict(TINY), data, tmp_path / "b", init=tmp_path / "a",
                        log=lambda m: None)
    saved, _, _ = load_policy(tmp_path / "a")
    for (name, p), q in zip(second.model.named_parameters(), saved.parameters()):
        assert torch.equal(p, q), name
    assert second.model.training
    with pytest.raises(ValueError, match="policy"):
        SFTTrainer(RunConfig.from_dict({**TINY, "model": {"preset": "10m"}}), data, tmp_path / "c",
                   init=tmp_path / "a", log=lambda m: None)


@pytest.mark.parametrize("target", ["surface", "forms"])
def test_an_interrupted_sft_resumes_to_the_weights_of_an_uninterrupted_one(data, tmp_path, target):
    """Stopped after its third evaluation (inside the second epoch, whose ``forms`` are new) and
    resumed, a run ends with the same weights, log and best step as one that never stopped."""
    from safetensors.torch import load_file

    from learner.sft import RESUME_DIR

    cfg = RunConfig.from_dict({**TINY, "sft": {**TINY["sft"], "target": target, "epochs": 2.0, "max_steps": 0,
                                               "batch_size": 32, "eval_every": 3, "eval_samples": 4,
                                               "paraphrases": False, "patience": 0, "num_threads": 1}})
    whole = SFTTrainer(cfg, data, tmp_path / "whole", log=lambda m: None)
    per_epoch = -(-len(whole.train) // 32)
    assert per_epoch < 9 < whole.total_steps - 3, "the stop at step 9 is inside the second epoch"
    done = whole.fit()

    class Stop(Exception):
        pass

    stopped = SFTTrainer(cfg, data, tmp_path / "cut", log=lambda m: None)
    save = stopped._save_resume

    def save_then_stop(step, *args):
        save(step, *args)
        if step == 9:
            raise Stop  # as a kill right after the state of step 9 was written

    stopped._save_resume = save_then_stop
    with pytest.raises(Stop):
        stopped.fit()
    assert (tmp_path / "cut" / RESUME_DIR / "state.json").exists()
    resumed = SFTTrainer(cfg, data, tmp_path / "cut", log=lambda m: None, resume=True).fit()
    assert (resumed.steps, resumed.best_step) == (done.steps, done.best_step)
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    log = lambda run: [json.loads(line)["step"] for line in (tmp_path / run / "sft_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert log("cut") == log("whole"), "an evaluation lost or repeated"
    assert not (tmp_path / "cut" / RESUME_DIR).exists(), "a finished run leaves no resume state"


def test_sampler_logprobs_match_a_fresh_forward_pass(tok):
    model = build_policy(PRESETS["tiny"], tok, seed=1).eval()
    with torch.no_grad():  # make <eos> likely so rows finish at different steps
        model.model.embed_tokens.weight[tok.eos_token_id] *= 0
        model.model.embed_tokens.weight[tok.eos_token_id] += model.model.norm.weight * 0.6
    sampler = Sampler(model, tok, max_new_tokens=16, temperature=0.8, top_p=0.9)
    intents = ["please check contract rule 3 in the build", "hi", "waive invariant 7 for the audit, thanks"]
    out = sampler.sample(intents, 4, generator=torch.Generator().manual_seed(0), policy_version=7)
    assert out.completion_ids.shape[0] == 12 and out.policy_version == 7
    assert len(set(out.lengths.tolist())) > 1, "rows should finish at different steps"
    for r in range(12):
        n = int(out.lengths[r])
        ref = sequence_logprobs(model, out.prompt_ids[r // 4], out.completion_ids[r, :n].tolist(), 0.8)
        assert torch.allclose(ref, out.logprobs[r, :n], atol=1e-4)
        assert not out.mask[r, n:].any() and (out.logprobs[r, n:] == 0).all()


def test_save_load_round_trip_gives_identical_logits(tok, tmp_path):
    ids = torch.tensor([[tok.bos_token_id, 5, 9, 33, tok.sep_token_id, 12]])
    for d_enc in (None, 16):
        cfg = PRESETS["tiny"].with_(d_enc=d_enc)
        model = build_policy(cfg, tok, seed=3).eval()
        path = save_policy(model, tok, cfg, tmp_path / f"ck{d_enc}", {"stage": "test"})
        reloaded = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
        again, _, meta = load_policy(path, trainable_encoding=True)
        assert meta["policy"]["d_enc"] == d_enc
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_greedy_decoding_is_deterministic(tok):
    model = build_policy(PRESETS["tiny"], tok, seed=4).eval()
    sampler = Sampler(model, tok, max_new_tokens=12)
    intents = ["check rule 3", "enforce every invariant during the audit please"]
    a, b = sampler.sample(intents, 1, greedy=True), sampler.sample(intents, 1, greedy=True)
    assert a.texts == b.texts and torch.equal(a.completion_ids, b.completion_ids)
    one = sampler.sample(intents[1:], 1, greedy=True)
    assert one.texts[0] == a.texts[1], "batch composition must not change a greedy answer"


def test_config_is_strict_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="unknown key sft.learning_rate"):
        RunConfig.from_dict({"sft": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match="unknown preset"):
        RunConfig.from_dict({"model": {"preset": "7b"}})
    with pytest.raises(TypeError, match="sft.batch_size must be int"):
        RunConfig.from_dict({"sft": {"batch_size": "32"}})
    for name in ("tiny", "10m", "50m", "10m_full_sets"):
        cfg = RunConfig.from_yaml(f"tune_configs/{name}.yaml")
        cfg.to_yaml(tmp_path / f"{name}.yaml")
        assert RunConfig.from_yaml(tmp_path / f"{name}.yaml") == cfg


def test_sft_and_eval_entry_points(data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    RunConfig.from_dict(TINY).to_yaml(cfg)
    ck = tmp_path / "ck"
    run = lambda *a: subprocess.run([sys.executable, "-m", "cluster.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    proc = run("sft", "--config", str(cfg), "--data", str(data), "--out", str(ck))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (ck / "model.safetensors").exists() and (ck / "tokenizer.json").exists()
    summary = json.loads((ck / "sft_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_per_s"] > 0
    proc = run("eval", "--checkpoint", str(ck), "--data", str(data), "--split", "heldout",
               "--limit", "4", "--batch", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["model"]["n"] == 4 and report["baseline"]["n"] == 4
    assert report["model"]["size_mb"] > 0 and "p95" in report["model"]["latency_ms"]


def _choose(candidates, intent, **kw):
    from rollout.baseline import RuleBasedCompressor
    from rollout.choose import choose
    from validator_actors.validator import Validator

    return choose(candidates, intent, validator=Validator(), count=lambda ts: [len(t) for t in ts],
                  fallback=RuleBasedCompressor().compress, **kw)


def test_choose_keeps_the_shortest_valid_candidate_and_counts_agreement():
    c = _choose(["I5:execute", "C99", "I5", "I5"], "enforce invariant 5")
    assert (c.source, c.program, c.tokens) == ("model", "I5", 2), "the shortest valid candidate wins"
    assert c.valid_candidates == 3 and c.agreement == 0.75, "3 of 4 candidates mean what the answer means"
    ties = _choose(["C4", "C3"], "check contract rule 3 or 4")
    assert ties.program == "C3", "a tie in length is broken by text, never by order"


def test_choose_falls_back_to_the_rules_when_no_candidate_is_valid():
    c = _choose(["nonsense", "C99", ""], "skip verification")
    assert (c.source, c.program) == ("fallback", "V!:execute") and c.report.valid
    assert c.valid_candidates == 0 and c.agreement == 0.0 and len(c.reports) == 3


def test_choose_adds_a_shorter_spelling_only_when_it_means_the_same():
    long = "C2?&V:execute>_runs/x_14"
    plain = _choose([long], "check contract rule 2 and verify, write to _runs/x_14")
    short = _choose([long], "check contract rule 2 and verify, write to _runs/x_14", shorter_forms=True)
    assert plain.program == long
    assert short.tokens < plain.tokens and short.report.hash == plain.report.hash
    assert short.valid_candidates == 1, "a rewrite is not a decoded candidate"


def test_an_untrained_policy_falls_back(tok):
    model = build_policy(PRESETS["tiny"], tok, seed=5).eval()
    intent = "check contract rule 3 while building"
    texts = Sampler(model, tok, max_new_tokens=8).sample([intent], 2).texts
    c = _choose(texts, intent)
    assert c.source == "fallback" and c.program == "C3?:build"


def test_the_shipped_10m_checkpoint_compresses_fresh_intents():
    """serve/assets/compressor_10m is the warm start the later issues build on."""
    from pathlib import Path

    from rollout.datagen.intents import IntentGenerator, template_ids
    from validator_actors import ir
    from validator_actors.codebook import load_codebook
    from validator_actors.validator import Validator

    path = Path(__file__).parent.parent / "serve" / "assets" / "compressor_10m"
    model, tok, meta = load_policy(path)
    assert meta["stage"] == "sft" and meta["policy"]["name"] == "10m"
    cb, v = load_codebook(), Validator()
    gen = IntentGenerator(cb, seed=987)  # intents no split holds
    examples = [gen.example(t) for t in template_ids(False)[:30]]
    out = Sampler(model, tok, max_new_tokens=96).sample([e.intent for e in examples], 1, greedy=True)
    passed = [v.validate(p, ir.canonical(e.meaning, cb)).valid for p, e in zip(out.texts, examples)]
    assert sum(passed) / len(passed) >= 0.8, list(zip(out.texts, passed))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sft_step_and_sampling_on_the_gpu(data, tmp_path):
    auto = {**TINY, "sft": {**TINY["sft"], "precision": "auto"}}
    trainer = SFTTrainer(RunConfig.from_dict(auto), data, tmp_path / "ck", device="cuda", log=lambda m: None)
    assert trainer.bf16 == torch.cuda.is_bf16_supported()
    batch = collate(trainer.train[:8], trainer.tok.pad_token_id)
    first = trainer.step(batch)
    for _ in range(5):
        last = trainer.step(batch)
    assert last < first
    out = Sampler(trainer.model.eval(), trainer.tok, max_new_tokens=8).sample(["check rule 3"], 2)
    n = int(out.lengths[0])
    ref = sequence_logprobs(trainer.model, out.prompt_ids[0], out.completion_ids[0, :n].tolist())
    assert torch.allclose(ref, out.logprobs[0, :n], atol=1e-3)


def test_checkpoint_size_counts_the_model_weights_only(tmp_path):
    """A GRPO checkpoint also holds optimizer and RNG state; the reported size is the model's."""
    from learner.evaluate import checkpoint_size_mb

    for name, mib in (("model-00001-of-00002.safetensors", 3), ("model-00002-of-00002.safetensors", 1),
                      ("optimizer.safetensors", 8), ("rng.safetensors", 1)):
        (tmp_path / name).write_bytes(b"\0" * (mib * 2**20))
    assert checkpoint_size_mb(tmp_path) == 4.0


@pytest.mark.parametrize("d_enc", [None, 16])
def test_set_tokens_start_at_a_multiple_of_their_members_mean(d_enc):
    """``init_set_tokens``: each full-set token's row becomes scale x its members' mean, in the
    input and output embeddings (tied, or a learned encoding's codes plus an untied head); no
    other row moves."""
    from learner.policy import init_set_tokens

    tok = AutoTokenizer.from_pretrained("serve/assets/compressor_10m")  # the dataset's BPE, with C*, I*!, ...
    model = build_policy(PRESETS["tiny"].with_(d_enc=d_enc), tok, seed=0)
    emb = model.get_input_embeddings()
    before_in = (emb.folded() if d_enc else emb.weight).detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    done = init_set_tokens(model, tok, 2.0)
    assert sorted(done) == ["C*", "C*!", "C*?", "I*", "I*!", "I*?"]
    after_in = (emb.folded() if d_enc else emb.weight).detach()
    after_out = model.get_output_embeddings().weight.detach()
    vocab = tok.get_vocab()
    for star, n in (("C*!", 13), ("I*?", 20), ("C*", 13)):
        radical, op = star[0], star[2:]
        members = [vocab[f"{radical}{k}{op}"] for k in range(1, n + 1)]
        for before, after in ((before_in, after_in), (before_out, after_out)):
            assert torch.allclose(after[vocab[star]], 2.0 * before[members].mean(0), atol=1e-6)
    others = torch.ones(len(tok), dtype=torch.bool)
    others[list(done.values())] = False
    assert torch.equal(after_in[others], before_in[others]) and torch.equal(after_out[others], before_out[others])
    assert not torch.equal(after_in[~others], before_in[~others])


def test_a_checkpoint_folder_works_in_a_plain_text_generation_pipeline(tmp_path):
    """The shipped compressor in ``pipeline("text-generation")`` on a bare intent: its tokenizer
    writes the prompt layout (``<|bos|> intent <|sep|>``) itself, so the pipeline answers the
    program the project's own greedy sampler does; a checkpoint saved here carries it too."""
    from transformers import AutoTokenizer, pipeline

    from rollout.sampler import Sampler, encode_prompts

    shipped = Path(__file__).resolve().parents[1] / "serve" / "assets" / "compressor_10m"
    intent = "Please check contract rule 3 while building, and make sure invariant 5 holds. Thanks!"
    tok = AutoTokenizer.from_pretrained(str(shipped))
    assert tok(intent)["input_ids"] == encode_prompts(tok, [intent], 10**6)[0]
    gen = pipeline("text-generation", model=str(shipped), device="cpu")
    text = gen(intent, max_new_tokens=32, do_sample=False, return_full_text=False)[0]["generated_text"]
    model, tok2, _ = load_policy(shipped)
    assert text.strip() == Sampler(model, tok2, max_new_tokens=32).sample([intent], 1, greedy=True).texts[0]
    validator = Validator()  # the program the intent asks for, not a stray token
    assert validator.validate(text.strip(), validator.validate("C3?&I5?:build").hash).valid, text
    save_policy(model, tok2, PRESETS["10m"], tmp_path / "ck")
    assert AutoTokenizer.from_pretrained(str(tmp_path / "ck"))(intent)["input_ids"] == tok(intent)["input_ids"]
    assert tok2(intent, add_special_tokens=False)["input_ids"] == tok(intent, add_special_tokens=False)["input_ids"]
