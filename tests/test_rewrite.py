"""IR-minimal rewrites injected into GRPO groups, and the learner's off-policy rows."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from learner.grpo_learner import GRPOConfig, GRPOLearner
from learner.policy import PRESETS, build_policy
from rollout.rewrite import minimal_form, minimal_rewrites
from rollout.batch import RolloutBatch, ScoredBatch, merge_rollouts
from rollout.sampler import encode_completions, encode_prompts
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator, score

CKPT = "serve/assets/compressor_10m"  # its tokenizer is the dataset's BPE


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(CKPT)


@pytest.fixture(scope="module")
def counter():
    return TokenCounter(CKPT)


def _batch(tok, groups: list[list[str]], intents: list[str]) -> RolloutBatch:
    texts = [t for g in groups for t in g]
    ids, mask = encode_completions(tok, texts)
    logprobs = -torch.rand(ids.shape) * mask
    return RolloutBatch(intents, encode_prompts(tok, intents, 192), ids, logprobs, mask,
                        mask.sum(1), texts, len(groups[0]), 3)


LONG = "I9&I15:execute>_runs/sprint-293"  # default context and root spelled out
SHORT = "C11"  # already minimal
INTENTS = ["uphold invariant nine and invariant 15 for sprint-293", "uphold contract rule 11"]


def _scores(batch, counter, refs):
    return score([batch.prompts[i // batch.group_size] for i in range(len(batch.texts))], batch.texts, [refs[i // batch.group_size] for i in range(len(batch.texts))],
                 token_counter=counter)


def test_valid_copies_of_the_best_sample_become_the_minimal_form(tok, counter):
    v = Validator()
    refs = [v.validate(LONG).hash, v.validate(SHORT).hash]
    groups = [[LONG, "I9&I15:execute>_runs/sprint-293&C1", LONG, "I9&"], [SHORT, "C11!", SHORT, "C12"]]
    batch = _batch(tok, groups, INTENTS)
    scores = _scores(batch, counter, refs)
    out, replaced = minimal_rewrites(batch, scores, tok, 2, counter)
    rewrite = minimal_form(LONG)
    assert rewrite == "I9&I15>sprint-293" and counter([rewrite])[0] < counter([LONG])[0]
    assert replaced == [2], "the valid copy of the best sample; failures keep their place; group 1 is minimal"
    assert v.validate(rewrite, refs[0]).valid, "the rewrite means what the best sample means"
    for row in replaced:
        n = int(out.lengths[row])
        assert out.texts[row] == rewrite and bool(out.offpolicy[row])
        assert out.completion_ids[row, n - 1] == tok.eos_token_id and int(out.mask[row].sum()) == n
        assert tok.decode(out.completion_ids[row, : n - 1]).replace(" ", "") == rewrite
    kept = [i for i in range(8) if i not in replaced]
    assert [out.texts[i] for i in kept] == [batch.texts[i] for i in kept] and not out.offpolicy[kept].any()
    assert torch.equal(out.completion_ids[kept, : batch.completion_ids.shape[1]], batch.completion_ids[kept])


def test_groups_without_a_valid_sample_are_left_alone(tok, counter):
    refs = [Validator().validate(LONG).hash]
    batch = _batch(tok, [["I9&", "C99", "I9&I15:execute>_runs/other", "&&"]], INTENTS[:1])
    out, replaced = minimal_rewrites(batch, _scores(batch, counter, refs), tok, 1, counter)
    assert replaced == [] and out is batch
    with pytest.raises(ValueError, match="smaller than the group size"):
        minimal_rewrites(batch, _scores(batch, counter, refs), tok, 4, counter)


def test_failing_samples_keep_their_negative_reward(tok, counter):
    """A group whose only valid sample is its best gets no rewrite: the failures are the signal."""
    v = Validator()
    ref = v.validate(LONG).hash
    batch = _batch(tok, [["I9&", LONG, "I9&I15", "C1"]], INTENTS[:1])
    scores = _scores(batch, counter, [ref])
    assert [s.valid for s in scores] == [False, True, False, False]
    out, replaced = minimal_rewrites(batch, scores, tok, 3, counter)
    assert replaced == [] and out is batch


def test_offpolicy_rows_have_importance_ratio_one(tok, counter):
    """The learner takes current log-probs as the old ones on rewritten rows: the same update
    as if the sampler had reported exactly those log-probs."""
    model = build_policy(PRESETS["tiny"], tok, seed=0)
    v = Validator()
    batch = _batch(tok, [[LONG, "I9&", LONG, "C1"]], INTENTS[:1])
    scores = _scores(batch, counter, [v.validate(LONG).hash])
    out, replaced = minimal_rewrites(batch, scores, tok, 1, counter)
    rewards = torch.tensor([s.reward for s in score([INTENTS[0]] * 4, out.texts, [v.validate(LONG).hash] * 4,
                                                    token_counter=counter)])
    twin = copy.deepcopy(model)
    a = GRPOLearner(model, tok, GRPOConfig(lr=1e-3))
    b = GRPOLearner(twin, tok, GRPOConfig(lr=1e-3))
    with torch.no_grad():
        current, _ = b.completion_logprobs(twin.eval(), out)
    exact = copy.copy(out)
    exact.logprobs = torch.where(out.offpolicy[:, None], current * out.mask, out.logprobs)
    exact.offpolicy = None
    ma = a.update(ScoredBatch(out, rewards, rewards > 0))
    mb = b.update(ScoredBatch(exact, rewards, rewards > 0))
    assert replaced and ma["loss"] == pytest.approx(mb["loss"], abs=1e-6)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_merge_keeps_offpolicy_flags(tok, counter):
    v = Validator()
    plain = _batch(tok, [[SHORT, SHORT]], INTENTS[1:])
    batch = _batch(tok, [[LONG, LONG]], INTENTS[:1])
    out, _ = minimal_rewrites(batch, _scores(batch, counter, [v.validate(LONG).hash]), tok, 1, counter)
    merged = merge_rollouts([plain, out])
    assert merged.offpolicy.tolist() == [False, False, False, True]
    assert merge_rollouts([plain, plain]).offpolicy is None


def test_shortcuts_keep_the_samples_own_order_and_meaning(counter):
    from rollout.rewrite import shortcut_form, shortest_rewrite
    from validator_actors.ir import meaning, parse

    sample = "C13?&I12&I11!:execute>_runs/perf_538"  # intent order, not sorted
    assert shortcut_form(sample) == "C13?&I12&I11!>perf_538"
    assert shortest_rewrite(sample, counter) == "C13?&I12&I11!>perf_538", "the shortcut wins a tie with minimal"
    every = "&".join(f"I{i}" for i in range(1, 21)) + "|P?&I1&C13:execute"
    best = shortest_rewrite(every, counter)
    assert counter([best])[0] < counter([shortcut_form(every)])[0] and "I*" in best
    for program in (sample, every, "I18?&C8?|I1?:build"):
        assert meaning(parse(shortest_rewrite(program, counter))) == meaning(parse(program))
    assert shortcut_form("I9&&") is None and shortest_rewrite("I9&&", counter) is None


def test_the_edit_form_drops_only_the_default_context(tok, counter):
    """``edit`` keeps the sampled output token (``>_runs/...``) and skips ``:execute``: as short
    as the shortcut, one token different from the sample instead of two."""
    from rollout.rewrite import shortest_rewrite
    from validator_actors.ir import meaning, parse

    sample = "C2?&V:execute>_runs/backfill_14"
    edit = shortest_rewrite(sample, counter, "edit")
    assert edit == "C2?&V>_runs/backfill_14" != shortest_rewrite(sample, counter, "shortcut")
    assert counter([edit])[0] == counter([sample])[0] - 1 == counter([shortest_rewrite(sample, counter)])[0]
    spelled, edited = (tok.tokenize(p) for p in (sample, edit))
    assert [t for t in spelled if t != ":execute"] == edited, "every other token as sampled"
    assert meaning(parse(edit)) == meaning(parse(sample))
    assert shortest_rewrite("V&C9:execute", counter, "edit") == "V&C9"
    assert shortest_rewrite("I18?&C8?|I1?:build", counter, "edit") == "I18?&C8?|I1?:build", "a context that is not the default stays"
    every = "&".join(f"I{i}" for i in range(1, 21)) + ":execute>_runs/x_1"
    assert "I*" in shortest_rewrite(every, counter, "edit"), "a strictly shorter form still wins"
    with pytest.raises(ValueError, match="rewrite form must be one of"):
        shortest_rewrite(sample, counter, "shortest")


def test_minimal_rewrites_pass_the_form_through(tok, counter):
    v = Validator()
    long = "C2?&V:execute>_runs/backfill_14"
    batch = _batch(tok, [[long, long, long]], ["check two and V, write backfill_14"])
    scores = _scores(batch, counter, [v.validate(long).hash])
    out, replaced = minimal_rewrites(batch, scores, tok, 1, counter, "edit")
    assert len(replaced) == 1 and out.texts[replaced[0]] == "C2?&V>_runs/backfill_14"
    assert v.validate(out.texts[replaced[0]], v.validate(long).hash).valid


def test_early_end_negatives_are_the_endings_that_drop_meaning(tok, counter):
    """Outputs or a non-default context after the clauses give a ``clauses<eos>`` row that the
    validator fails; a default context with no outputs gives none (ending there is the rewrite)."""
    from rollout.rewrite import early_end_negatives

    v = Validator()
    programs = ["C2?&V:execute>_runs/backfill_14", "V&C9:execute", "I18?&C8?|I1?:build"]
    refs = [v.validate(p).hash for p in programs]
    batch = _batch(tok, [[p, p] for p in programs], ["write backfill_14", "check V and C9", "build it"])
    neg = early_end_negatives(batch, _scores(batch, counter, refs), tok)
    assert neg.texts == ["C2?&V", "I18?&C8?|I1?"] and neg.prompts == [batch.prompts[0], batch.prompts[2]]
    assert neg.group_size == 1 and bool(neg.offpolicy.all())
    for row, ref in zip(range(2), (refs[0], refs[2])):
        n = int(neg.lengths[row])
        assert not v.validate(neg.texts[row], ref).valid, "a proven-wrong ending"
        assert int(neg.completion_ids[row, n - 1]) == tok.eos_token_id and bool(neg.mask[row, :n].all())
        assert tok.decode(neg.completion_ids[row, : n - 1]).replace(" ", "") == neg.texts[row]
    failing = _scores(batch, counter, [v.validate("C1").hash] * 3)  # nothing valid: nothing to cut
    assert early_end_negatives(batch, failing, tok) is None


def test_unlikelihood_pushes_the_wrong_ending_down(tok):
    from rollout.rewrite import early_end_negatives

    v = Validator()
    program = "C2?&V:execute>_runs/backfill_14"
    batch = _batch(tok, [[program] * 4], ["check two and V, write backfill_14"])
    counter = TokenCounter(CKPT)
    scores = _scores(batch, counter, [v.validate(program).hash])
    neg = early_end_negatives(batch, scores, tok)
    model = build_policy(PRESETS["tiny"], tok, seed=0)
    rewards = torch.tensor([s.reward for s in scores])
    scored = ScoredBatch(batch, rewards, rewards > 0, neg)  # equal rewards: zero advantages
    learner = GRPOLearner(model, tok, GRPOConfig(lr=1e-2, unlikelihood=1.0, precision="fp32"))
    _, before = learner.unlikelihood(neg)
    metrics = learner.update(scored)
    _, after = learner.unlikelihood(neg)
    assert metrics["early_end_p"] == pytest.approx(before, rel=1e-4) and after < before
    plain = GRPOLearner(build_policy(PRESETS["tiny"], tok, seed=0), tok, GRPOConfig(lr=1e-2, precision="fp32"))
    assert "unlikelihood" not in plain.update(scored), "unlikelihood 0 is off"
    _, drift = plain.unlikelihood(neg)  # the same step without the term: weight decay only
    assert drift == pytest.approx(before, rel=1e-3) and after < 0.75 * drift


def test_the_clauses_form_collapses_clauses_and_keeps_the_ending(counter):
    """``clauses``: ``C*`` / ``I*`` where the set's first member stood and no duplicates, every
    other term in the sampled order and the context and outputs as sampled, so the policy
    learns neither a new order nor a new place to end."""
    from rollout.rewrite import shortest_rewrite
    from validator_actors.ir import meaning, parse

    every = "&".join(f"C{i}!" for i in range(1, 14))
    cases = {every + "&S?:audit": "C*!&S?:audit",
             "&".join(f"I{i}?" for i in range(1, 21)) + "&V!:execute": "I*?&V!:execute",
             "C5!&J?&I20|I10?&I10?:validate>_runs/perf_320": "C5!&J?&I20|I10?:validate>_runs/perf_320",
             "A&C1&C2&C3&C4&C5&C6&C7&C8&C9&C10&C11&C12&C13&V?:execute": "A&C*&V?:execute",
             "C2?&V:execute>_runs/backfill_14": "C2?&V:execute>_runs/backfill_14"}
    for program, expected in cases.items():
        rewrite = shortest_rewrite(program, counter, "clauses")
        assert rewrite == expected and meaning(parse(rewrite)) == meaning(parse(program))
        assert rewrite.endswith(program[len(program.split(":")[0]):]), "the ending as sampled"
    assert counter([cases[every + "&S?:audit"]])[0] < counter([every + "&S?:audit"])[0] - 20


def test_dynamic_sampling_keeps_whole_groups_whose_rewards_differ(tok, counter):
    """``informative_groups`` + ``select_groups``: the rows of the groups kept, in order, each row
    with its own ids, log-probs, mask and off-policy flag; a batch where nothing differs keeps one."""
    from rollout.batch import select_groups
    from rollout.shaping import informative_groups

    v = Validator()
    refs = [v.validate(LONG).hash, v.validate(SHORT).hash, v.validate(SHORT).hash]
    groups = [[LONG, LONG, LONG], [SHORT, "C12", SHORT], [SHORT, SHORT, SHORT]]
    batch = _batch(tok, groups, [*INTENTS, INTENTS[1]])
    batch.offpolicy = torch.tensor([False, True, False, False, False, True, False, False, False])
    rewards = [s.reward for s in _scores(batch, counter, refs)]
    assert informative_groups(rewards, 3, keep=8) == [1], "group 0 all pass alike, group 2 too"
    assert informative_groups(rewards, 3, keep=0) == [0], "nothing kept: one group still trains"
    out = select_groups(batch, [2, 0])
    assert out.prompts == [INTENTS[1], INTENTS[0]] and out.texts == [SHORT] * 3 + [LONG] * 3
    for new, old in enumerate([6, 7, 8, 0, 1, 2]):
        assert torch.equal(out.completion_ids[new], batch.completion_ids[old])
        assert torch.equal(out.logprobs[new], batch.logprobs[old]) and torch.equal(out.mask[new], batch.mask[old])
        assert out.lengths[new] == batch.lengths[old] and out.offpolicy[new] == batch.offpolicy[old]
    assert out.prompt_ids == [batch.prompt_ids[2], batch.prompt_ids[0]] and out.group_size == 3
    assert out.policy_version == batch.policy_version


def test_rewrite_nll_teaches_the_whole_rewrite_where_credit_stops_at_its_first_token(tok, counter):
    """``grpo.rewrite_nll``: the metric is the mean NLL of the rewrite rows' tokens under the
    policy before the step; with prefix credit alone the rewrite's tokens after the collapsed set
    barely move, with the term every one of them rises."""
    v = Validator()
    long = "C1!&C2!&C3!&C4!&C5!&C6!&C7!&C8!&C9!&C10!&C11!&C12!&C13!&S?:audit"
    batch = _batch(tok, [[long] * 4], ["enforce every contract rule and check S, for the audit"])
    scores = _scores(batch, counter, [v.validate(long).hash])
    out, replaced = minimal_rewrites(batch, scores, tok, 2, counter, "clauses")
    assert out.texts[replaced[0]] == "C*!&S?:audit"
    rescored = _scores(out, counter, [v.validate(long).hash])
    rewards = torch.tensor([s.reward for s in rescored])
    scored = ScoredBatch(out, rewards, torch.tensor([s.valid for s in rescored]))
    row, n = replaced[0], int(out.lengths[replaced[0]])

    def rewrite_logp(learner):
        logp, _ = learner.completion_logprobs(learner.model, out)
        return logp[row, :n].detach()

    results = {}
    for weight in (0.0, 1.0):
        learner = GRPOLearner(build_policy(PRESETS["tiny"], tok, seed=0), tok,
                              GRPOConfig(lr=1e-2, credit="prefix", rewrite_nll=weight))
        before = rewrite_logp(learner)
        metrics = learner.update(scored)
        results[weight] = rewrite_logp(learner) - before
        if weight:
            assert metrics["rewrite_nll"] == pytest.approx(float(-before.mean()), rel=1e-4)
        else:
            assert "rewrite_nll" not in metrics, "0 is off"
    assert bool((results[1.0] > 0).all()), "every token of the rewrite more likely"
    assert float(results[1.0][1:].sum()) > float(results[0.0][1:].sum()) + 1.0, "after its first token too"
    with pytest.raises(ValueError, match="grpo.rewrite_nll >= 0"):
        GRPOConfig(rewrite_nll=-1.0)


def test_imitation_spans_the_whole_rewrite_and_anchor_or_the_rewrite_up_to_its_part(tok, counter):
    from rollout.rewrite import rewrite_imitation

    v = Validator()
    long = "C1!&C2!&C3!&C4!&C5!&C6!&C7!&C8!&C9!&C10!&C11!&C12!&C13!&S?:audit"
    plain = "S?&C4:audit"  # nothing to collapse: no rewrite, nothing imitated
    batch = _batch(tok, [[long] * 4, [plain] * 4], ["enforce every contract rule, check S", "check S, uphold C4"])
    refs = [v.validate(long).hash, v.validate(plain).hash]
    sampled = _scores(batch, counter, refs)
    out, replaced = minimal_rewrites(batch, sampled, tok, 2, counter, "clauses")
    assert replaced == [1, 2] and rewrite_imitation(batch, sampled) is None, "no rewrites, nothing imitated"
    every = rewrite_imitation(out, sampled, "all")
    assert every.shape == out.mask.shape and every.any(1).nonzero().flatten().tolist() == [0, 1, 2]
    assert not bool((every & ~out.mask).any()), "only real tokens"
    assert torch.equal(every[1:3], out.mask[1:3]), "every token of the rewrites"
    anchor = out.completion_ids[0][every[0]].tolist()
    assert anchor[-1] == tok.eos_token_id
    assert tok.decode(anchor[:-1]).replace(" ", "") == long[len("C1!"):], "the source after its first token"
    head = rewrite_imitation(out, sampled, "to_part")
    assert head.any(1).nonzero().flatten().tolist() == [1, 2] and int(head[1].sum()) == 1
    assert tok.convert_ids_to_tokens(int(out.completion_ids[1][head[1]][0])) == "C*!", "the shorter choice only"
    with pytest.raises(ValueError, match="imitation span must be one of"):
        rewrite_imitation(out, sampled, "some")


def test_wrong_steps_are_a_lone_member_as_its_set_and_a_dropped_last_term(tok, counter):
    """Each row ends in the token the validator proves wrong there; a full set written out is
    not "a lone member" (``C*`` for its ``C1`` means the same), and a program without a context
    has no dropped-last-term row."""
    from rollout.rewrite import wrong_step_negatives

    v = Validator()
    programs = ["A?&C1:validate>_runs/migration-459",
                "C1&C2&C3&C4&C5&C6&C7&C8&C9&C10&C11&C12&C13&L!&A?:build",
                "I12&I5!&C9?|I16&I7:execute>_runs/hotfix-781", "C4"]
    batch = _batch(tok, [[p, p] for p in programs], programs)
    neg = wrong_step_negatives(batch, _scores(batch, counter, [v.validate(p).hash for p in programs]), tok)
    assert neg.texts == ["A?&C*", "A?:validate", "C1&C2&C3&C4&C5&C6&C7&C8&C9&C10&C11&C12&C13&L!:build",
                         "I*", "I12&I5!&C9?|I16:execute", "C*"]
    assert neg.prompts == [programs[0], programs[0], programs[1], programs[2], programs[2], programs[3]]
    last = [tok.convert_ids_to_tokens(int(row[n - 1])) for row, n in zip(neg.completion_ids, neg.lengths)]
    assert last == ["C*", ":validate", ":build", "I*", ":execute", "C*"], "the wrong token is the last one"
    assert neg.group_size == 1 and bool(neg.offpolicy.all()) and tok.eos_token_id not in neg.completion_ids
    for text, program in zip(neg.texts, [programs[i] for i in (0, 0, 1, 2, 2, 3)]):
        assert not program.startswith(text), "each row parts from the sample at its last token"


def test_best_sample_imitation_marks_the_best_valid_sample_of_mixed_groups_only(tok, counter):
    """``train.imitate_best``: in a group with both a failure and a valid sample, the shortest
    valid sample's tokens (its <eos> included) are imitated; an all-valid group, an all-failing
    group and the failures themselves are not."""
    from rollout.rewrite import best_sample_imitation

    v = Validator()
    ref = v.validate(LONG).hash
    short = minimal_form(LONG)
    groups = [["I9&", LONG, short, "C1"],  # mixed: the shorter valid sample is the best
              [LONG, LONG, short, LONG],  # all valid
              ["C1", "I9&", "C2", "&&"]]  # all failing
    batch = _batch(tok, groups, INTENTS[:1] * 3)
    sampled = _scores(batch, counter, [ref] * 3)
    mask = best_sample_imitation(batch, sampled)
    assert mask.shape == batch.mask.shape
    assert mask.any(1).nonzero().flatten().tolist() == [2], "only the mixed group's best valid sample"
    assert torch.equal(mask[2], batch.mask[2]) and batch.completion_ids[2, int(batch.lengths[2]) - 1] == tok.eos_token_id
    assert best_sample_imitation(_batch(tok, groups[1:], INTENTS[:1] * 2),
                                 _scores(_batch(tok, groups[1:], INTENTS[:1] * 2), counter, [ref] * 2)) is None


def test_imitate_best_needs_an_imitation_weight():
    from learner.config import RunConfig

    with pytest.raises(ValueError, match="imitate_best needs grpo.rewrite_nll > 0"):
        RunConfig.from_dict({"train": {"imitate_best": True}})
    assert RunConfig.from_dict({"train": {"imitate_best": True}, "grpo": {"rewrite_nll": 0.5}}).train.imitate_best
