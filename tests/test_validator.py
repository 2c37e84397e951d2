"""Properties of the validator, the JobSpec decoder and schema, CMP-01 and the reward.

- The validator never raises and never fails internally, whatever it is given.
- Equivalent surface forms share one hash; programs that differ in meaning do not.
- Every program-level error code and every warning code has an example that produces it.
- Every valid JobSpec passes both schema engines; mutated ones fail both.
- The reward is the documented formula, deterministic and order-preserving.
"""

from __future__ import annotations

import copy
import doctest
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import fastjsonschema
import jsonschema
import pytest
from conftest import CB, IR_ALPHABET, Model, antichain, models, render, run_names, seeds
from hypothesis import given
from hypothesis import strategies as st

from validator_actors import ir, validator
from validator_actors.jobspec import expand, jobspec_hash, jobspec_schema, path_issues
from validator_actors.validator import (
    ERROR_CODES,
    WARNING_CODES,
    Report,
    Validator,
    lexical_token_count,
    reward,
    score,
)

V = Validator(CB)
SCHEMA = jobspec_schema(CB)
FAST = fastjsonschema.compile(SCHEMA)
REFERENCE = jsonschema.Draft7Validator(SCHEMA)
POOL_CODES = {c for c, (level, _) in ERROR_CODES.items() if level == 0}  # not a program's doing
HEX64 = set("0123456789abcdef")


def assert_well_formed(report: Report) -> None:
    """The report invariants that hold for any input at all."""
    assert isinstance(report, Report)
    assert isinstance(report.valid, bool)
    assert all(e.code in ERROR_CODES for e in report.errors), report.codes
    assert "INTERNAL_ERROR" not in report.codes, report.errors
    assert all(w.code in WARNING_CODES for w in report.warnings)
    assert all(e.level == ERROR_CODES[e.code][0] for e in report.errors)
    json.dumps(report.to_dict())  # the report is JSON-ready as it stands
    if report.valid:
        assert report.errors == ()
        assert len(report.hash) == 64 and set(report.hash) <= HEX64
        assert report.hash == jobspec_hash(report.expansion)
        assert FAST(report.expansion) is not None and REFERENCE.is_valid(report.expansion)
        assert path_issues(report.expansion, CB) == []
        again = V.validate(report.canonical)  # canonical form re-validates to the same hash
        assert again.valid and again.hash == report.hash and again.canonical == report.canonical
    elif report.codes != ["HASH_MISMATCH"]:  # a mismatch still shows the hash, for diagnosis
        assert report.errors and report.hash is None and report.expansion is None
        assert len({e.level for e in report.errors}) == 1, "checking stops at the first level"


def model_text(m: Model) -> str:
    """A plain surface form of a model (one of many; see conftest.render)."""
    return render(m, 0)


# --- 1. the validator never raises ----------------------------------------------------------

any_unicode = st.text(st.characters(exclude_categories=[]), max_size=200)  # surrogates, NUL, RTL...


@given(any_unicode | st.text(IR_ALPHABET, max_size=60))
def test_never_raises_on_arbitrary_text(text):
    assert_well_formed(V.validate(text))


@given(st.lists(st.sampled_from(["\x00", "\u200f", "\u202e", "\ud800", "\udfff", "\ufeff",
                                 "\u00a0", "\n", "\r", "C", "3", "?", "&", ":", ">", "٣", "Ｃ"]),
                max_size=30).map("".join))
def test_never_raises_on_hostile_characters(text):
    assert_well_formed(V.validate(text))


@given(models(), seeds, st.data())
def test_never_raises_on_near_miss_programs(model, seed, data):
    program = render(model, seed)
    i = data.draw(st.integers(0, len(program)), label="position")
    chars = st.sampled_from(IR_ALPHABET) | st.characters(exclude_categories=[])
    char = data.draw(chars, label="char")
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]), label="edit")
    if edit == "insert":
        program = program[:i] + char + program[i:]
    elif edit == "delete":
        program = program[:i] + program[i + 1 :]
    else:
        program = program[:i] + char + program[i + 1 :]
    assert_well_formed(V.validate(program))


@pytest.mark.parametrize("value", [None, b"C3?", 3, 3.5, True, ["C3"], {"p": "C3"}, object()])
def test_never_raises_on_non_strings(value):
    report = V.validate(value)
    assert_well_formed(report)
    assert report.valid is False and report.codes == ["SYNTAX_ERROR"]


@pytest.mark.parametrize(
    "text",
    [
        "C3&" * 350_000,
        "C" * 1_000_000,
        " " * 1_000_000,
        "\ud800" * 1_000_000,
        "".join(random.Random(0).choice(IR_ALPHABET) for _ in range(1_000_000)),
    ],
    ids=["repeated-terms", "one-letter", "spaces", "surrogates", "random-ir-chars"],
)
@pytest.mark.serial
def test_megabyte_inputs_fail_fast(text):
    start = time.perf_counter()
    report = V.validate(text)
    assert time.perf_counter() - start < 1.0
    assert_well_formed(report)
    assert not report.valid and report.codes[0] in {"PROGRAM_TOO_LONG", "EMPTY_PROGRAM"}


def _longest(pattern, sep: str) -> str:
    parts, n = [], 0
    while True:
        nxt = pattern(n)
        if len(sep.join(parts + [nxt])) > CB.max_program_chars:
            return sep.join(parts)
        parts.append(nxt)
        n += 1


@pytest.mark.parametrize(
    "program",
    [
        _longest(lambda n: "C*?", "&"),
        _longest(lambda n: f"C*&I{n % 20 + 1}{'?!'[n // 20 % 2]}", "|"),
        _longest(lambda n: f"C{n % 13 + 1}&I{n // 13 % 20 + 1}", "|"),
        _longest(lambda n: "@FULL_AUDIT", "|"),
    ],
    ids=["and-of-stars", "or-of-star-clauses", "or-of-pairs", "or-of-aliases"],
)
@pytest.mark.serial
def test_costliest_programs_under_the_limit_validate_quickly(program):
    start = time.perf_counter()
    report = Validator(CB).validate(program)  # a fresh validator: no cache hit
    assert time.perf_counter() - start < 1.0
    assert_well_formed(report)


# --- 2. equivalent surface forms, one hash --------------------------------------------------


@given(models(), st.lists(seeds, min_size=2, max_size=5, unique=True))
def test_equivalent_surface_forms_share_hash_canonical_and_minimal(model, form_seeds):
    reports = [V.validate(render(model, s)) for s in form_seeds]
    for r in reports:
        assert r.valid, r.errors
    assert len({r.hash for r in reports}) == 1
    assert len({r.canonical for r in reports}) == 1
    assert len({r.minimal for r in reports}) == 1
    assert all(r.expansion == reports[0].expansion for r in reports)
    for printed in (reports[0].canonical, reports[0].minimal):
        assert V.validate(printed).hash == reports[0].hash


@given(models(), seeds)
def test_canonical_round_trip_and_minimal_length(model, seed):
    report = V.validate(render(model, seed))
    m = ir.meaning(ir.parse(report.canonical, CB), CB)
    assert ir.canonical(m, CB) == report.canonical
    assert ir.minimal(m, CB) == report.minimal
    assert jobspec_hash(expand(m, CB)) == report.hash
    assert len(report.minimal) <= len(report.canonical)
    assert V.validate(report.minimal).minimal == report.minimal


# --- 3. different meanings, different hashes ------------------------------------------------


@given(models(), models())
def test_hashes_are_equal_exactly_when_meanings_are(a, b):
    ha, hb = V.validate(model_text(a)).hash, V.validate(model_text(b)).hash
    assert ha is not None and hb is not None
    assert (ha == hb) == (a == b)


def _one_change(m: Model, rng: random.Random) -> Model:
    """A model that differs from ``m`` in exactly one visible way."""
    kind = rng.choice(["context", "output", "action", "drop", "add"])
    clauses = [set(c) for c in m.clauses]
    if kind == "context":
        return Model(m.clauses, rng.choice([c for c in CB.contexts if c != m.context]), m.outputs)
    if kind == "output":
        return Model(m.clauses, m.context, m.outputs ^ {"artifacts/changed-output/"})
    c = rng.choice(clauses)
    if kind == "action":
        a = rng.choice(sorted(c, key=repr))
        c.discard(a)
        c.add((a[0], a[1], {"enforce": "check", "check": "deny", "deny": "enforce"}[a[2]]))
    elif kind == "drop" and len(c) > 1:
        c.discard(rng.choice(sorted(c, key=repr)))
    else:
        clauses.append({("G", None, "deny"), ("P", None, "check"), ("A", None, "enforce")})
    return Model(antichain(clauses), m.context, m.outputs)


@given(models(), seeds)
def test_one_change_in_meaning_changes_the_hash(model, seed):
    other = _one_change(model, random.Random(seed))
    if other == model:  # the change was absorbed by another clause: nothing to compare
        return
    assert V.validate(model_text(model)).hash != V.validate(model_text(other)).hash


def test_known_near_pairs_differ():
    pairs = [("C3", "C3?"), ("C3", "C3:build"), ("C3", "C3>run"), ("C?", "C*?"),
             ("C3&I5", "C3|I5"), ("C3>a", "C3>artifacts/a"), ("C*", "C*&C3?")]
    for a, b in pairs:
        assert V.validate(a).hash != V.validate(b).hash, (a, b)


# --- 5. every error and warning code has an example ----------------------------------------

ERROR_EXAMPLES = {
    "EMPTY_PROGRAM": ["", "   ", "\t"],
    "PROGRAM_TOO_LONG": ["C3&" * 700 + "C3"],
    "SYNTAX_ERROR": ["C3&", "C?3?", "&I5", "C3)", "C03", "C1234567", "C3:", "C3>", "C 3", "@"],
    "UNKNOWN_RADICAL": ["X3", "Z", "c3?"],
    "UNKNOWN_OPERATOR": ["C3~", "I5^", "V#"],
    "UNKNOWN_CONTEXT": ["C3:deploy", "C3:Build"],
    "UNKNOWN_NUMBER": ["C14", "I21", "C0", "L.C.99"],
    "NUMBER_NOT_ALLOWED": ["J3", "V*", "L7"],
    "UNKNOWN_ALIAS": ["@NOPE", "@job_present"],
    "INVALID_PATH_ACCESS": ["L.V", "C.I", "L.L"],
    "SCHEMA_VIOLATION": ["C3>" + "a" * (CB.max_path_length + 1),
                         "C3" + "".join(f">r{i}" for i in range(CB.max_outputs + 1))],
    "PATH_ESCAPES_REPO_ROOT": ["C3>/tmp/x", "C3>/"],
    "PATH_CONTAINS_TRAVERSAL": ["C3>_runs/../x", "C3>..", "C3>artifacts/a/../../b"],
    "FORBIDDEN_PATH_OVERLAP": ["C3>LAW/CANON/x", "C3>LAW/", "C3>.locks", "C3>.git/hooks",
                               "C3>_runs/"],
    "OUTPUT_OUTSIDE_DURABLE_ROOT": ["C3>docs/x", "C3>artifacts/", "C3>./x/y", "C3>./", "C3>.//."],
    "PATH_OVERLAP": ["C3>a>_runs/a/b", "C3>artifacts/x>artifacts/x/y/z"],
}


def test_error_examples_cover_every_program_level_code():
    assert set(ERROR_EXAMPLES) == set(ERROR_CODES) - POOL_CODES - {"HASH_MISMATCH"}


@pytest.mark.parametrize(
    "code, program", [(c, p) for c, ps in ERROR_EXAMPLES.items() for p in ps]
)
def test_each_error_code_has_an_example(code, program):
    report = V.validate(program)
    assert_well_formed(report)
    assert not report.valid
    assert code in report.codes, report.errors
    assert all(e.message for e in report.errors)


def test_hash_mismatch_with_a_wrong_reference():
    good = V.validate("C3?:build")
    for wrong in ["C3:build", "C3?", V.validate("I5").hash, "0" * 64]:
        report = V.validate("C3?:build", reference=wrong)
        assert_well_formed(report)
        assert not report.valid and report.codes == ["HASH_MISMATCH"]
        assert report.hash == good.hash  # the hash is still reported, for diagnosis
    for right in ["C3?:build", "C?3 : build", "L.C.3?:build", good.hash]:
        assert V.validate("C3?:build", reference=right).valid


@given(models(), models())
def test_reference_check_agrees_with_meaning(a, b):
    report = V.validate(render(a, 1), reference=render(b, 2))
    assert_well_formed(report)
    assert report.valid == (a == b)
    assert report.codes == ([] if a == b else ["HASH_MISMATCH"])


WARNING_EXAMPLES = {
    "REDUNDANT_DEFAULT_CONTEXT": "C3:execute",
    "DUPLICATE_TERM": "C3&I5&C3",
    "CONTRADICTORY_TERMS": "C3&C3!",
    "LEGACY_ALIAS": "@JOB_PRESENT",
    "ABSORBED_CLAUSE": "C3|C3&I5",
    "DUPLICATE_OUTPUT": "C3>a>_runs/a",
}


def test_warning_examples_cover_every_warning_code():
    assert set(WARNING_EXAMPLES) == set(WARNING_CODES)


@pytest.mark.parametrize("code, program", sorted(WARNING_EXAMPLES.items()))
def test_each_warning_code_has_an_example(code, program):
    report = V.validate(program)
    assert_well_formed(report)
    assert report.valid, "warnings never fail a program"
    assert [w.code for w in report.warnings] == [code]
    assert V.validate(report.minimal).warnings == () or code == "CONTRADICTORY_TERMS"


# --- 6. the JobSpec and its schema ----------------------------------------------------------


def _objects(schema, where="#"):
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            yield where, schema
        for k, v in schema.items():
            yield from _objects(v, f"{where}/{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            yield from _objects(v, f"{where}/{i}")


def test_schema_is_closed_at_every_object_level():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    found = list(_objects(SCHEMA))
    assert len(found) >= 5  # root, outputs, criteria item, criterion, determinism
    for where, obj in found:
        assert obj.get("additionalProperties") is False, where
        assert set(obj["required"]) == set(obj["properties"]), where


def _containers(doc, path=()):
    """Every (path, dict) in a JSON document."""
    if isinstance(doc, dict):
        yield path, doc
        for k, v in doc.items():
            yield from _containers(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _containers(v, path + (i,))


def _leaves(doc, path=()):
    """Every (path to a dict key) in a JSON document."""
    for p, d in _containers(doc):
        for k in d:
            yield p + (k,)


def _get(doc, path):
    for k in path[:-1]:
        doc = doc[k]
    return doc


WRONG_TYPE = {str: 7, int: "7", type(None): "x", list: {"x": 1}, dict: ["x"], bool: "x"}


def mutate(jobspec: dict, rng: random.Random) -> tuple[str, dict]:
    bad = copy.deepcopy(jobspec)
    kind = rng.choice(["wrong_type", "extra_key", "missing_key", "long_path"])
    if kind == "wrong_type":
        path = rng.choice(list(_leaves(bad)))
        parent = _get(bad, path)
        parent[path[-1]] = WRONG_TYPE[type(parent[path[-1]])]
    elif kind == "extra_key":
        _, obj = rng.choice(list(_containers(bad)))
        obj["unexpected"] = "value"
    elif kind == "missing_key":
        path = rng.choice(list(_leaves(bad)))
        del _get(bad, path)[path[-1]]
    else:
        paths = bad["inputs"] if rng.random() < 0.5 else bad["outputs"]["durable_paths"]
        paths[rng.randrange(len(paths))] = "_runs/" + "x" * CB.max_path_length + "/"
    return kind, bad


def _fast_ok(doc) -> bool:
    try:
        FAST(doc)
        return True
    except fastjsonschema.JsonSchemaValueException:
        return False


@given(models(), seeds)
def test_every_valid_jobspec_passes_both_engines(model, seed):
    report = V.validate(render(model, seed))
    assert _fast_ok(report.expansion)
    jsonschema.validate(report.expansion, SCHEMA, cls=jsonschema.Draft7Validator)
    assert V.schema.errors(report.expansion) == []


@given(models(), seeds)
def test_mutated_jobspecs_fail_both_engines(model, seed):
    report = V.validate(model_text(model))
    kind, bad = mutate(report.expansion, random.Random(seed))
    assert not _fast_ok(bad), kind
    assert not REFERENCE.is_valid(bad), kind
    errors = V.schema.errors(bad)
    assert errors and not errors[0].startswith("(fastjsonschema only)")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 200) | st.text(max_size=130)
    | st.sampled_from(["job-0123456789abcdef", "job-0123456789abcdef\n", "check", "C", "sha256",
                       CB.version, "_runs/x/", "composite", "build"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(models(), st.data())
def test_schema_engines_agree_on_any_value_anywhere(model, data):
    """Put an arbitrary JSON value at any key or list slot: both engines give one verdict."""
    doc = copy.deepcopy(V.validate(model_text(model)).expansion)
    slots = [(c, k) for _, c in _containers(doc) for k in (c if isinstance(c, dict) else [])]
    slots += [(lst, i) for _, d in _containers(doc) for lst in d.values() if isinstance(lst, list)
              for i in range(len(lst))]
    parent, key = data.draw(st.sampled_from(slots), label="slot")
    parent[key] = data.draw(json_values, label="value")
    assert _fast_ok(doc) == REFERENCE.is_valid(doc), parent[key]


@given(models())
def test_expansion_is_deterministic_and_self_describing(model):
    m = ir.meaning(ir.parse(model_text(model), CB), CB)
    js = expand(m, CB)
    assert expand(m, CB) == js and jobspec_hash(copy.deepcopy(js)) == jobspec_hash(js)
    canon = js["determinism"]["canonical_program"]
    assert canon == ir.canonical(m, CB)
    assert js["job_id"] == "job-" + hashlib.sha256(canon.encode()).hexdigest()[:16]
    assert js["phase"] == model.context
    criteria = js["outputs"]["validation_criteria"]
    terms = {tuple(c["term"] for c in crit["all_of"]) for crit in criteria}
    assert terms == {tuple(ir.atom_text(a, CB) for a in c) for c in m.clauses}
    expected_outputs = sorted(model.outputs) or [f"{CB.default_durable_root}{js['job_id']}/"]
    assert js["outputs"]["durable_paths"] == expected_outputs


# --- 7. reward -------------------------------------------------------------------------------

BATCH = ["C3?:build", "C14", "C*?&I*?", "", "@FULL_AUDIT", "C3&C3!>run", "X~", "L.C.3?"]


def test_reward_formula():
    tokens = lexical_token_count(BATCH)
    rewards = reward(["intent"] * len(BATCH), BATCH, [None] * len(BATCH))
    for program, n, r in zip(BATCH, tokens, rewards):
        base = 1.0 if V.validate(program).valid else -1.0
        assert r == pytest.approx(base - 0.01 * n)
        assert -1.0 - 0.01 * 256 <= r <= 1.0


def test_reward_examples():
    assert reward(["i"], ["C3?:build"], ["C3?:build"]) == [pytest.approx(1 - 0.01 * 5)]
    assert reward(["i"], ["C3:build"], ["C3?:build"]) == [pytest.approx(-1 - 0.01 * 4)]
    assert reward(["i"], ["C14"], [None]) == [pytest.approx(-1 - 0.01 * 2)]


@given(
    st.lists(st.sampled_from(BATCH) | st.text(IR_ALPHABET, max_size=20), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
)
def test_reward_is_deterministic_and_permutes_with_the_batch(programs, rng):
    refs = [None] * len(programs)
    first = reward(["x"] * len(programs), programs, refs)
    assert reward(["x"] * len(programs), programs, refs, validator=Validator(CB)) == first
    order = list(range(len(programs)))
    rng.shuffle(order)
    shuffled = reward(["x"] * len(programs), [programs[i] for i in order], refs)
    assert shuffled == [first[i] for i in order]
    assert all(r == r and abs(r) < 10 for r in first)  # finite, never NaN


def test_rewards_and_hashes_do_not_depend_on_the_process():
    """Rollout workers are separate processes: string hashing must not leak into results."""
    script = (
        "import json, sys\n"
        "from validator_actors.validator import Validator, reward\n"
        "v, ps = Validator(), json.load(sys.stdin)\n"
        "here = [[v.validate(p).hash, v.validate(p).minimal] for p in ps]\n"
        "print(json.dumps(here + [reward(ps, ps, ps)]))"
    )
    programs = ["C*?&I5|V!&R:audit>b>a", "@FULL_AUDIT|J?&C3!", "L.C.3?&S|G:security>artifacts/x"]
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], input=json.dumps(programs),
                              capture_output=True, text=True, env=env, check=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        outputs.add(done.stdout)
    here = [[V.validate(p).hash, V.validate(p).minimal] for p in programs]
    assert outputs == {json.dumps(here + [reward(programs, programs, programs)]) + "\n"}


def test_docstring_examples_hold():
    assert doctest.testmod(validator).failed == 0


def test_reward_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"differ in length: 2, 1, 2"):
        reward(["a", "b"], ["C3"], [None, None])
    with pytest.raises(ValueError, match="length"):
        score(["a"], ["C3"], [])


def test_tokens_are_capped():
    long_valid = "&".join(f"C{n}?" for n in CB.numbers("C")) * 1  # 13 terms, about 51 tokens
    n = lexical_token_count([long_valid])[0]
    assert n > 10
    [capped] = reward(["x"], [long_valid], [None], max_penalized_tokens=10)
    assert capped == pytest.approx(1.0 - 0.10)
    [uncapped] = reward(["x"], [long_valid], [None], max_penalized_tokens=10_000)
    assert uncapped == pytest.approx(1.0 - 0.01 * n)
    [s] = score(["x"], [long_valid], [None], max_penalized_tokens=10, offset=7)
    assert s.index == 7 and s.tokens == n and s.valid


def test_score_with_a_custom_tokenizer_and_non_string_programs():
    by_chars = lambda ps: [len(p) for p in ps]  # noqa: E731
    scores = score(["a", "b"], [None, "C3"], [None, None], token_counter=by_chars)
    assert [s.valid for s in scores] == [False, True]
    assert [s.tokens for s in scores] == [0, 2]
    assert scores[0].codes == ("SYNTAX_ERROR",)


# --- 8. CMP-01 path rules --------------------------------------------------------------------

PATH_EXAMPLES = {
    "PATH_ESCAPES_REPO_ROOT": ["/etc/x/", "/_runs/a/"],
    "PATH_CONTAINS_TRAVERSAL": ["_runs/../x/", "artifacts/a/../b/", "../x/"],
    "FORBIDDEN_PATH_OVERLAP": ["LAW/CANON/x/", "LAW/", ".git/", "_runs/.locks/a/", "_runs/"],
    "OUTPUT_OUTSIDE_DURABLE_ROOT": ["docs/x/", "artifacts/", "runs/x/"],
}


def _with_outputs(paths: list[str]) -> dict:
    js = copy.deepcopy(V.validate("C3").expansion)
    js["outputs"]["durable_paths"] = paths
    return js


@pytest.mark.parametrize("code, path", [(c, p) for c, ps in PATH_EXAMPLES.items() for p in ps])
def test_each_path_code_from_a_crafted_output(code, path):
    assert [c for c, _ in path_issues(_with_outputs([path]), CB)] == [code]


def test_path_overlap_from_crafted_outputs():
    issues = path_issues(_with_outputs(["_runs/a/", "_runs/a/b/", "artifacts/c/"]), CB)
    assert [c for c, _ in issues] == ["PATH_OVERLAP"]
    assert path_issues(_with_outputs(["_runs/a/", "_runs/ab/", "artifacts/a/"]), CB) == []


def test_inputs_get_the_same_escape_and_traversal_checks():
    js = _with_outputs(["_runs/ok/"])
    js["inputs"] = ["/abs/", "LAW/../x.md"]
    codes = [c for c, _ in path_issues(js, CB)]
    assert codes == ["PATH_ESCAPES_REPO_ROOT", "PATH_CONTAINS_TRAVERSAL"]


def test_codebook_inputs_never_trigger_path_errors():
    """Every radical, entry and action the codebook offers reads only allowed inputs."""
    ops = ("", "?", "!")
    terms = [f"{r}{op}" for r in CB.radicals for op in ops]
    terms += [f"{r}*{op}" for r in CB.entries for op in ops]
    report = V.validate("&".join(terms))
    assert report.valid, report.errors
    js = report.expansion
    assert len(js["inputs"]) == len(CB.radicals) + sum(len(e) for e in CB.entries.values())
    assert all(p.startswith(tuple(r["path"] for r in CB.radicals.values())) for p in js["inputs"])
    assert path_issues(js, CB) == []


@given(st.lists(st.tuples(st.sampled_from(CB.durable_roots), run_names), min_size=1, max_size=4,
                unique_by=lambda t: t[0] + t[1]))
def test_distinct_run_folders_never_trip_cmp01(outs):
    paths = [root + name + "/" for root, name in outs]
    assert path_issues(_with_outputs(paths), CB) == []


def test_a_bad_reference_is_named_not_an_internal_error():
    v = Validator()
    good = v.validate("C3?:build")
    assert v.validate("C3?:build", good.hash.upper()).valid  # hashes are case-insensitive
    for bad in ("C14", "", 42, "not a program at all"):
        report = v.validate("C3?:build", bad)
        assert not report.valid and report.codes == ["INVALID_REFERENCE"], (bad, report.codes)


def test_short_token_counts_are_refused():
    with pytest.raises(ValueError, match="1 counts for 2 programs"):
        score(["a", "b"], ["C3", "C4"], [None, None], token_counter=lambda texts: [1])


def test_syntax_error_positions_count_leading_spaces():
    report = Validator().validate("   C3&&I5")
    assert report.codes == ["SYNTAX_ERROR"] and "position 6" in report.errors[0].message


def test_every_code_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "IR.md").read_text()
    missing = [c for c in list(ERROR_CODES) + list(WARNING_CODES) if f"`{c}`" not in doc]
    assert not missing, f"docs/IR.md lacks {missing}"
