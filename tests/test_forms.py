"""validator_actors.forms: every drawn form means the row's program; each coin is fair; with
every coin on the short side the draw is as short as ir.minimal; the long side is the surface."""

import random
from collections import Counter

import pytest

from validator_actors import ir
from validator_actors.codebook import load_codebook
from validator_actors.forms import _Always, draw_form
from rollout.datagen.intents import IntentGenerator, surface_program, template_ids

CB = load_codebook()


@pytest.fixture(scope="module")
def examples():
    gen = IntentGenerator(CB, seed=5)
    return [gen.example(t) for t in template_ids(False) * 40]


def _tokens(text: str) -> int:  # IR pieces: one per atom, context, output, alias
    return len(text.replace("|", "&").replace(":", "&:").replace(">", "&>").split("&"))


def test_every_draw_means_the_same_program(examples):
    rng = random.Random(0)
    for ex in examples:
        surface = surface_program(ex.plan, CB)
        for _ in range(4):
            form = draw_form(surface, rng, legacy="legacy" in ex.tags, shuffle=0.5)
            assert ir.meaning(ir.parse(form, CB), CB) == ex.meaning, (surface, form)


def test_short_side_is_as_short_as_minimal_and_long_side_is_the_surface(examples):
    for ex in examples:
        surface = surface_program(ex.plan, CB)
        short = draw_form(surface, _Always(0.0), legacy="legacy" in ex.tags)
        assert _tokens(short) == _tokens(ir.minimal(ex.meaning, CB)), (short, ir.minimal(ex.meaning, CB))
        long = draw_form(surface, _Always(0.99), legacy=False)
        assert long == surface


def test_each_choice_is_a_fair_coin():
    surface = "C1?&C2?&C3?&C4?&C5?&C6?&C7?&C8?&C9?&C10?&C11?&C12?&C13?&V:execute>_runs/x-1"
    rng, n = random.Random(1), 4000
    seen = Counter()
    for _ in range(n):
        form = draw_form(surface, rng)
        seen["star"] += "C*?" in form
        seen["context"] += ":execute" in form
        seen["root"] += "_runs/" in form
    for key, count in seen.items():
        assert abs(count / n - 0.5) < 0.04, (key, count)
    legacy = Counter(draw_form("J?:execute", rng, legacy=True).startswith("@JOB_PRESENT") for _ in range(n))
    assert abs(legacy[True] / n - 0.5) < 0.04


def test_aliases_and_paths_are_refused():
    with pytest.raises(ValueError, match="aliases"):
        draw_form("@JOB_PRESENT", random.Random(0))
