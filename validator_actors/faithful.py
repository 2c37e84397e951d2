"""Does a valid program say what its intent says? Reference-free checks of a program's meaning
against the words of its intent: the serving-time ``faithful`` estimate.

The validator's levels 1-5 say a program is well formed; only level 6 (a reference meaning)
says it is the right program, and at serving time there is no reference. These checks read the
intent's own words, in both directions:

- nothing else: every rule or invariant number the program names is written in the intent (as
  digits, a number word or the entry's summary); every radical has its name in the intent; a
  denied (``!``), checked (``?``) or enforced atom has a word of that polarity in the intent; a
  context other than the default is named; every output folder's name is in the intent;
- everything stated: every "rule N" / "invariant N" / ``C-N`` the intent writes is in the
  program, a run folder the intent names is an output, a context the intent names ("during the
  build") is the program's, and a negative verb in the intent is a denial in the program.

The word lists are this module's own (plain English, not the intent generator's phrase banks),
so that calibration on generated intents is not circular. How well ``faithful: false`` catches
wrong programs (precision, recall) is measured on the held-out split and on intents written in
other voices: docs/SERVE.md.

>>> from validator_actors.codebook import load_codebook
>>> [f.code for f in check("Please verify contract rule 3 during the build.", "C5?:build", load_codebook())]
['NUMBER_NOT_IN_INTENT', 'NUMBER_MISSING']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from validator_actors import ir
from validator_actors.codebook import Codebook, load_codebook

_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen twenty").split()
_NUMBER = r"(\d{1,3}|" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")"
POLARITY = {  # stems: a word of the intent that carries the action
    "deny": r"waiv|skip|switch(?:ed|ing)? off|turn(?:ed|ing)? off|disabl|suspend|bypass|leav(?:e|ing) out|left out"
            r"|ignor|exempt|omit|exclud|deny|denied|don'?t|do not|without|opt(?:ed)? out|drop",
    "check": r"check|verif|confirm|inspect|validat|audit|review|look(?:ed|ing)? over|examin|test",
    "enforce": r"enforc|appl[yi]|uphold|upheld|into force|binding|stick(?:ing)? to|respect|follow|keep|kept|obey"
               r"|compl[yi]|honou?r|requir|mandat|in force",
}
RADICAL_CUES = {"C": r"contract|rule|clause|\bC-?\d", "I": r"invariant|\bI-?\d", "V": r"verification",
                "L": r"\blaw", "G": r"governance", "S": r"schema", "R": r"receipt",
                "J": r"job ?spec", "A": r"decision", "P": r"polic"}
CONTEXT_CUES = {"build": r"build", "audit": r"audit", "security": r"secur", "validate": r"validat",
                "execute": r"execut|job runs"}
CONTEXT_LEAD = r"\b(?:in|during|for|under|as part of|as a|while)\s+(?:the\s+)?(?:\w+\s+)?"
STATED_CONTEXT = {c: re.compile(CONTEXT_LEAD + rf"(?:{cue})\w*(?![-\w])", re.I) for c, cue in CONTEXT_CUES.items()}
STATED_NUMBER = [("C", re.compile(rf"\b(?:contract\s+)?(?:rule|clause)s?\s+(?:number\s+|no\.?\s*|#)?{_NUMBER}\b", re.I)),
                 ("C", re.compile(r"\bC-?(\d{1,3})\b")),
                 ("I", re.compile(rf"\binvariants?\s+(?:number\s+|no\.?\s*|#)?{_NUMBER}\b", re.I)),
                 ("I", re.compile(r"\bI-?(\d{1,3})\b"))]
STATED_RUN = re.compile(r"\bruns?\s+(?:folder\s+)?['\"]?[A-Za-z][\w-]*\d|\brun folder\b|\boutput (?:folder|dir)", re.I)
FULL_SET = re.compile(r"\b(?:all|every|each|whole|entire|full|complete)\b", re.I)


@dataclass(frozen=True)
class Finding:
    """One way the program may not say what the intent says."""

    code: str
    message: str


def _number(text: str) -> int:
    return int(text) if text.isdigit() else _WORDS.index(text.lower())


def _says(intent: str, pattern: str) -> bool:
    return re.search(pattern, intent, re.I) is not None


def _mentions_number(intent: str, n: int, summary: str) -> bool:
    if re.search(rf"(?<![\d.]){n}(?!\d)", intent) or summary.lower() in intent.lower():
        return True
    return n < len(_WORDS) and re.search(rf"\b{_WORDS[n]}\b", intent, re.I) is not None


def _full_sets(m: ir.Meaning, cb: Codebook) -> set[tuple[str, str]]:
    """(radical, action) pairs for which some clause holds every numbered entry of the radical."""
    out = set()
    for clause in m.clauses:
        for radical in cb.entries:
            for action in POLARITY:
                if all((radical, n, action) in clause for n in cb.numbers(radical)):
                    out.add((radical, action))
    return out


def _nothing_else(intent: str, m: ir.Meaning, cb: Codebook) -> list[Finding]:
    found, atoms = [], {a for clause in m.clauses for a in clause}
    full = _full_sets(m, cb)
    for radical, n, action in sorted(atoms, key=str):
        if not _says(intent, RADICAL_CUES[radical]):
            found.append(Finding("RADICAL_NOT_IN_INTENT", f"the intent never names {cb.radicals[radical]['name']}"))
        if n is not None and (radical, action) not in full:
            if not _mentions_number(intent, n, cb.entries[radical][n].summary):
                found.append(Finding("NUMBER_NOT_IN_INTENT", f"the program names {radical}{n}; the intent never "
                                                             f"says {n}"))
    for radical, action in sorted(full):
        if not FULL_SET.search(intent):
            found.append(Finding("SET_NOT_IN_INTENT", f"the program takes every {radical} entry; the intent never "
                                                      "says all or every"))
    for action in sorted({a for _, _, a in atoms}):
        if not _says(intent, POLARITY[action]):
            found.append(Finding(f"{action.upper()}_NOT_IN_INTENT", f"the program has '{action}' atoms; the intent "
                                                                     f"has no word for {action}"))
    if m.context != cb.default_context and not _says(intent, CONTEXT_CUES[m.context]):
        found.append(Finding("CONTEXT_NOT_IN_INTENT", f"the program's context is {m.context}; the intent never "
                                                      "names it"))
    for path in m.outputs:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.lower() not in intent.lower():
            found.append(Finding("OUTPUT_NOT_IN_INTENT", f"the program writes to {path}; the intent never names "
                                                         f"{name!r}"))
    return found


def _everything_stated(intent: str, m: ir.Meaning, cb: Codebook) -> list[Finding]:
    found, atoms = [], {a for clause in m.clauses for a in clause}
    named = {(r, n) for r, n, _ in atoms}
    for radical, pattern in STATED_NUMBER:
        for match in pattern.finditer(intent):
            n = _number(match.group(1))
            if n in cb.entries[radical] and (radical, n) not in named:
                found.append(Finding("NUMBER_MISSING", f"the intent names {radical}{n}; the program does not"))
    stated = [c for c, pattern in STATED_CONTEXT.items() if pattern.search(intent)]
    if stated and m.context not in stated:
        found.append(Finding("CONTEXT_MISSING", f"the intent names the {' or '.join(stated)} context; the program's "
                                                f"is {m.context}"))
    if STATED_RUN.search(intent) and not m.outputs:
        found.append(Finding("OUTPUT_MISSING", "the intent names a run folder; the program writes no output"))
    if _says(intent, POLARITY["deny"]) and all(a != "deny" for _, _, a in atoms):
        found.append(Finding("DENY_MISSING", "the intent has a negative verb; the program denies nothing"))
    return sorted(set(found), key=lambda f: (f.code, f.message))


def check(intent: str, program: str, cb: Codebook | None = None) -> list[Finding]:
    """Findings for a program against its intent (empty: nothing found). A program that does not
    parse or names unknown symbols gets one ``NOT_WELL_FORMED`` finding (the validator says why)."""
    cb = cb or load_codebook()
    try:
        surface = ir.parse(program, cb)
        if ir.check_symbols(surface, cb):
            return [Finding("NOT_WELL_FORMED", "the program does not check (see the validator's report)")]
        m = ir.meaning(surface, cb)
    except ir.IRSyntaxError:
        return [Finding("NOT_WELL_FORMED", "the program does not parse (see the validator's report)")]
    return _nothing_else(intent, m, cb) + _everything_stated(intent, m, cb)


def check_all(intents: list[str], programs: list[str], cb: Codebook | None = None) -> list[list[Finding]]:
    """:func:`check` for each (intent, program) pair.

    >>> [len(f) for f in check_all(["check invariant 5", "check invariant 5"], ["I5?", "I6?"])]
    [0, 2]
    """
    cb = cb or load_codebook()
    return [check(i, p, cb) for i, p in zip(intents, programs)]
