"""Calibration of the serving-time ``faithful`` estimate: how well ``faithful: false`` catches
programs that do not mean what their intent means.

Every program is labelled right or wrong by its intent's reference meaning (level 6: the sha256
of the canonical expansion), which the service never sees. Three sets:

- served: the shipped compressor's own answers (``serve.compressor.Compressor``, greedy and 4
  candidates) on the held-out-template split and on ``benchmarks/serve_voices.jsonl``
  (intents written in other voices: terse, chat, questions, formal, non-native, bullets, typos);
- mutated: each held-out reference program changed one way (another rule number, an atom
  turned into a denial, an output folder the intent never names, another context, an atom
  dropped, an atom added), all wrong, beside the unchanged references, all right.

For each set: precision (wrong among those flagged ``faithful: false``) and recall (flagged
among the wrong) of three rules: the findings alone (what the service returns), findings or the
rule-based compressor's reading disagreeing, findings or the candidates disagreeing.

    python benchmarks/bench_serve_faithful.py --out docs/bench/serve_faithful.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOICES = HERE / "serve_voices.jsonl"


def rates(pairs: list[tuple[bool, bool]]) -> dict:
    """(wrong, flagged) pairs -> precision and recall of the flag at catching wrong programs."""
    tp = sum(w and f for w, f in pairs)
    flagged, wrong = sum(f for _, f in pairs), sum(w for w, _ in pairs)
    return {"n": len(pairs), "wrong": wrong, "flagged": flagged, "caught": tp,
            "precision": round(tp / flagged, 3) if flagged else None,
            "recall": round(tp / wrong, 3) if wrong else None}


def served(comp, rows: list[dict], k: int, batch: int = 16) -> list[dict]:
    """The compressor's answers with their labels and the three rules' flags."""
    out = []
    for at in range(0, len(rows), batch):
        chunk = rows[at:at + batch]
        for row, answer in zip(chunk, comp.compress([r["intent"] for r in chunk], k)):
            why = answer.faithfulness
            findings = bool(why["findings"]) or not answer.valid
            out.append({"wrong": answer.report["hash"] != row["reference_hash"], "findings": findings,
                        "baseline": findings or not why["baseline_agrees"],
                        "agreement": findings or (why["agreement"] or 0) < 1, "faithful": answer.faithful,
                        "codes": [f["code"] for f in why["findings"]], "program": answer.program})
    return out


def mutate(program: str, cb, rng: random.Random) -> dict[str, str]:
    """One wrong program per kind of mistake (those that apply to this program)."""
    from validator_actors import ir

    m = ir.meaning(ir.parse(program, cb), cb)
    atoms = [(c, i) for c, clause in enumerate(m.clauses) for i in range(len(clause))]
    out = {}

    def with_atom(c: int, i: int, atom) -> ir.Meaning:
        clause = list(m.clauses[c])
        clause[i:i + 1] = [atom] if atom else []
        return replace(m, clauses=m.clauses[:c] + (tuple(clause),) + m.clauses[c + 1:])

    numbered = [(c, i) for c, i in atoms if m.clauses[c][i][1] is not None]
    if numbered:
        c, i = rng.choice(numbered)
        r, n, a = m.clauses[c][i]
        out["number"] = with_atom(c, i, (r, rng.choice([x for x in cb.numbers(r) if x != n]), a))
    plain = [(c, i) for c, i in atoms if m.clauses[c][i][2] != "deny"]
    if plain:
        c, i = rng.choice(plain)
        r, n, _ = m.clauses[c][i]
        out["deny"] = with_atom(c, i, (r, n, "deny"))
    out["output"] = replace(m, outputs=m.outputs + ("_runs/scratch-42/",))
    out["context"] = replace(m, context=rng.choice([x for x in cb.contexts if x != m.context]))
    wide = [(c, i) for c, i in atoms if len(m.clauses[c]) > 1]
    if wide:
        out["drop"] = with_atom(*rng.choice(wide), None)
    present = {r for clause in m.clauses for r, _, _ in clause}
    extra = [r for r in cb.radicals if r not in present and r not in cb.entries]
    if extra:
        c = rng.randrange(len(m.clauses))
        out["add"] = replace(m, clauses=m.clauses[:c] + (m.clauses[c] + ((rng.choice(extra), None, "check"),),)
                             + m.clauses[c + 1:])
    return {kind: ir.canonical(mm, cb) for kind, mm in out.items()}


def mutated(rows: list[dict], seed: int = 0) -> tuple[list[dict], dict]:
    from validator_actors.faithful import check
    from validator_actors.validator import Validator

    v, rng = Validator(), random.Random(seed)
    labelled, by_kind = [], {}
    for row in rows:
        labelled.append({"wrong": False, "kind": "reference",
                         "flag": bool(check(row["intent"], row["program"], v.cb))})
        for kind, program in mutate(row["program"], v.cb, rng).items():
            report = v.validate(program, row["reference_hash"])
            if report.codes != ["HASH_MISMATCH"]:  # invalid, or the same meaning after all
                continue
            labelled.append({"wrong": True, "kind": kind, "flag": bool(check(row["intent"], program, v.cb))})
    for kind in sorted({x["kind"] for x in labelled}):
        by_kind[kind] = rates([(x["wrong"], x["flag"]) for x in labelled if x["kind"] in (kind, "reference")])
    return labelled, by_kind


def load_rows(data: str, limit: int) -> tuple[list[dict], list[dict]]:
    import pyarrow.parquet as pq

    from validator_actors.validator import Validator

    heldout = pq.read_table(Path(data) / "heldout.parquet", columns=["intent", "program", "reference_hash"])
    heldout = heldout.to_pylist()[:limit]
    v = Validator()
    voices = [json.loads(line) for line in VOICES.read_text().splitlines() if line.strip()]
    for row in voices:
        row["reference_hash"] = v.validate(row["program"]).hash
    return heldout, voices


def summary(answers: list[dict]) -> dict:
    out = {rule: rates([(a["wrong"], a[rule]) for a in answers]) for rule in ("findings", "baseline", "agreement")}
    codes: dict[str, list[int]] = {}
    for a in answers:
        for code in set(a["codes"]):
            codes.setdefault(code, [0, 0])[a["wrong"]] += 1
    out["finding_codes_right_wrong"] = dict(sorted(codes.items()))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/default")
    p.add_argument("--limit", type=int, default=1000, help="held-out rows used")
    p.add_argument("--out")
    args = p.parse_args()
    from serve.cli import load_config
    from serve.compressor import Compressor, CompressorConfig

    heldout, voices = load_rows(args.data, args.limit)
    served_cfg = load_config()["args"].get("compressor") or {}  # as served (int8, ...), cache off
    comp = Compressor(CompressorConfig(**{**served_cfg, "cache_size": 0}))
    report = {"command": "python " + " ".join(sys.argv), "loadavg_before": os.getloadavg()}
    for name, rows in (("heldout", heldout), ("voices", voices)):
        for k in (1, 4):
            answers = served(comp, rows, k)
            report[f"served {name} k={k}"] = summary(answers)
            if name == "voices" and k == 1:
                report["voices_answers"] = [{"intent": r["intent"], "reference": r["program"], **a}
                                            for r, a in zip(rows, answers)]
    labelled, by_kind = mutated(heldout)
    report["mutated heldout"] = {"all": rates([(x["wrong"], x["flag"]) for x in labelled]), "by_kind": by_kind}
    report["loadavg_after"] = os.getloadavg()
    for key, value in report.items():
        if key.startswith(("served", "mutated")):
            print(key, json.dumps(value))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
