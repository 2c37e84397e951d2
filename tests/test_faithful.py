"""The faithfulness checks: right programs pass, each kind of wrong program is caught."""

from __future__ import annotations

import random

import pytest

from rollout.datagen.intents import IntentGenerator, template_ids
from validator_actors import ir
from validator_actors.codebook import load_codebook
from validator_actors.faithful import check, check_all

CB = load_codebook()


def codes(intent: str, program: str) -> list[str]:
    return [f.code for f in check(intent, program, CB)]


@pytest.mark.parametrize("intent, program", [
    ("Please verify contract rule 3 during the build.", "C3?:build"),
    ("check C3 in build", "C3?:build"),
    ("could someone confirm rule 4 and rule 9? security review is tomorrow", "C4?&C9?:security"),
    ("I want that you verify invariant eleven, it is for security reason.", "I11?:security"),
    ("Would it be possible to verify every invariant before the build goes out?", "I*?:build"),
    ("Skip the receipts and put the output in run hotfix-9", "R!>hotfix-9"),
    ("need the decision record looked over, put results under run audit-22", "A?>audit-22"),
    ("verify contract rule 13 (reproducible outputs)", "C13?"),
])
def test_a_program_that_says_what_the_intent_says_has_no_finding(intent, program):
    assert codes(intent, program) == []


@pytest.mark.parametrize("intent, program, expected", [
    ("Please verify contract rule 3 during the build.", "C5?:build", {"NUMBER_NOT_IN_INTENT", "NUMBER_MISSING"}),
    ("Please verify contract rule 3 during the build.", "C3!:build", {"DENY_NOT_IN_INTENT"}),
    ("Please verify contract rule 3 during the build.", "C3?:build>_runs/x-1", {"OUTPUT_NOT_IN_INTENT"}),
    ("Please verify contract rule 3 during the build.", "C3?:audit", {"CONTEXT_NOT_IN_INTENT", "CONTEXT_MISSING"}),
    ("Please verify contract rule 3 during the build.", "C3?&V?:build", {"RADICAL_NOT_IN_INTENT"}),
    ("Please verify contract rule 3 during the build.", "C*?:build", {"SET_NOT_IN_INTENT"}),
    ("Verify rule 3 and invariant 5 during the build.", "C3?:build", {"NUMBER_MISSING"}),
    ("Skip invariant 5 and save everything under run nightly-7", "I5!", {"OUTPUT_MISSING"}),
    ("Skip invariant 5 during the build", "I5?:build", {"CHECK_NOT_IN_INTENT", "DENY_MISSING"}),
])
def test_each_kind_of_wrong_program_is_caught(intent, program, expected):
    assert expected <= set(codes(intent, program)), codes(intent, program)


def test_a_program_that_does_not_parse_is_not_checked_further():
    assert codes("verify rule 3", "C3?(") == ["NOT_WELL_FORMED"]
    assert codes("verify rule 3", "C99?") == ["NOT_WELL_FORMED"]


def test_reference_programs_of_generated_intents_mostly_pass_and_their_mutations_mostly_do_not():
    """A loose floor on generated intents; the measured rates are in docs/SERVE.md."""
    gen, tids, rng = IntentGenerator(CB, seed=3), template_ids(True), random.Random(0)
    examples = [gen.example(tids[i % len(tids)]) for i in range(200)]
    intents = [ex.intent for ex in examples]
    programs = [ir.canonical(ex.meaning, CB) for ex in examples]
    clean = sum(not f for f in check_all(intents, programs, CB))
    assert clean >= 0.8 * len(examples), clean
    renumbered = []
    for ex in examples:
        clause = ex.meaning.clauses[0]
        r, n, a = clause[0]
        if n is None:
            continue
        other = rng.choice([x for x in CB.numbers(r) if x != n])
        clauses = (((r, other, a),) + clause[1:],) + ex.meaning.clauses[1:]
        m = ir.Meaning(clauses, ex.meaning.context, ex.meaning.outputs)
        renumbered.append(check(ex.intent, ir.canonical(m, CB), CB))
    assert len(renumbered) >= 20 and sum(bool(f) for f in renumbered) >= 0.9 * len(renumbered)
