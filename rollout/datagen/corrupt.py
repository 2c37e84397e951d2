"""The corruption set: invalid programs, each labelled with the error code it must produce.

Every program-level code of the validator is covered (``ERROR_CODES`` at levels 1-6); each
row is a valid program from the data mutated in one way that triggers exactly that code.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rollout.datagen.intents import Example
from validator_actors import ir
from validator_actors.codebook import Codebook
from validator_actors.validator import ERROR_CODES, Validator

NOT_RADICALS = [c for c in "BDEFHKMNOQTUWXYZ"]
BAD_OPS = list("~^%$#+=;,")
BAD_CONTEXTS = ["deploy", "test", "prod", "BUILD", "release", "review", "exec", "staging"]
BAD_ALIASES = ["@JOB_MISSING", "@CHECK_EVERYTHING", "@RUN_ALL", "@SKIP_ALL", "@AUDIT_ME",
               "@FULL_BUILD", "@NO_POLICY"]
BAD_PATHS = ["&L.V.3", "&L.G", "&C.I.2", "&L.S.1", "&L.R", "&I.C.4", "&L.P.2"]
ESCAPES = ["/tmp/out", "/etc/passwd", "/home/user/run", "/var/lib/x", "/_runs/abs"]
TRAVERSALS = ["_runs/../LAW/x", "../outside", "artifacts/../../etc", "_runs/a/../../b", "_runs/.."]
FORBIDDEN = ["LAW/CANON/CONTRACTS", ".git/hooks", "_runs/.locks/x", "LAW/", "LAW/CANON"]
OUTSIDE = ["docs/out", "src/build", "tmp/x", "results/run1", "LAW/NOTES", "artifacts/"]

# levels 1-6 of ERROR_CODES are produced by programs; level 0 codes come from the pool
PROGRAM_CODES = [c for c, (level, _) in ERROR_CODES.items() if level > 0]


def _parts(m: ir.Meaning, cb: Codebook) -> tuple[str, str, str]:
    """(body, ':context' or '', '>out...') of the minimal form."""
    body = ir.minimal(ir.Meaning(m.clauses, cb.default_context, ()), cb)
    ctx = "" if m.context == cb.default_context else f":{m.context}"
    outs = "".join(">" + p.rstrip("/") for p in m.outputs)
    return body, ctx, outs


def _first_atom_end(body: str) -> int:
    for i, c in enumerate(body):
        if c in "&|":
            return i
    return len(body)


def _mutators(cb: Codebook, rng: random.Random) -> dict[str, Callable]:
    numbered = list(cb.entries)
    plain = [r for r in cb.radicals if r not in cb.entries]

    def unknown_operator(body, ctx, outs):
        end = _first_atom_end(body)
        atom = body[:end].rstrip("?!")
        return atom + rng.choice(BAD_OPS) + body[end:] + ctx + outs

    def unknown_number(body, ctx, outs):
        r = rng.choice(numbered)
        bad = rng.choice([0, len(cb.numbers(r)) + 1, len(cb.numbers(r)) + rng.randint(2, 80)])
        return f"{body}&{r}{bad}{rng.choice(['', '?', '!'])}{ctx}{outs}"

    def overlap(body, ctx, outs):
        name = f"run{rng.randint(1, 999)}"
        root = rng.choice(cb.durable_roots)
        return f"{body}{ctx}>{root}{name}>{root}{name}/{rng.choice(['sub', 'logs', 'x/y'])}"

    def schema(body, ctx, outs):
        if rng.random() < 0.5:
            return f"{body}{ctx}>" + "r" * rng.randint(cb.max_path_length, cb.max_path_length + 60)
        return body + ctx + "".join(f">run{i}" for i in range(cb.max_outputs + 1))

    return {
        "EMPTY_PROGRAM": lambda b, c, o: rng.choice(["", " ", "   ", "\t", " \t "]),
        "PROGRAM_TOO_LONG": lambda b, c, o: "&".join([b] * (cb.max_program_chars // len(b) + 2)) + c + o,
        "SYNTAX_ERROR": lambda b, c, o: rng.choice(
            [f"{b}&{c}{o}", f"|{b}{c}{o}", f"{b}:{o}", f"{b}{c}>", f"({b}){c}{o}",
             f"{b}{c}:audit{o}" if c else f"{b}::build{o}", f"{b}&&{b}{c}{o}"]),
        "UNKNOWN_RADICAL": lambda b, c, o: rng.choice(NOT_RADICALS) + b[1:] + c + o,
        "UNKNOWN_OPERATOR": unknown_operator,
        "UNKNOWN_CONTEXT": lambda b, c, o: f"{b}:{rng.choice(BAD_CONTEXTS)}{o}",
        "UNKNOWN_NUMBER": unknown_number,
        "NUMBER_NOT_ALLOWED": lambda b, c, o: f"{b}&{rng.choice(plain)}{rng.choice(['*', str(rng.randint(1, 20))])}{c}{o}",
        "UNKNOWN_ALIAS": lambda b, c, o: f"{b}&{rng.choice(BAD_ALIASES)}{c}{o}",
        "INVALID_PATH_ACCESS": lambda b, c, o: f"{b}{rng.choice(BAD_PATHS)}{c}{o}",
        "SCHEMA_VIOLATION": schema,
        "PATH_ESCAPES_REPO_ROOT": lambda b, c, o: f"{b}{c}>{rng.choice(ESCAPES)}",
        "PATH_CONTAINS_TRAVERSAL": lambda b, c, o: f"{b}{c}>{rng.choice(TRAVERSALS)}",
        "FORBIDDEN_PATH_OVERLAP": lambda b, c, o: f"{b}{c}>{rng.choice(FORBIDDEN)}",
        "OUTPUT_OUTSIDE_DURABLE_ROOT": lambda b, c, o: f"{b}{c}>{rng.choice(OUTSIDE)}",
        "PATH_OVERLAP": overlap,
    }


def corrupt_rows(sources: list[Example], cb: Codebook, seed: int, per_code: int) -> dict:
    """``per_code`` labelled invalid programs for every program-level error code."""
    rng = random.Random(seed + 7919)
    mutate = _mutators(cb, rng)
    validator = Validator(cb)
    rows: dict[str, list] = {k: [] for k in
                             ("id", "program", "reference", "expected_code", "source_program", "mutation")}
    for code in PROGRAM_CODES:
        for k in range(per_code):
            src = rng.choice(sources).meaning
            source = ir.canonical(src, cb)
            reference = None
            if code == "HASH_MISMATCH":
                other = rng.choice([s.meaning for s in sources if s.meaning != src])
                program, reference = source, validator.validate(ir.canonical(other, cb)).hash
                mutation = "reference of another program"
            else:
                program = mutate[code](*_parts(src, cb))
                mutation = code.lower()
            rows["id"].append(f"corrupt-{code.lower()}-{k:03d}")
            rows["program"].append(program)
            rows["reference"].append(reference)
            rows["expected_code"].append(code)
            rows["source_program"].append(source)
            rows["mutation"].append(mutation)
    return rows
