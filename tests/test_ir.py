"""Properties of the Symbolic IR: parsing, meaning, canonical and minimal printing.

The generator in ``conftest`` writes meanings down without ``ir`` and renders them in many
surface forms; these tests check that ``ir`` reads every form back to the meaning it was
rendered from, and that the printers round-trip.
"""

from __future__ import annotations

import pytest
from conftest import ACTIONS, CB, IR_ALPHABET, Model, antichain, models, render, seeds
from hypothesis import given
from hypothesis import strategies as st

from validator_actors import ir


def read(text: str) -> ir.Meaning:
    surface = ir.parse(text, CB)
    assert ir.check_symbols(surface, CB) == []
    return ir.meaning(surface, CB)


def as_model(m: ir.Meaning) -> Model:
    return Model(frozenset(frozenset(c) for c in m.clauses), m.context, frozenset(m.outputs))


@given(models(), st.lists(seeds, min_size=1, max_size=4))
def test_every_surface_form_reads_back_to_the_meaning_it_renders(model, form_seeds):
    for seed in form_seeds:
        text = render(model, seed)
        assert as_model(read(text)) == model, text


@given(models())
def test_canonical_and_minimal_round_trip(model):
    m = read(render(model, 0))
    for printed in (ir.canonical(m, CB), ir.minimal(m, CB)):
        again = read(printed)
        assert again == m, printed
        assert as_model(again) == model


@given(models(), seeds)
def test_canonical_is_idempotent_and_minimal_is_never_longer(model, seed):
    m = read(render(model, seed))
    canon, mini = ir.canonical(m, CB), ir.minimal(m, CB)
    assert ir.canonical(read(canon), CB) == canon
    assert ir.minimal(read(mini), CB) == mini
    assert ir.minimal(read(canon), CB) == mini
    assert len(mini) <= len(canon)


@given(models(), seeds)
def test_meaning_is_a_sorted_minimal_dnf(model, seed):
    m = read(render(model, seed))
    order = list(CB.radicals)

    def key(a):
        return (order.index(a[0]), -1 if a[1] is None else a[1], ACTIONS.index(a[2]))

    assert all(list(c) == sorted(set(c), key=key) for c in m.clauses), "atoms sorted, no repeats"
    assert list(m.clauses) == sorted(set(m.clauses), key=lambda c: [key(a) for a in c])
    sets = [frozenset(c) for c in m.clauses]
    assert not any(a < b for a in sets for b in sets), "a clause absorbs another"
    assert list(m.outputs) == sorted(set(m.outputs))
    assert m.context in CB.contexts


@given(models(), seeds)
def test_minimal_form_carries_no_style_warnings(model, seed):
    """The shortest form writes no default context, no alias, no duplicate, no absorbed clause."""
    m = read(render(model, seed))
    assert read(ir.minimal(m, CB)).notes == ()


@given(st.text(IR_ALPHABET, max_size=40))
def test_parse_either_succeeds_or_raises_a_coded_syntax_error(text):
    try:
        surface = ir.parse(text, CB)
    except ir.IRSyntaxError as e:
        assert e.code in {"EMPTY_PROGRAM", "PROGRAM_TOO_LONG", "SYNTAX_ERROR"}
        assert 0 <= e.pos <= max(len(text), CB.max_program_chars)
        return
    if ir.check_symbols(surface, CB) == []:  # a program that passes both stages has a meaning
        m = ir.meaning(surface, CB)
        assert read(ir.canonical(m, CB)) == m


@pytest.mark.parametrize(
    "forms",
    [
        ["C3?:build", "C?3:build", "L.C.3?:build", " C3? : build "],
        ["C*?", "C?*", "L.C?", "L.C.*?", "@CHECK_ALL_CONTRACTS", "C*?:execute",
         "&".join(f"C{n}?" for n in reversed(CB.numbers("C")))],
        ["C3&I5:audit", "I5&C3:audit", "I5 & C3 & I5 :audit", "C3&I5|C3&I5&V!:audit"],
        ["J?", "@JOB_PRESENT", "J?&J?"],
        ["C*?&I*?", "@FULL_AUDIT", "I*?&@CHECK_ALL_CONTRACTS"],
        ["V!>run1", "V!>_runs/run1", "V!>./_runs//run1/", "V!>run1>_runs/run1"],
    ],
)
def test_documented_equivalent_forms_share_one_meaning(forms):
    meanings = [read(f) for f in forms]
    assert all(m == meanings[0] for m in meanings), forms


@pytest.mark.parametrize(
    "a, b",
    [
        ("C3", "C3?"),
        ("C3?", "C3!"),
        ("C3", "C4"),
        ("C3", "C3:build"),
        ("C3", "C3>run"),
        ("C?", "C*?"),  # the radical as a whole is not the set of its rules
        ("C3&I5", "C3|I5"),
        ("C3>a", "C3>artifacts/a"),
    ],
)
def test_different_programs_have_different_meanings(a, b):
    assert read(a) != read(b)


def test_absorption_helper_matches_the_parser():
    """Sanity check of the test oracle itself on a hand-written case."""
    m = read("C3|C3&I5|V&C3&I5")
    assert as_model(m).clauses == antichain([{("C", 3, "enforce")}])
    assert "ABSORBED_CLAUSE" in m.notes


@given(st.text("ab./_-", min_size=1, max_size=12))
def test_output_normalization_keeps_relative_paths_relative_and_is_idempotent(path):
    out = ir.normalize_output(path, CB)
    assert out.startswith("/") == path.startswith("/")
    assert out.endswith("/") and "//" not in out.lstrip("/")
    assert ir.normalize_output(out, CB) == out


@pytest.mark.parametrize("text", ["A>0/", "A>/", "A>./", "A>.", "A>a/b/", "A>_runs/x", "A>/abs/x/", "A>x"])
def test_every_output_path_prints_back_to_itself(text):
    """Hypothesis found ``A>0/`` (printed ``>0``, read back as the run ``_runs/0/``) and ``A>/``
    (normalized to ``//``, printed as an empty path)."""
    m = read(text)
    assert read(ir.canonical(m, CB)) == m and read(ir.minimal(m, CB)) == m
