"""Request histories for the latent-compression study: generated, deterministic by seed, Parquet.

A history is a list of turns an agent sent the compressor ("for the atlas job please run
C3?:build", "actually, drop that, atlas should run I5 instead", "thanks, that looks good"),
followed by one question ("which check does job atlas run?") whose answer is a program. Three
families, each with its own ``relevant_turn`` (the turn that holds the answer):

- ``needle``: the asked job is set once among many other jobs' settings and chatter;
- ``versioning``: the asked job is set two to four times, the latest setting wins;
- ``two_hop``: the asked job runs "the same check as" another job, which is set elsewhere.

Lengths run from a few turns to several times the reasoner's window (``LENGTH_BUCKETS`` are in
tokens of the study's BPE, trained on the train split). Train, val and test come from separate
random streams and are disjoint by history text (a repeat is redrawn).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("needle", "versioning", "two_hop")
LENGTH_BUCKETS = ((0, 96), (97, 192), (193, 384), (385, 10**9))
"""Context length buckets in tokens; the first is what the reasoner's window holds."""
SPLIT_FILES = {"train": "train.parquet", "val": "val.parquet", "test": "test.parquet"}
TOKENIZER_DIR = "tokenizer"

JOBS = ("atlas", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper",
        "kestrel", "lumen", "maple", "nova", "onyx", "pine", "quartz", "raven", "sable", "tundra",
        "umber", "vega", "willow", "yarrow", "zephyr", "alder", "basalt", "cobalt", "dune", "echo")
CONTEXTS = ("", ":build", ":audit", ":security", ":validate")
# In every setting the program comes two words after the job's name ("atlas runs <C3?>"), as in
# most of the agents' requests: a fixed distance a two-layer reader can learn to bridge.
SET = ("for the release, {n} runs {v}", "so {n} checks {v}", "set {n} to {v}, thanks", "could you make {n} use {v}",
       "please have {n} run {v} before the release", "let {n} run {v} tonight")
CORRECT = ("actually, drop that, {n} runs {v} instead", "change of plan: {n} uses {v} now",
           "scratch the earlier one, {n} gets {v}", "update: {n} takes {v}")
REFER = ("then {n} should run the same check as {m}", "make {n} match whatever {m} runs",
         "now {n} copies the check of {m}")
CHATTER = ("thanks, that looks good", "the build was slow again yesterday", "remind me to look at the dashboard later",
           "can we keep the logs a bit longer", "no rush on this one", "I will be out on friday",
           "the reviewers asked for more tests", "ok, let me know when the run finishes",
           "ticket {k} is still open", "we moved {k} files to the archive", "the queue had {k} jobs this morning",
           "please be careful with the release branch")
QUESTION = "which check does job {n} run?"


@dataclass(frozen=True)
class DataConfig:
    """Sizes and lengths of the generated histories."""

    train: int = 8000
    """Training histories."""
    val: int = 300
    """Validation histories (checkpoint choice, curves)."""
    test: int = 900
    """Test histories (every reported number)."""
    min_turns: int = 3
    """Fewest turns in a history."""
    max_turns: int = 56
    """Most turns; turn counts are drawn log-uniformly between the two."""
    job_share: float = 0.4
    """Share of the other turns that set another job (the rest is chatter)."""
    vocab_size: int = 1024
    """BPE vocabulary trained on the train split."""
    seed: int = 0

    def __post_init__(self):
        if min(self.train, self.val, self.test) < 1:
            raise ValueError("every split needs at least one history")
        if not 3 <= self.min_turns <= self.max_turns:
            raise ValueError(f"need 3 <= min_turns <= max_turns, got {self.min_turns}, {self.max_turns}")
        if not 0.0 <= self.job_share <= 1.0:
            raise ValueError(f"job_share must be in [0, 1], got {self.job_share}")


def program(rng: random.Random) -> str:
    """A short IR program: a rule or invariant, an optional check/deny, an optional context."""
    radical = rng.choice("CI")
    number = rng.randint(1, 13 if radical == "C" else 20)
    return f"{radical}{number}{rng.choice(('', '?', '!'))}{rng.choice(CONTEXTS)}"


def quoted(value: str) -> str:
    """A program inside a turn, between angle brackets: the BPE then cuts it as it cuts the bare
    answer (``<C8!:build>`` holds the tokens ``C8!``, ``:build``), so an answer can be copied."""
    return f"<{value}>"


def _chatter(rng: random.Random) -> str:
    return rng.choice(CHATTER).format(k=rng.randint(2, 999))


def history(family: str, rng: random.Random, cfg: DataConfig) -> dict:
    """One history of ``family``: turns, question, answer and the relevant turn's index."""
    n_turns = round(math.exp(rng.uniform(math.log(cfg.min_turns), math.log(cfg.max_turns))))
    asked, hop, *others = rng.sample(JOBS, k=len(JOBS))
    answer = program(rng)
    if family == "needle":
        key, value_at = [rng.choice(SET).format(n=asked, v=quoted(answer))], 0
    elif family == "versioning":
        stale = [program(rng) for _ in range(rng.randint(1, 3))]
        key = [rng.choice(SET).format(n=asked, v=quoted(stale[0]))]
        key += [rng.choice(CORRECT).format(n=asked, v=quoted(v)) for v in stale[1:] + [answer]]
        value_at = len(key) - 1
    elif family == "two_hop":
        value = rng.choice(SET).format(n=hop, v=quoted(answer))
        key = [value, rng.choice(REFER).format(n=asked, m=hop)]
        rng.shuffle(key)  # the value may come before or after the reference
        value_at = key.index(value)
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    rest = max(0, n_turns - len(key))
    filler = [rng.choice(SET).format(n=rng.choice(others), v=quoted(program(rng))) if rng.random() < cfg.job_share
              else _chatter(rng) for _ in range(rest)]
    slots = sorted(rng.sample(range(len(key) + rest), k=len(key)))  # key turns keep their order
    keys, fill = iter(key), iter(filler)
    turns = [next(keys) if i in slots else next(fill) for i in range(len(key) + rest)]
    return {"family": family, "job": asked, "turns": turns, "question": QUESTION.format(n=asked), "answer": answer,
            "relevant_turn": slots[value_at]}


NAME = re.compile(r"\b(" + "|".join(JOBS) + r")\b")
PROGRAM = re.compile(r"<([^>]+)>")


def bindings(turns: list[str]) -> dict[str, str]:
    """Each job's program after the whole history, read back from the turns: the latest setting
    wins, and a job that runs "the same check as" another gets that job's final program."""
    value, ref = {}, {}
    for t in turns:
        names, programs = NAME.findall(t), PROGRAM.findall(t)
        if len(names) == 1 and len(programs) == 1:
            value[names[0]] = programs[0]
            ref.pop(names[0], None)
        elif len(names) == 2 and not programs:
            ref[names[0]] = names[1]
    value.update({n: value[m] for n, m in ref.items() if m in value})
    return value


def generate(cfg: DataConfig) -> dict[str, list[dict]]:
    """The three splits, families in turn, disjoint by history text."""
    seen: set[str] = set()
    splits = {}
    for split in ("train", "val", "test"):
        rng, rows = random.Random(f"latent/{cfg.seed}/{split}"), []
        while len(rows) < getattr(cfg, split):
            row = history(FAMILIES[len(rows) % len(FAMILIES)], rng, cfg)
            text = "\n".join(row["turns"]) + "\n" + row["question"]
            if text in seen:
                continue
            seen.add(text)
            rows.append({"id": f"{split}-{len(rows)}", **row})
        splits[split] = rows
    return splits


def write_dataset(out: str | Path, cfg: DataConfig) -> dict:
    """Generate, train the BPE on the train split, write OUT/{train,val,test}.parquet and
    OUT/tokenizer; return counts and context-length statistics per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rollout.tokenizer import save_tokenizer, train_bpe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = generate(cfg)
    texts = [t for r in splits["train"] for t in (*r["turns"], r["question"], r["answer"])]
    save_tokenizer(train_bpe(texts, vocab_size=cfg.vocab_size), out / TOKENIZER_DIR)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), out / SPLIT_FILES[split])
    tok = load_tokenizer(out)
    stats = {}
    for split, rows in splits.items():
        lengths = [sum(len(t) for t in encode_turns(tok, r["turns"])) for r in rows]
        stats[split] = {"rows": len(rows), "min_tokens": min(lengths), "max_tokens": max(lengths),
                        "by_bucket": {bucket_name(b): sum(bucket_of(n) == b for n in lengths)
                                      for b in range(len(LENGTH_BUCKETS))}}
    return {"out": str(out), "seed": cfg.seed, "splits": stats}


def load_split(data: str | Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(data) / SPLIT_FILES[split]).to_pylist()


def load_tokenizer(data: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(data) / TOKENIZER_DIR))


def encode_turns(tok, turns: list[str]) -> list[list[int]]:
    """Token ids of each turn, a newline closing it."""
    return [tok.encode(t + "\n", add_special_tokens=False) for t in turns]


def bucket_of(n_tokens: int) -> int:
    return next(i for i, (lo, hi) in enumerate(LENGTH_BUCKETS) if lo <= n_tokens <= hi)


def bucket_name(i: int) -> str:
    lo, hi = LENGTH_BUCKETS[i]
    return f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}"
