"""The rule-based compressor: the baseline every model must beat.

Keywords and regular expressions map intent text to a program, with no access to the
reference. It reads the codebook (radical names, rule summaries, aliases, contexts) but not
the intent generator's phrase banks: its verb and context lists are what an engineer would
write by hand. It emits the canonical (explicit, not minimal) form.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

from validator_actors import ir
from validator_actors.codebook import Codebook, load_codebook
from validator_actors.validator import Validator

WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
NUM = r"(\d+|" + "|".join(sorted(WORD_NUMBERS, key=len, reverse=True)) + r")"
ACTION_WORDS = {
    "check": r"check|verify|validate|confirm|inspect|review|verified|checked|confirmed|inspected",
    "enforce": r"enforce|apply|uphold|follow|respect|enforced|applied|upheld|respected",
    "deny": r"waive|skip|disable|bypass|suspend|ignore|waived|skipped|disabled|bypassed",
}
RADICAL_WORDS = {
    "V": r"verification", "G": r"governance", "S": r"schemas?", "R": r"receipts?",
    "J": r"job ?spec(?:ification)?", "A": r"decision (?:record|log)", "P": r"polic(?:y|ies)",
    "L": r"(?:the )?law\b",
}
CONTEXT_WORDS = {"build": r"build(?:ing)?", "audit": r"audit", "security": r"security",
                 "validate": r"validat(?:e|ion)", "execute": r"execut(?:e|ing)|job runs"}
CONTEXT_LEAD = r"\b(?:in|during|for|as part of|under|while|when)\s+(?:the\s+)?(?:\w+\s+)?"
PASSIVE = re.compile(r"[^.,;]{0,30}?\b(?:gets|get|is|be)\s+(\w+)", re.I)
OR_SPLIT = re.compile(r"\beither\b|,? or alternatively\b|\bor, if that is easier,", re.I)


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    atoms: tuple[tuple[str, int | None], ...]  # (radical, number) pairs, action still unknown


class RuleBasedCompressor:
    """``compress(intent) -> program`` by keyword rules. Deterministic and reference-free.

    >>> RuleBasedCompressor().compress("Please verify contract rule 3 during the build.")
    'C3?:build'
    """

    def __init__(self, cb: Codebook | None = None):
        self.cb = cb or load_codebook()
        cb = self.cb
        self.numbered = [
            (re.compile(rf"\bcontract (?:rule|clause)s? (?:number )?{NUM}\b|\bC-?{NUM}\b", re.I), "C"),
            (re.compile(rf"\binvariants? (?:number )?{NUM}\b|\bI-?{NUM}\b", re.I), "I"),
        ]
        self.full_sets = [
            (re.compile(r"\b(?:every|all|each)\b[\w ]{0,20}?\bcontract rules?\b", re.I), "C"),
            (re.compile(r"\b(?:every|all|each)\b[\w ]{0,20}?\binvariants?\b", re.I), "I"),
        ]
        self.summaries = [
            (re.compile(re.escape(e.summary), re.I), r, e.number)
            for r, table in cb.entries.items() for e in table.values()
        ]
        self.plain = [(re.compile(rf"\b{pat}", re.I), r) for r, pat in RADICAL_WORDS.items()]
        self.actions = [(re.compile(rf"\b(?:{pat})\b", re.I), a) for a, pat in ACTION_WORDS.items()]
        self.contexts = [(re.compile(rf"{CONTEXT_LEAD}(?:{pat})\b", re.I), c) for c, pat in CONTEXT_WORDS.items()]
        self.alias = re.compile(r"@?\b([A-Z][A-Z_]{3,})\b")
        self.run = re.compile(r"\brun (?:folder )?['\"]?([A-Za-z]+[-_]\d+)|the ([A-Za-z0-9_-]+) run folder")

    def mentions(self, text: str) -> list[Mention]:
        found: dict[tuple, Mention] = {}
        for pat, radical in self.numbered:
            for m in pat.finditer(text):
                raw = next(g for g in m.groups() if g)
                n = int(raw) if raw.isdigit() else WORD_NUMBERS[raw.lower()]
                found.setdefault((radical, n), Mention(m.start(), m.end(), ((radical, n),)))
        for pat, radical, n in self.summaries:
            m = pat.search(text)
            if m:
                found.setdefault((radical, n), Mention(m.start(), m.end(), ((radical, n),)))
        for pat, radical in self.full_sets:
            m = pat.search(text)
            if m:
                atoms = tuple((radical, n) for n in self.cb.numbers(radical))
                found[(radical, "*")] = Mention(m.start(), m.end(), atoms)
        for pat, radical in self.plain:
            m = pat.search(text)
            if m:
                found.setdefault((radical, None), Mention(m.start(), m.end(), ((radical, None),)))
        return sorted(found.values(), key=lambda x: x.start)

    def action_for(self, text: str, pos: int, end: int) -> str:
        """A passive 'X gets checked' right after; else the last action word before; else enforce."""
        passive = PASSIVE.match(text, end)
        if passive:
            for pat, a in self.actions:
                if pat.fullmatch(passive.group(1)):
                    return a
        before = [(m.end(), a) for pat, a in self.actions for m in pat.finditer(text, 0, pos)]
        if before:
            return max(before)[1]
        after = [(m.start(), a) for pat, a in self.actions for m in pat.finditer(text, pos, pos + 40)]
        return min(after)[1] if after else self.cb.bare_action

    def clause(self, text: str) -> list[str]:
        terms = []
        for alias in self.alias.findall(text):
            if "@" + alias in self.cb.aliases:
                terms.append("@" + alias)
        for mention in self.mentions(text):
            symbol = self.cb.action_symbol(self.action_for(text, mention.start, mention.end))
            terms += [f"{r}{'' if n is None else n}{symbol}" for r, n in mention.atoms]
        return terms

    def compress_minimal(self, intent: str) -> str:
        """:meth:`compress`, printed as ``ir.minimal`` where it parses (same meaning, fewer tokens)."""
        return self._reprint(self.compress(intent), ir.minimal)

    def _reprint(self, text: str, printer) -> str:
        """``text`` printed by ``printer`` (``ir.canonical``, ``ir.minimal``) where it parses and
        its symbols check; as it is otherwise, for the validator to name what is wrong."""
        try:
            surface = ir.parse(text, self.cb)
            if ir.check_symbols(surface, self.cb):
                return text
            return printer(ir.meaning(surface, self.cb), self.cb)
        except ir.IRSyntaxError:
            return text

    def compress(self, intent: str) -> str:
        parts = [p for p in OR_SPLIT.split(intent) if p.strip()]
        clauses = [c for c in (self.clause(p) for p in parts) if c]
        if not clauses:
            return ""
        hits = [(m.start(), c) for pat, c in self.contexts for m in pat.finditer(intent)]
        context = max(hits)[1] if hits else self.cb.default_context
        text = "|".join("&".join(c) for c in clauses) + f":{context}"
        run = self.run.search(intent)
        if run:
            text += ">" + (run.group(1) or run.group(2))
        return self._reprint(text, ir.canonical)


def evaluate_compressor(compress, rows: list[dict], count_tokens, validator: Validator | None = None,
                        progress: str | None = None) -> dict:
    """Pass rate, compression, program tokens, failures by code and latency for any compressor;
    ``progress``: a bar on stderr with this label (shown on a terminal only)."""
    validator = validator or Validator()
    latencies, programs = [], []
    if progress:
        from tqdm import tqdm

        rows_iter = tqdm(rows, desc=progress, unit="intent", leave=False, disable=None)
    else:
        rows_iter = rows
    for row in rows_iter:
        t0 = time.perf_counter()
        programs.append(compress(row["intent"]))
        latencies.append((time.perf_counter() - t0) * 1000)
    reports = [validator.validate(p, r["reference_hash"]) for p, r in zip(programs, rows)]
    p_tokens = count_tokens(programs)
    i_tokens = [r["intent_tokens"] for r in rows]
    comp = [1 - p / i for p, i in zip(p_tokens, i_tokens)]
    failures: dict[str, int] = {}
    for rep in reports:
        for code in rep.codes[:1]:
            failures[code] = failures.get(code, 0) + 1
    valid = [i for i, rep in enumerate(reports) if rep.valid]
    ordered = sorted(latencies)
    return {
        "n": len(rows),
        "pass_rate": round(len(valid) / len(rows), 4),
        "compression_mean": round(statistics.fmean(comp), 4),
        "compression_mean_valid": round(statistics.fmean(comp[i] for i in valid), 4) if valid else None,
        "program_tokens_mean": round(statistics.fmean(p_tokens), 3),
        "reference_tokens_mean": round(statistics.fmean(r["program_tokens"] for r in rows), 3),
        "minimal_tokens_mean": round(statistics.fmean(r["minimal_tokens"] for r in rows), 3),
        "failures_by_code": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        "latency_ms": {"mean": round(statistics.fmean(latencies), 4),
                       "p50": round(ordered[len(ordered) // 2], 4),
                       "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 4)},
    }
