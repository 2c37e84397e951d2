"""Build the intent dataset: train/val/test, held-out templates, corrupt programs, stats.

``build_dataset(out, n=10000, seed=0)`` writes, deterministically (same seed, same bytes):

- ``train.parquet`` / ``val.parquet`` / ``test.parquet`` (80/10/10 of ``n``), disjoint by intent
  text and by program (every program appears in one split only);
- ``heldout.parquet`` (``n/10`` intents rendered with templates never used in the three splits);
- ``corrupt.parquet`` (invalid programs, each labelled with the error code it must produce);
- ``train_paraphrases.parquet`` (``paraphrases`` new wordings of every train request: same
  programs as train, new intent texts, train templates; for supervised training only);
- ``tokenizer/`` (BPE trained on the train split) and ``stats.json``.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from rollout.datagen.intents import Example, IntentGenerator, surface_program, template_ids
from rollout.tokenizer import save_tokenizer, train_bpe
from validator_actors.tokens import TokenCounter
from validator_actors import ir
from validator_actors.codebook import Codebook, load_codebook
from validator_actors.validator import Validator

SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)
EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("intent", pa.string()), ("program", pa.string()),
    ("minimal", pa.string()), ("surface", pa.string()), ("reference_hash", pa.string()), ("template_id", pa.int32()),
    ("context", pa.string()), ("n_clauses", pa.int32()), ("n_atoms", pa.int32()),
    ("tags", pa.list_(pa.string())), ("intent_tokens", pa.int32()),
    ("program_tokens", pa.int32()), ("minimal_tokens", pa.int32()),
])
CORRUPT_SCHEMA = pa.schema([
    ("id", pa.string()), ("program", pa.string()), ("reference", pa.string()),
    ("expected_code", pa.string()), ("source_program", pa.string()), ("mutation", pa.string()),
])


def _unique_examples(gen: IntentGenerator, n: int, templates: list[int], seen_intents: set[str],
                     seen_programs: set[str] | None, held_programs: frozenset[str] = frozenset(),
                     keep: Callable[[Example], bool] | None = None) -> list[Example]:
    """``n`` examples with new intent texts (and new programs when ``seen_programs`` is given),
    none with a program in ``held_programs``, each one ``keep`` accepts if given."""
    out: list[Example] = []
    while len(out) < n:
        ex = gen.example(gen.rng.choice(templates))
        program = ir.canonical(ex.meaning, gen.cb)
        if (ex.intent in seen_intents or program in held_programs
                or (seen_programs is not None and program in seen_programs)
                or (keep is not None and not keep(ex))):
            continue
        seen_intents.add(ex.intent)
        if seen_programs is not None:
            seen_programs.add(program)
        out.append(ex)
    return out


def split_sizes(n: int) -> dict[str, int]:
    train, val = int(n * FRACTIONS[0]), int(n * FRACTIONS[1])
    return {"train": train, "val": val, "test": n - train - val}


def _rows(examples: list[Example], split: str, cb: Codebook, validator: Validator, count: TokenCounter) -> dict:
    programs = [ir.canonical(e.meaning, cb) for e in examples]
    minimals = [ir.minimal(e.meaning, cb) for e in examples]
    intents = [e.intent for e in examples]
    return {
        "id": [f"{split}-{i:05d}" for i in range(len(examples))],
        "intent": intents,
        "program": programs,
        "minimal": minimals,
        "surface": [surface_program(e.plan, cb) for e in examples],
        "reference_hash": [validator.validate(p).hash for p in programs],
        "template_id": [e.template_id for e in examples],
        "context": [e.meaning.context for e in examples],
        "n_clauses": [len(e.meaning.clauses) for e in examples],
        "n_atoms": [sum(len(c) for c in e.meaning.clauses) for e in examples],
        "tags": [list(e.tags) for e in examples],
        "intent_tokens": count(intents),
        "program_tokens": count(programs),
        "minimal_tokens": count(minimals),
    }


def _write(table: pa.Table, path: Path) -> None:
    # fixed writer options so the same rows give the same bytes
    pq.write_table(table, path, compression="zstd", use_dictionary=True, write_statistics=True)


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    pct = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": round(statistics.fmean(values), 4), "p50": pct(0.5), "p95": pct(0.95),
            "min": ordered[0], "max": ordered[-1]}


def _split_stats(rows: dict, cb: Codebook) -> dict:
    comp = [1 - p / i for p, i in zip(rows["program_tokens"], rows["intent_tokens"])]
    comp_min = [1 - p / i for p, i in zip(rows["minimal_tokens"], rows["intent_tokens"])]
    radicals: dict[str, int] = {r: 0 for r in cb.radicals}
    for prog in rows["program"]:
        m = ir.meaning(ir.parse(prog, cb), cb)
        for r in {a[0] for c in m.clauses for a in c}:
            radicals[r] += 1
    tags: dict[str, int] = {}
    for t in rows["tags"]:
        for tag in t:
            tags[tag] = tags.get(tag, 0) + 1
    return {
        "count": len(rows["id"]),
        "intent_tokens": _summary(rows["intent_tokens"]),
        "program_tokens": _summary(rows["program_tokens"]),
        "minimal_tokens": _summary(rows["minimal_tokens"]),
        "intent_chars": _summary([len(t) for t in rows["intent"]]),
        "compression_mean": round(statistics.fmean(comp), 4),
        "compression_minimal_mean": round(statistics.fmean(comp_min), 4),
        "compression_of_totals": round(1 - sum(rows["program_tokens"]) / sum(rows["intent_tokens"]), 4),
        "radical_coverage": radicals,
        "context_coverage": {c: rows["context"].count(c) for c in cb.contexts},
        "tags": dict(sorted(tags.items())),
        "templates_used": sorted(set(rows["template_id"])),
    }


def _paraphrases(gen: IntentGenerator, train: list[Example], k: int, seen: set[str]) -> list[Example]:
    """``k`` new wordings of every train request (train templates only, intents all new)."""
    out = []
    for ex in train:
        for _ in range(k):
            for _attempt in range(20):
                para = gen.paraphrase(ex, gen.rng.choice(template_ids(False)))
                if para.intent not in seen:
                    seen.add(para.intent)
                    out.append(para)
                    break
    return out


def build_dataset(out: str | Path, n: int = 10000, seed: int = 0, vocab_size: int = 2048,
                  progress=print, paraphrases: int = 4) -> dict:
    """Generate every file of the dataset under ``out``; return the stats."""
    from rollout.datagen.corrupt import corrupt_rows

    if n < 30:
        raise ValueError(f"n={n} is too small: each of train/val/test needs at least a few rows")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cb, validator = load_codebook(), Validator()
    gen = IntentGenerator(cb, seed)
    seen_intents: set[str] = set()
    progress(f"generating {n} intents with {len(template_ids(False))} templates")
    main = _unique_examples(gen, n, template_ids(False), seen_intents, set())
    random.Random(seed).shuffle(main)
    sizes = split_sizes(n)
    parts, start = {}, 0
    for split in SPLITS:
        parts[split] = main[start : start + sizes[split]]
        start += sizes[split]
    progress(f"generating {n // 10} held-out intents with {len(template_ids(True))} unseen templates")
    parts["heldout"] = _unique_examples(gen, max(1, n // 10), template_ids(True), seen_intents, None)
    progress("training the BPE tokenizer on the train split")
    train_texts = [e.intent for e in parts["train"]]
    train_texts += [ir.canonical(e.meaning, cb) for e in parts["train"]]
    train_texts += [ir.minimal(e.meaning, cb) for e in parts["train"]]
    tok = train_bpe(train_texts, vocab_size=vocab_size)
    if paraphrases:
        # drawn after everything else, from their own stream, so the other files do not change
        progress(f"generating {paraphrases} paraphrases of every train intent")
        para_gen = IntentGenerator(cb, seed + 1_000_003)
        parts["train_paraphrases"] = _paraphrases(para_gen, parts["train"], paraphrases, seen_intents)
    save_tokenizer(tok, out / "tokenizer")
    count = TokenCounter(out / "tokenizer")
    stats: dict = {"seed": seed, "n": n, "codebook_version": cb.version,
                   "vocab_size": tok.get_vocab_size(), "splits": {}}
    for split, examples in parts.items():
        rows = _rows(examples, split, cb, validator, count)
        _write(pa.table(rows, schema=EXAMPLE_SCHEMA), out / f"{split}.parquet")
        stats["splits"][split] = _split_stats(rows, cb)
        progress(f"wrote {split}.parquet ({len(examples)} rows)")
    corrupt = corrupt_rows(parts["train"] + parts["val"], cb, seed, per_code=max(5, n // 250))
    _write(pa.table(corrupt, schema=CORRUPT_SCHEMA), out / "corrupt.parquet")
    stats["corrupt"] = {"count": len(corrupt["id"]),
                        "per_code": {c: corrupt["expected_code"].count(c)
                                     for c in sorted(set(corrupt["expected_code"]))}}
    progress(f"wrote corrupt.parquet ({len(corrupt['id'])} rows)")
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


RL_SEED_OFFSET = 2_000_029


def _writes_a_set(ex: Example, cb: Codebook) -> bool:
    """Whether the minimal form of ``ex`` writes a complete set as one star token (``I*?``)."""
    return "*" in ir.minimal(ex.meaning, cb)


def build_rl_prompts(data_dir: str | Path, n: int, seed: int = 0, progress=print,
                     new_programs: bool = False, set_share: float | None = None) -> dict:
    """Write ``rl.parquet``: ``n`` intents for GRPO that supervised training never saw.

    Train templates, intent texts new to every split (paraphrases included), and programs
    outside val and test, so the evaluation stays clean (they may repeat a train program in new
    words, as the paraphrases do). Same columns as the splits, token counts with the dataset's
    own tokenizer. The 10m warm start saw train and its paraphrases for 15 epochs and gives
    their programs p ~ 1 at every token; on intents it has never seen it is less sure, and
    that is where a GRPO step's failures and its protective gradients are. ``new_programs``:
    no train program either, so that every intent asks for a combination SFT never wrote, as
    every val and test intent does (val and test are disjoint from train by program).
    ``set_share``: the fraction of intents whose minimal form writes a complete set as one star
    token (about 0.11 as drawn; None keeps the draw). Those are where nearly all of GRPO's
    saving is, and where the policy has to learn what follows a token it never wrote.
    """

    if set_share is not None and not 0.0 <= set_share <= 1.0:
        raise ValueError(f"set_share must be in [0, 1], got {set_share}")

    data_dir = Path(data_dir)
    cb, validator = load_codebook(), Validator()
    splits = {name: read_split(data_dir, name) for name in (*SPLITS, "heldout", "train_paraphrases")
              if (data_dir / f"{name}.parquet").exists()}
    seen_intents = {i for t in splits.values() for i in t.column("intent").to_pylist()}
    held = ("val", "test", "train") if new_programs else ("val", "test")
    held_programs = frozenset(p for name in held for p in splits[name].column("program").to_pylist())
    gen = IntentGenerator(cb, seed + RL_SEED_OFFSET)
    progress(f"generating {n} GRPO intents (new wordings, no {'/'.join(held)} program"
             + (f", {set_share:.0%} writing a complete set)" if set_share is not None else ")"))
    templates = template_ids(False)
    if set_share is None:
        examples = _unique_examples(gen, n, templates, seen_intents, None, held_programs)
    else:
        n_sets = round(n * set_share)
        examples = (_unique_examples(gen, n_sets, templates, seen_intents, None, held_programs,
                                     keep=lambda ex: _writes_a_set(ex, cb))
                    + _unique_examples(gen, n - n_sets, templates, seen_intents, None, held_programs,
                                       keep=lambda ex: not _writes_a_set(ex, cb)))
        gen.rng.shuffle(examples)
    rows = _rows(examples, "rl", cb, validator, TokenCounter(data_dir / "tokenizer"))
    _write(pa.table(rows, schema=EXAMPLE_SCHEMA), data_dir / "rl.parquet")
    progress(f"wrote rl.parquet ({n} rows)")
    return _split_stats(rows, cb)


def read_split(data_dir: str | Path, split: str) -> pa.Table:
    """Read one split (train, val, test, heldout or corrupt) with a clear error if missing."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build the data first with `tinycompress data --out {data_dir}`"
        )
    return pq.read_table(path)
