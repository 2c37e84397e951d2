"""Shared test settings and Hypothesis strategies for the Symbolic IR.

Hypothesis profiles (pick one with ``HYPOTHESIS_PROFILE=<name>``):

- ``tinycompress`` (default): modest example counts so the IR and validator suites stay
  well under a minute on two cores;
- ``thorough``: twenty times the examples, for hunting bugs by hand or in a nightly job.

The strategies below build *meanings* independently of ``validator_actors.ir`` (a set of
clauses, each a set of atoms, with a context and normalized outputs) and render each
meaning into many surface forms, so that tests can compare what the parser reads with
what the generator meant, instead of trusting the code under test to define both sides.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from validator_actors.codebook import load_codebook


def pytest_configure(config):
    """Before make test's two workers start: a fresh machine has no ``~/.ray/auth_token`` yet, and
    two ``ray.init()`` at once would each write one (the second overwriting the first's token)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    from ray._private.authentication.authentication_token_setup import _get_default_token_path, generate_and_save_token

    if not _get_default_token_path().exists():
        generate_and_save_token()


settings.register_profile(
    "tinycompress",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tinycompress"))

CB = load_codebook()
ACTIONS = ("enforce", "check", "deny")
OP_OF = {"enforce": "", "check": "?", "deny": "!"}  # the grammar's own spelling, restated
NUMBERED = tuple(CB.entries)  # radicals with numbered entries: C and I
Atom = tuple  # (radical, number or None, action)


@dataclass(frozen=True)
class Model:
    """A meaning, written down without ``ir``: clauses form an antichain of atom sets."""

    clauses: frozenset  # frozenset[frozenset[Atom]]
    context: str
    outputs: frozenset  # normalized paths, each ending in '/'


def antichain(clauses) -> frozenset:
    """Drop every clause that strictly contains another (absorption: A | A&B == A)."""
    cs = {frozenset(c) for c in clauses}
    return frozenset(c for c in cs if not any(o < c for o in cs))


def full_set(radical: str, action: str) -> frozenset:
    return frozenset((radical, n, action) for n in CB.numbers(radical))


def alias_atoms(macro: str) -> frozenset:
    """Expand a codebook alias macro (terms like 'J?', 'C*?' joined by '&') by hand."""
    out = set()
    for term in macro.split("&"):
        radical, rest = term[0], term[1:]
        action = {"?": "check", "!": "deny"}.get(rest[-1:], "enforce")
        if rest.startswith("*"):
            out |= full_set(radical, action)
        else:
            out.add((radical, None, action))
    return frozenset(out)


ALIASES = {name: alias_atoms(macro) for name, macro in CB.aliases.items()}


@st.composite
def atoms(draw) -> Atom:
    radical = draw(st.sampled_from(sorted(CB.radicals)))
    number = None
    if radical in CB.entries:
        number = draw(st.none() | st.sampled_from(CB.numbers(radical)))
    return (radical, number, draw(st.sampled_from(ACTIONS)))


@st.composite
def clauses(draw) -> frozenset:
    clause = set(draw(st.sets(atoms(), min_size=1, max_size=4)))
    for radical, action in draw(
        st.lists(st.tuples(st.sampled_from(NUMBERED), st.sampled_from(ACTIONS)), max_size=1)
    ):
        clause |= full_set(radical, action)
    return frozenset(clause)


run_names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,11}", fullmatch=True)


@st.composite
def models(draw) -> Model:
    cs = antichain(draw(st.lists(clauses(), min_size=1, max_size=3)))
    context = draw(st.sampled_from(CB.contexts))
    outs = draw(
        st.lists(st.tuples(st.sampled_from(CB.durable_roots), run_names), max_size=2)
    )
    return Model(cs, context, frozenset(root + name + "/" for root, name in outs))


def _ws(rng: random.Random) -> str:
    return rng.choice(["", "", "", " ", "  ", "\t"])


def _atom_form(a: Atom, rng: random.Random) -> str:
    radical, number, action = a
    op = OP_OF[action]
    if number is None:
        return f"{radical}{op}"
    forms = [f"{radical}{number}{op}", f"{radical}{op}{number}", f"L.{radical}.{number}{op}"]
    return rng.choice(forms)


def _star_form(radical: str, action: str, rng: random.Random) -> str:
    op = OP_OF[action]
    forms = [f"{radical}*{op}", f"{radical}{op}*", f"L.{radical}{op}", f"L.{radical}.*{op}"]
    return rng.choice(forms)


def _clause_terms(clause: frozenset, rng: random.Random) -> list[str]:
    remaining = set(clause)
    terms: list[str] = []
    for name in rng.sample(sorted(ALIASES), len(ALIASES)):
        if ALIASES[name] <= clause and rng.random() < 0.5:
            terms.append(name)
            remaining -= ALIASES[name]
    for radical in NUMBERED:
        for action in ACTIONS:
            full = full_set(radical, action)
            if full <= remaining and rng.random() < 0.7:
                terms.append(_star_form(radical, action, rng))
                remaining -= full
    terms += [_atom_form(a, rng) for a in sorted(remaining, key=repr)]
    if rng.random() < 0.2:
        terms.append(rng.choice(terms))  # a duplicated term changes nothing
    rng.shuffle(terms)
    return terms


def _output_form(path: str, rng: random.Random) -> str:
    root, name = path.split("/", 1)[0] + "/", path.split("/", 1)[1].rstrip("/")
    forms = [f"{root}{name}", f"./{root}{name}/", f"{root}/{name}", f"{root}./{name}"]
    if root == CB.default_durable_root:
        forms.append(name)
    return rng.choice(forms)


def render(m: Model, seed: int) -> str:
    """One surface form of ``m``, chosen by ``seed``; every form means exactly ``m``."""
    rng = random.Random(seed)
    cs = [set(c) for c in sorted(m.clauses, key=lambda c: sorted(map(repr, c)))]
    if rng.random() < 0.3:  # an absorbed clause: A | A&B == A
        extra = rng.choice(cs) | {("J", None, rng.choice(ACTIONS)), ("C", 1, "check")}
        cs.append(extra)
    rng.shuffle(cs)
    conj = [(_ws(rng) + "&" + _ws(rng)).join(_clause_terms(frozenset(c), rng)) for c in cs]
    text = (_ws(rng) + "|" + _ws(rng)).join(conj)
    if m.context != CB.default_context or rng.random() < 0.5:
        text += _ws(rng) + ":" + _ws(rng) + m.context
    outs = [_output_form(p, rng) for p in sorted(m.outputs)]
    if outs and rng.random() < 0.2:
        outs.append(_output_form(rng.choice(sorted(m.outputs)), rng))
    rng.shuffle(outs)
    for o in outs:
        text += _ws(rng) + ">" + _ws(rng) + o
    return _ws(rng) + text + _ws(rng)


seeds = st.integers(min_value=0, max_value=2**32 - 1)
IR_ALPHABET = "CIVLGSRJAPXcz0123456789*!?&|.:>@_/- \t~"


@pytest.fixture(scope="session")
def ray_local():
    """The one embedded Ray of this test process, shared by every module that drives Ray in-process.

    Ray does not support ``ray.shutdown()`` followed by a fresh ``ray.init()`` in one process
    while threads that used the old session live on (ray-project/ray#31145): the suite
    started four sessions, and CI saw the interpreter segfault at exit after every test had
    passed. Tests that need a Ray of another shape (several nodes) run it in a subprocess.
    """
    import os

    import ray

    # as `tinycompress serve` runs Serve: each ingress replica also serves HTTP on a port of its
    # own (for the HAProxy front, tests/test_http_load.py), user code on the replica's own loop
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    # make test runs two pytest workers, each with a Ray of its own: their replicas' ports apart
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(30000 + 200 * worker)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(30199 + 200 * worker)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"] = str(40000 + 200 * worker)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"] = str(40199 + 200 * worker)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_grpo(tmp_path_factory):
    """A 100-intent dataset and an untrained tiny policy: the inputs of a short GRPO run."""
    from transformers import AutoTokenizer

    from learner.policy import PRESETS, build_policy, save_policy
    from rollout.datagen.dataset import build_dataset

    root = tmp_path_factory.mktemp("tiny_grpo")
    build_dataset(root / "data", n=100, seed=4, progress=lambda m: None, paraphrases=0)
    tok = AutoTokenizer.from_pretrained(str(root / "data" / "tokenizer"))
    save_policy(build_policy(PRESETS["tiny"], tok), tok, PRESETS["tiny"], root / "init", {"stage": "init"})
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Small matrices: one torch thread is as fast and does not spin against other work. A module
    uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
