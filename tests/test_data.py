"""The dataset: sizes, disjointness, validity of every reference, corrupt labels, determinism."""

from __future__ import annotations

import json
import statistics

import pyarrow.parquet as pq
import pytest

from rollout.datagen.corrupt import PROGRAM_CODES
from rollout.datagen.dataset import build_dataset, read_split
from rollout.datagen.intents import TEMPLATES, template_ids
from rollout.tokenizer import SPECIAL_TOKENS
from validator_actors.tokens import TokenCounter
from validator_actors import ir
from validator_actors.codebook import load_codebook
from validator_actors.validator import Validator

SPLITS = ("train", "val", "test", "heldout")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The default dataset, exactly as `tinycompress data --n 10000 --seed 0` writes it."""
    out = tmp_path_factory.mktemp("data10k")
    stats = build_dataset(out, n=10000, seed=0, progress=lambda m: None)
    rows = {s: read_split(out, s).to_pylist() for s in SPLITS + ("corrupt",)}
    return out, stats, rows


def test_split_sizes(full):
    _, _, rows = full
    assert [len(rows[s]) for s in SPLITS] == [8000, 1000, 1000, 1000]
    assert len(rows["corrupt"]) >= 40 * len(PROGRAM_CODES)


def test_splits_disjoint_by_intent_and_program(full):
    _, _, rows = full
    intents = {s: {r["intent"] for r in rows[s]} for s in SPLITS}
    programs = {s: {r["program"] for r in rows[s]} for s in ("train", "val", "test")}
    assert all(len(intents[s]) == len(rows[s]) for s in SPLITS), "duplicate intent inside a split"
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not intents[a] & intents[b], f"{a} and {b} share intents"
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not programs[a] & programs[b], f"{a} and {b} share programs"


def test_paraphrases_reword_train_programs_only(full):
    _, _, rows = full
    para = read_split(full[0], "train_paraphrases").to_pylist()
    assert len(para) >= 3.9 * len(rows["train"])
    assert {r["program"] for r in para} <= {r["program"] for r in rows["train"]}
    others = {r["intent"] for s in SPLITS for r in rows[s]}
    assert not {r["intent"] for r in para} & others
    v = Validator()
    assert all(v.validate(r["surface"], r["reference_hash"]).valid for r in para[::7])


def test_heldout_uses_only_unseen_templates(full):
    _, _, rows = full
    seen = {r["template_id"] for s in ("train", "val", "test") for r in rows[s]}
    held = {r["template_id"] for r in rows["heldout"]}
    assert len(TEMPLATES) >= 48 and len(seen) >= 40
    assert held == set(template_ids(heldout=True)) and not held & seen


def test_every_reference_passes_the_validator(full):
    _, _, rows = full
    v = Validator()
    for split in SPLITS:
        for r in rows[split]:
            ref = v.validate(r["program"], r["reference_hash"])
            assert ref.valid, (split, r["program"], ref.codes)
            assert ref.canonical == r["program"], "reference programs are canonical"
            assert v.validate(r["minimal"], r["reference_hash"]).valid, r["minimal"]
            assert v.validate(r["surface"], r["reference_hash"]).valid, r["surface"]


def test_every_corrupt_item_fails_with_its_label(full):
    _, _, rows = full
    v = Validator()
    assert {r["expected_code"] for r in rows["corrupt"]} == set(PROGRAM_CODES)
    for r in rows["corrupt"]:
        report = v.validate(r["program"], r["reference"])
        assert not report.valid
        assert report.codes == [r["expected_code"]], (r["program"][:80], report.codes)


def test_compression_is_real_and_stats_match_the_files(full):
    out, stats, rows = full
    count = TokenCounter(out / "tokenizer")
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats, sort_keys=True))
    for split in SPLITS:
        intents = count([r["intent"] for r in rows[split]])
        programs = count([r["program"] for r in rows[split]])
        comp = statistics.fmean(1 - p / i for p, i in zip(programs, intents))
        assert comp >= 0.8, f"{split}: reference programs only {comp:.1%} shorter than intents"
        assert abs(comp - stats["splits"][split]["compression_mean"]) < 1e-4
        assert [r["intent_tokens"] for r in rows[split]] == intents


def test_coverage_of_symbols_and_program_kinds(full):
    _, stats, rows = full
    cb = load_codebook()
    train = stats["splits"]["train"]
    assert all(train["radical_coverage"][r] > 0 for r in cb.radicals)
    assert all(train["context_coverage"][c] > 0 for c in cb.contexts)
    for tag in ("all_rules", "legacy", "compound", "or", "run", "default_context"):
        assert train["tags"].get(tag, 0) > 50, tag
    numbers = {(a[0], a[1]) for r in rows["train"]
               for c in ir.meaning(ir.parse(r["program"], cb), cb).clauses for a in c}
    assert all((rad, n) in numbers for rad in cb.entries for n in cb.numbers(rad))


def test_shorter_forms_exist_for_the_marked_kinds(full):
    _, _, rows = full
    for r in rows["train"]:
        if {"all_rules", "default_context", "run"} & set(r["tags"]):
            assert len(r["minimal"]) < len(r["program"]), r["program"]
        assert r["minimal_tokens"] <= r["program_tokens"], r["program"]
    gain = statistics.fmean(r["program_tokens"] - r["minimal_tokens"] for r in rows["train"])
    assert gain > 2, "RL should have real room to shorten canonical programs"


def test_tokenizer_is_a_transformers_fast_tokenizer(full):
    from transformers import AutoTokenizer

    out, _, rows = full
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.is_fast
    for name, value in SPECIAL_TOKENS.items():
        assert getattr(tok, name) == value and tok.convert_tokens_to_ids(value) != tok.unk_token_id
    for r in rows["test"][:200]:
        for text in (r["intent"], r["program"], r["minimal"]):
            assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for path, seed in ((a, 3), (b, 3), (c, 4)):
        build_dataset(path, n=300, seed=seed, progress=lambda m: None)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 9  # 6 parquet, stats.json, 2 tokenizer files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "train.parquet").read_bytes() != (c / "train.parquet").read_bytes()
    assert pq.read_table(a / "train.parquet").num_rows == 240


def test_rl_prompts_are_new_intents_with_no_val_or_test_program(tmp_path):
    """``tinycompress data --rl N --rl-only``: N GRPO intents that no split (paraphrases included)
    has, whose programs stay out of val and test, each reference passing the validator; the
    other files are left as they were."""
    import hashlib

    from rollout.datagen.dataset import build_rl_prompts

    out = tmp_path / "data"
    build_dataset(out, n=400, seed=3, progress=lambda m: None, paraphrases=2)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.parquet")}
    stats = build_rl_prompts(out, 150, seed=3, progress=lambda m: None)
    rl = read_split(out, "rl").to_pylist()
    assert len(rl) == stats["count"] == 150 and len({r["intent"] for r in rl}) == 150
    names = (*SPLITS, "heldout", "train_paraphrases")
    seen = {r["intent"] for s in names for r in read_split(out, s).to_pylist()}
    assert not {r["intent"] for r in rl} & seen
    held = {r["program"] for s in ("val", "test") for r in read_split(out, s).to_pylist()}
    assert not {r["program"] for r in rl} & held
    v = Validator()
    assert all(v.validate(r["surface"], r["reference_hash"]).valid for r in rl)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.parquet")
            if p.name != "rl.parquet"} == before
    build_rl_prompts(out, 150, seed=3, progress=lambda m: None)
    assert read_split(out, "rl").to_pylist() == rl, "same seed, same rows"
    assert {r["program"] for r in rl} & {r["program"] for r in read_split(out, "train").to_pylist()}, \
        "by default a train program may come back in new words"
    build_rl_prompts(out, 150, seed=3, progress=lambda m: None, new_programs=True)
    train_programs = {r["program"] for r in read_split(out, "train").to_pylist()}
    assert not {r["program"] for r in read_split(out, "rl").to_pylist()} & train_programs


def test_rl_set_share_fixes_the_fraction_of_intents_that_write_a_complete_set(tmp_path):
    """``--rl-set-share F``: round(F * N) of the rl intents have a star token in their minimal
    form, the rest none; the other guarantees (new intents, no val/test program) still hold."""
    from rollout.datagen.dataset import build_rl_prompts

    out = tmp_path / "data"
    build_dataset(out, n=400, seed=3, progress=lambda m: None, paraphrases=0)
    build_rl_prompts(out, 120, seed=3, progress=lambda m: None)
    drawn = sum("*" in r["minimal"] for r in read_split(out, "rl").to_pylist())
    build_rl_prompts(out, 120, seed=3, progress=lambda m: None, set_share=0.5)
    rl = read_split(out, "rl").to_pylist()
    stars = [r for r in rl if "*" in r["minimal"]]
    assert len(rl) == 120 and len(stars) == 60 > 2 * drawn
    assert all(r["minimal_tokens"] < r["program_tokens"] for r in stars)
    assert any("*" in r["minimal"] for r in rl[60:]), "the two kinds are shuffled together"
    held = {r["program"] for s in ("val", "test") for r in read_split(out, s).to_pylist()}
    assert not {r["program"] for r in rl} & held
    seen = {r["intent"] for s in (*SPLITS, "heldout") for r in read_split(out, s).to_pylist()}
    assert not {r["intent"] for r in rl} & seen
    with pytest.raises(ValueError, match="set_share"):
        build_rl_prompts(out, 10, progress=lambda m: None, set_share=1.5)

