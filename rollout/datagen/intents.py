"""Synthetic intents: verbose, varied English requests, each with its reference program.

A *meaning* (``validator_actors.ir.Meaning``) is sampled from the codebook, then rendered as
English through a template (48 frames, 8 of them held out), with politeness, rationale,
filler, paraphrased verbs and objects, and the occasional typo in the chatter around the
request. The reference program is ``canonical(meaning)``; ``minimal(meaning)`` is the
shortest equivalent form we know, which RL can discover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from validator_actors import ir
from validator_actors.codebook import Codebook

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()

GREETINGS = [
    "Hi team,", "Hello!", "Hey there,", "Good morning.", "Hi all, hope your week is going well.",
    "Quick request:", "Hello folks,", "Hi,", "Greetings,", "Morning everyone!", "Hey,",
    "Hope you are doing well.", "Hi there, sorry to bother you again.", "",
]
POLITE = [
    "could you please", "would you kindly", "I'd really appreciate it if you could",
    "can you", "please", "if you have a minute, please", "when you get a chance, could you",
    "I need you to", "would it be possible to", "kindly", "I would like you to",
    "do me a favour and",
]
WHY = [
    "because last week's release went sideways", "since the auditors keep asking about it",
    "as we want to be sure nothing slipped through", "because the new hire changed a lot of code",
    "since compliance flagged this area in the last review",
    "because we had 3 incidents over the past 2 months", "as the customer demo is on Friday",
    "since the pipeline was flaky yesterday", "because I promised the lead we would",
    "as this came up in the retro", "because the on-call rotation noticed some odd behaviour",
    "since we are preparing the quarterly report", "as the migration touched 12 services",
    "because it is part of the sign-off checklist", "since the last run took 45 minutes",
    "as the security team wants a paper trail",
]
THANKS = [
    "Thanks so much in advance!", "No rush, but today would be great.",
    "Let me know if anything looks off.", "Cheers.", "Thank you!", "Much appreciated.",
    "Ping me when it is done.", "Thanks a lot, you are a star.", "Appreciate the help as always.",
    "Shout if you need anything from me.", "Many thanks.", "",
]
MORE = [
    "I know everyone is slammed this week, so thanks for squeezing it in.",
    "The usual dashboards should show whether it worked.",
    "If something fails, please leave a note in the channel rather than retrying blindly.",
    "Nothing else is needed from you on this one as far as I can tell.",
    "We can talk it through at standup tomorrow if that is easier.",
    "I have already told the rest of the team that this is coming.",
    "Feel free to loop in the platform folks if you hit permissions issues.",
    "It should not take long, but it matters for the sign-off.",
    "Honestly it is a small thing, but it keeps coming up.",
    "Once this is done we can finally close the ticket.",
]
VERBS = {
    "check": ["check", "verify", "double-check", "confirm", "run a check on", "inspect",
              "validate", "audit the status of", "look over"],
    "enforce": ["enforce", "apply", "uphold", "put into force", "make binding", "stick to",
                "respect", "follow"],
    "deny": ["waive", "skip", "switch off", "disable", "suspend", "bypass", "turn off",
             "leave out"],
}
PASSIVE = {
    "check": ["checked", "verified", "double-checked", "confirmed", "inspected"],
    "enforce": ["enforced", "applied", "upheld", "put into force", "respected"],
    "deny": ["waived", "skipped", "switched off", "disabled", "bypassed"],
}
UNNUMBERED = {
    "V": ["the verification suite", "verification", "the verification step"],
    "L": ["the law", "the body of law", "the law as a whole"],
    "G": ["governance review", "the governance process", "governance"],
    "S": ["the schemas", "schema validation", "the data schemas"],
    "R": ["the receipt", "the job receipt", "receipts"],
    "J": ["the job spec", "the JobSpec", "the job specification"],
    "A": ["the decision record", "the decision log", "the architecture decision record"],
    "P": ["the policy", "the policies in force", "policy"],
}
CONTEXT_TAIL = {
    "build": [" in the build context", " during the build", " while building",
              " as part of the build phase", " for the build"],
    "audit": [" for the audit", " during the audit", " in audit mode", " in the audit context"],
    "security": [" in the security context", " for the security review", " as a security matter",
                 " under the security phase"],
    "validate": [" in the validate phase", " during validation", " as part of validation",
                 " in the validation context"],
    "execute": [" when executing the job", " in the execute context", " while the job runs"],
}
RUN_TAIL = [
    " and write the results to the run '{r}'", " and save everything under run {r}",
    " with output going to the {r} run folder", ", storing the output in run \"{r}\"",
    " and put the results in run {r}",
]
RUN_WORDS = ["nightly", "release", "audit", "hotfix", "q3", "canary", "weekly", "smoke",
             "migration", "rc", "beta", "demo", "perf", "sprint", "backfill", "rollback"]

# Frames: {g} greeting, {p} polite verb lead, {core} the request, {ctx} context, {run} output,
# {why} rationale, {thx} sign-off, {core_passive} object-first phrasing. The last 8 are held out.
TEMPLATES = [
    "{g} {p} {core}{ctx}{run}? {Why}. {thx}",
    "{g} {P} {core}{ctx}{run}. {thx}",
    "{g} {Why}, so {p} {core}{ctx}{run}? {thx}",
    "Request: {core}{ctx}{run}. Reason: {why}. {thx}",
    "{g} I'm writing to ask whether you could {core}{ctx}{run}. {Why}. {thx}",
    "{P} {core}{ctx}{run}, {why}. {thx}",
    "{g} Small favour: {core}{ctx}{run}. {thx}",
    "{g} Today's task for you is to {core}{ctx}{run}. {Why}. {thx}",
    "{g} {p} {core}{run}{ctx}. {Why}. {thx}",
    "{Why}. {g} {p} {core}{ctx}{run}? {thx}",
    "{g} We need to {core}{ctx}{run}, {why}. {thx}",
    "{g} Action item: {core}{ctx}{run}. Context for this: {why}. {thx}",
    "{g} For the record, {p} {core}{ctx}{run}. {thx}",
    "{g} Heads up, {why}. Please {core}{ctx}{run}. {thx}",
    "{g} The plan is simple: {core}{ctx}{run}. {Why}. {thx}",
    "{g} {p} go ahead and {core}{ctx}{run}? {thx}",
    "{thx} Oh, and before I forget, {p} {core}{ctx}{run}? {Why}.",
    "{g} Can we {core}{ctx}{run}? {Why}. {thx}",
    "{g} Ticket summary: {core}{ctx}{run}. Motivation: {why}. {thx}",
    "{g} It would help a lot to {core}{ctx}{run}, {why}. {thx}",
    "{g} Following up on yesterday, {p} {core}{ctx}{run}. {thx}",
    "{g} {p} take care of this: {core}{ctx}{run}. {Why}. {thx}",
    "{g} My ask is that you {core}{ctx}{run}. {thx}",
    "{g} {Why}, and so I'd like to {core}{ctx}{run}. {thx}",
    "{g} Short version: {core}{ctx}{run}. Long version: {why}. {thx}",
    "{g} Per the runbook, {p} {core}{ctx}{run}. {thx}",
    "{g} {p} make sure to {core}{ctx}{run}. {Why}. {thx}",
    "{g} Next step on our side: {core}{ctx}{run}. {thx}",
    "{g} Whenever you're free, {core}{ctx}{run}. {Why}. {thx}",
    "{g} {core_passive}{ctx}{run}, please. {Why}. {thx}",
    "{g} What I need: {core_passive}{ctx}{run}. {thx}",
    "{g} Ideally {core_passive}{ctx}{run} today. {Why}. {thx}",
    "{g} Reminder: {p} {core}{ctx}{run}. {thx}",
    "{g} Before we close the sprint, {p} {core}{ctx}{run}? {thx}",
    "{g} Could somebody {core}{ctx}{run}? {Why}. {thx}",
    "{g} Instructions: {core}{ctx}{run}. Note: {why}. {thx}",
    "{g} I'd like the team to {core}{ctx}{run}. {Why}. {thx}",
    "{g} Let's {core}{ctx}{run}. {Why}. {thx}",
    "{g} Please see that {core_passive}{ctx}{run}. {thx}",
    "{g} {Why}; that is why I'm asking you to {core}{ctx}{run}. {thx}",
    # held out: never used in train/val/test
    "{g} Task at hand -> {core}{ctx}{run}. (Background: {why}.) {thx}",
    "{g} If all goes to plan, {core_passive}{ctx}{run} by tonight. {thx}",
    "{g} One thing on my list for you: {core}{ctx}{run}. {thx}",
    "{Why}. Given that, {p} {core}{ctx}{run}. {g} {thx}",
    "{g} Here's the deal: we should {core}{ctx}{run}. {Why}. {thx}",
    "{g} On behalf of the platform team, {p} {core}{ctx}{run}? {thx}",
    "{g} Todo for whoever picks this up: {core}{ctx}{run}. {thx}",
    "{g} Quick one - {core_passive}{ctx}{run}, ok? {Why}. {thx}",
]
N_HELDOUT_TEMPLATES = 8


@dataclass(frozen=True)
class Example:
    """One intent with its reference meaning and how it was made."""

    intent: str
    meaning: ir.Meaning
    template_id: int
    tags: tuple[str, ...]  # e.g. all_rules, legacy, compound, or, run, default_context
    plan: tuple = ()  # (clauses of atom groups, context, outputs, alias) as sampled and rendered


def template_ids(heldout: bool) -> list[int]:
    n = len(TEMPLATES) - N_HELDOUT_TEMPLATES
    return list(range(n, len(TEMPLATES))) if heldout else list(range(n))


class IntentGenerator:
    """Samples meanings from the codebook and renders them as verbose English intents."""

    def __init__(self, cb: Codebook, seed: int):
        self.cb, self.rng = cb, random.Random(seed)
        self.numbered = list(cb.entries)
        self.others = [r for r in cb.radicals if r not in cb.entries]
        self.aliases = [a for a in cb.aliases]

    # ---- meanings -------------------------------------------------------------------
    def atom_group(self) -> list[ir.Atom]:
        """One requested item: a single atom, or a full numbered set ('every rule')."""
        rng, cb = self.rng, self.cb
        action = rng.choices(["check", "enforce", "deny"], weights=[45, 35, 20])[0]
        if rng.random() < 0.72:
            radical = rng.choice(self.numbered)
            if rng.random() < 0.12:
                return [(radical, n, action) for n in cb.numbers(radical)]
            return [(radical, rng.choice(cb.numbers(radical)), action)]
        return [(rng.choice(self.others), None, action)]

    def sample(self) -> tuple[list[list[list[ir.Atom]]], str, tuple[str, ...], str | None]:
        """Clauses of atom groups, a context, outputs, and an alias used (if any)."""
        rng = self.rng
        alias = rng.choice(self.aliases) if rng.random() < 0.06 else None
        n_clauses = 2 if rng.random() < 0.1 else 1
        clauses = []
        for _ in range(n_clauses):
            size = rng.choices([1, 2, 3], weights=[50, 35, 15])[0]
            clauses.append([self.atom_group() for _ in range(size)])
        if alias:  # an alias is one item, optionally with more items AND-ed to it
            clauses = [[self.alias_group(alias)] + (clauses[0][:1] if rng.random() < 0.3 else [])]
        context = rng.choice(self.cb.contexts) if rng.random() < 0.7 else self.cb.default_context
        outputs = (self.run_name(),) if rng.random() < 0.25 else ()
        return clauses, context, outputs, alias

    def alias_group(self, alias: str) -> list[ir.Atom]:
        clauses = ir.meaning(ir.parse(self.cb.aliases[alias], self.cb), self.cb).clauses
        return list(clauses[0])

    def run_name(self) -> str:
        rng = self.rng
        sep = rng.choice(["-", "_", "-"])
        return f"{rng.choice(RUN_WORDS)}{sep}{rng.randint(1, 999)}"

    # ---- English --------------------------------------------------------------------
    def object_phrase(self, group: list[ir.Atom]) -> str:
        rng, cb = self.rng, self.cb
        radical, number, _ = group[0]
        name = cb.radicals[radical]["name"].lower()
        if len(group) > 1:  # the full set
            kind = "contract rules" if radical == "C" else "invariants"
            count = NUMBER_WORDS[len(group)]
            return rng.choice([f"every {kind[:-1]}", f"all {count} {kind}", f"the full set of {kind}",
                               f"each and every {kind[:-1]}", f"all the {kind}"])
        if number is None:
            return rng.choice(UNNUMBERED[radical])
        kind = "contract rule" if radical == "C" else "invariant"
        summary = cb.entries[radical][number].summary
        return rng.choice([
            f"{kind} {number}", f"{kind} number {number}", f"{radical}{number}",
            f"{kind} {NUMBER_WORDS[number]}", f"the '{summary}' {kind} ({radical}{number})",
            f"{kind} {number} ({summary})", f"{name} rule {radical}-{number}",
        ])

    def clause_phrase(self, groups: list[list[ir.Atom]], passive: bool) -> str:
        rng = self.rng
        parts = []
        for i, g in enumerate(groups):
            action = g[0][2]
            obj = self.object_phrase(g)
            same_as_prev = i > 0 and groups[i - 1][0][2] == action and rng.random() < 0.4
            if passive:
                parts.append(f"{obj} gets {rng.choice(PASSIVE[action])}")
            elif same_as_prev:
                parts.append(obj)
            else:
                parts.append(f"{rng.choice(VERBS[action])} {obj}")
        joiner = rng.choice([" and ", " and also ", ", plus ", " as well as ", " together with "])
        if passive:
            joiner = rng.choice([" and ", ", and "])
        return joiner.join(parts)

    def core(self, clauses, alias: str | None, passive: bool) -> str:
        rng = self.rng
        if alias:
            legacy = rng.choice([f"the legacy {alias[1:]} macro", f"the old {alias} shortcut",
                                 f"what we used to call {alias[1:]}"])
            verb = rng.choice(["run", "apply", "handle", "carry out"])
            head = f"{legacy} gets run" if passive else f"{verb} {legacy}"
            rest = clauses[0][1:]
            return head + (f" and {self.clause_phrase(rest, passive)}" if rest else "")
        phrases = [self.clause_phrase(c, passive) for c in clauses]
        if len(phrases) == 1:
            return phrases[0]
        frame = rng.choice(["either {} or {}", "{}, or alternatively {}", "{} - or, if that is easier, {}"])
        return frame.format(*phrases)

    def typo(self, text: str) -> str:
        words = text.split(" ")
        candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
        if not candidates:
            return text
        i = self.rng.choice(candidates)
        w = words[i]
        j = self.rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        return " ".join(words)

    def render(self, clauses, context: str, outputs, alias, template_id: int) -> str:
        rng = self.rng
        frame = TEMPLATES[template_id]
        passive = "{core_passive}" in frame
        why, thx, greet = rng.choice(WHY), rng.choice(THANKS), rng.choice(GREETINGS)
        if rng.random() < 0.15:
            why = self.typo(why)
        if rng.random() < 0.1:
            thx = self.typo(thx)
        explicit_default = context == self.cb.default_context and rng.random() < 0.3
        ctx = rng.choice(CONTEXT_TAIL[context]) if context != self.cb.default_context or explicit_default else ""
        run = rng.choice(RUN_TAIL).format(r=outputs[0]) if outputs else ""
        polite = rng.choice(POLITE)
        text = frame.format(
            g=greet, p=polite, P=polite[0].upper() + polite[1:], core=self.core(clauses, alias, passive),
            core_passive=self.core(clauses, alias, True) if passive else "", ctx=ctx, run=run,
            why=why, Why=why[0].upper() + why[1:], thx=thx,
        )
        if "{why}" not in frame and "{Why}" not in frame:
            text += f" {why[0].upper() + why[1:]}."
        if rng.random() < 0.6:
            text += " " + rng.choice(MORE)
        return " ".join(text.split()).replace(" ,", ",").replace(" .", ".").replace(" ?", "?")

    def example(self, template_id: int) -> Example:
        """One intent for ``template_id``; items never repeat and OR branches never absorb."""
        while True:
            clauses, context, outputs, alias = self.sample()
            if all(_distinct_items(c) for c in clauses):
                meaning = _meaning_of(clauses, context, outputs, self.cb)
                if len(meaning.clauses) == len(clauses):
                    break
        intent = self.render(clauses, context, outputs, alias, template_id)
        plan = (clauses, context, outputs, alias)
        return Example(intent, meaning, template_id, _tags(clauses, context, outputs, alias, self.cb), plan)

    def paraphrase(self, ex: Example, template_id: int) -> Example:
        """The same request rendered again (new wording, same meaning and plan)."""
        intent = self.render(*ex.plan, template_id)
        return Example(intent, ex.meaning, template_id, ex.tags, ex.plan)


def surface_program(plan: tuple, cb: Codebook) -> str:
    """The reference in the order the intent mentions things (equivalent to the canonical).

    Like the canonical form it lists every rule, writes the context and full output paths;
    unlike it, clauses and atoms keep the intent's order, so reading and writing align.
    """
    clauses, context, outputs, _ = plan
    body = "|".join("&".join(ir.atom_text(a, cb) for g in c for a in g) for c in clauses)
    return body + f":{context}" + "".join(">" + ir.normalize_output(o, cb).rstrip("/") for o in outputs)


def _distinct_items(groups: list[list[ir.Atom]]) -> bool:
    """No entry is named twice in one clause (a full set counts as every entry of its radical)."""
    keys = [(r, n) for g in groups for r, n, _ in g]
    return len(keys) == len(set(keys))


def _meaning_of(clauses, context: str, outputs, cb: Codebook) -> ir.Meaning:
    """Build the canonical meaning through the printer/parser so it is exactly what IR gives."""
    text = "|".join("&".join(ir.atom_text(a, cb) for g in c for a in g) for c in clauses)
    text += f":{context}" + "".join(f">{o}" for o in outputs)
    return ir.meaning(ir.parse(text, cb), cb)


def _tags(clauses, context, outputs, alias, cb: Codebook) -> tuple[str, ...]:
    tags = []
    if any(len(g) > 1 for c in clauses for g in c):
        tags.append("all_rules")
    if alias:
        tags.append("legacy")
    if any(len(c) > 1 for c in clauses):
        tags.append("compound")
    if len(clauses) > 1:
        tags.append("or")
    if outputs:
        tags.append("run")
    if context == cb.default_context:
        tags.append("default_context")
    return tuple(tags)
