"""Decoder: a canonical :class:`Meaning` expands deterministically into one JobSpec.

The JobSpec is checked by our draft-07 JSON Schema (``additionalProperties: false``), built from
the codebook and compiled once (see :class:`SchemaChecker`). Its SHA-256 over canonical JSON is
the program's fidelity hash (SPECTRUM).
"""

from __future__ import annotations

import hashlib
import json

import fastjsonschema
import jsonschema

from validator_actors.codebook import Codebook, load_codebook
from validator_actors.ir import Meaning, atom_text, canonical

TASK_TYPES = {
    frozenset({"check"}): "verification",
    frozenset({"enforce"}): "enforcement",
    frozenset({"deny"}): "waiver",
}
ACTION_VERBS = {"check": "check", "enforce": "enforce", "deny": "waive"}


def jobspec_schema(cb: Codebook) -> dict:
    """The draft-07 schema of a JobSpec under codebook ``cb``."""
    path = {"type": "string", "minLength": 1, "maxLength": cb.max_path_length}
    criterion = {
        "type": "object",
        "additionalProperties": False,
        "required": ["term", "action", "radical", "number", "requirement"],
        "properties": {
            "term": {"type": "string", "minLength": 1},
            "action": {"enum": sorted(set(cb.unary_ops.values()) | {cb.bare_action})},
            "radical": {"enum": sorted(cb.radicals)},
            "number": {"type": ["integer", "null"], "minimum": 1},
            "requirement": {"type": "string", "minLength": 1},
        },
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "TinyCompress JobSpec",
        "type": "object",
        "additionalProperties": False,
        "required": [
            "job_id", "phase", "task_type", "intent", "inputs", "outputs",
            "catalytic_domains", "determinism",
        ],
        "properties": {
            # the length bound keeps out a job id with a trailing newline: Python's "$"
            # (jsonschema) also matches before a final newline, ECMA's (fastjsonschema) does not
            "job_id": {"type": "string", "pattern": "^job-[0-9a-f]{16}$", "minLength": 20, "maxLength": 20},
            "phase": {"enum": list(cb.contexts)},
            "task_type": {"enum": sorted(set(TASK_TYPES.values()) | {"composite"})},
            "intent": {"type": "string", "minLength": 1},
            "inputs": {"type": "array", "items": path, "uniqueItems": True},
            "outputs": {
                "type": "object",
                "additionalProperties": False,
                "required": ["durable_paths", "validation_criteria"],
                "properties": {
                    "durable_paths": {
                        "type": "array", "items": path, "minItems": 1,
                        "maxItems": cb.max_outputs, "uniqueItems": True,
                    },
                    "validation_criteria": {
                        "type": "array", "minItems": 1,
                        "items": {
                            "type": "object", "additionalProperties": False,
                            "required": ["all_of"],
                            "properties": {"all_of": {"type": "array", "minItems": 1, "items": criterion}},
                        },
                    },
                },
            },
            "catalytic_domains": {
                "type": "array", "uniqueItems": True, "minItems": 1,
                "items": {"enum": sorted(r["domain"] for r in cb.radicals.values())},
            },
            "determinism": {
                "type": "object",
                "additionalProperties": False,
                "required": ["codebook_version", "canonical_program", "hash_algorithm"],
                "properties": {
                    "codebook_version": {"const": cb.version},
                    "canonical_program": {"type": "string", "minLength": 1},
                    "hash_algorithm": {"const": "sha256"},
                },
            },
        },
    }


class SchemaChecker:
    """Draft-07 checking of JobSpecs, built once per codebook.

    ``fastjsonschema`` compiles the schema to Python code for the hot path (about 20x faster
    than ``jsonschema``'s interpreter, which alone would cap the validator near 3k programs/s);
    ``jsonschema`` meta-checks the schema at start and explains a rejection in detail.
    """

    def __init__(self, cb: Codebook):
        self.schema = jobspec_schema(cb)
        jsonschema.Draft7Validator.check_schema(self.schema)
        self.reference = jsonschema.Draft7Validator(self.schema)
        self._fast = fastjsonschema.compile(self.schema)

    def errors(self, jobspec: dict) -> list[str]:
        """Empty when ``jobspec`` is valid, else readable messages (first error first)."""
        try:
            self._fast(jobspec)
            return []
        except fastjsonschema.JsonSchemaValueException as fast_error:
            found = sorted(self.reference.iter_errors(jobspec), key=lambda e: list(e.path))
            if not found:  # the two engines disagree: report it rather than pass silently
                return [f"(fastjsonschema only) {fast_error.message}"]
            return [
                f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message[:200]}"
                for e in found
            ]


_CHECKERS: dict[int, SchemaChecker] = {}


def schema_checker(cb: Codebook | None = None) -> SchemaChecker:
    """The :class:`SchemaChecker` for ``cb`` (one per codebook)."""
    cb = cb or load_codebook()
    if id(cb) not in _CHECKERS:
        _CHECKERS[id(cb)] = SchemaChecker(cb)
    return _CHECKERS[id(cb)]


def _input_path(radical: str, number: int | None, cb: Codebook) -> str:
    base = cb.radicals[radical]["path"]
    return f"{base}/{radical}{number}.md" if number is not None else f"{base}/"


def _requirement(radical: str, number: int | None, cb: Codebook) -> str:
    if number is not None:
        return cb.entries[radical][number].text
    return cb.radicals[radical]["description"]


def _gloss(m: Meaning, cb: Codebook) -> str:
    """A deterministic English reading of the program (the JobSpec's ``intent``)."""
    def phrase(a):
        radical, number, action = a
        rad = cb.radicals[radical]
        if number is not None:
            what = f"{rad['name'].lower()} {number} ({cb.entries[radical][number].summary})"
        else:
            what = rad["name"].lower()
        return f"{ACTION_VERBS[action]} {what}"

    clauses = [" and ".join(phrase(a) for a in c) for c in m.clauses]
    return "; or ".join(clauses) + f" — in the {m.context} context."


def expand(m: Meaning, cb: Codebook | None = None) -> dict:
    """Expand a canonical meaning into its JobSpec (a plain JSON-ready dict)."""
    cb = cb or load_codebook()
    program = canonical(m, cb)
    atoms = [a for c in m.clauses for a in c]
    actions = frozenset(a[2] for a in atoms)
    job_id = "job-" + hashlib.sha256(program.encode()).hexdigest()[:16]
    outputs = list(m.outputs) or [f"{cb.default_durable_root}{job_id}/"]
    criteria = [
        {
            "all_of": [
                {
                    "term": atom_text(a, cb), "action": a[2], "radical": a[0],
                    "number": a[1], "requirement": _requirement(a[0], a[1], cb),
                }
                for a in clause
            ]
        }
        for clause in m.clauses
    ]
    return {
        "job_id": job_id,
        "phase": m.context,
        "task_type": TASK_TYPES.get(actions, "composite"),
        "intent": _gloss(m, cb),
        "inputs": sorted({_input_path(a[0], a[1], cb) for a in atoms}),
        "outputs": {"durable_paths": outputs, "validation_criteria": criteria},
        "catalytic_domains": sorted({cb.radicals[a[0]]["domain"] for a in atoms}),
        "determinism": {
            "codebook_version": cb.version,
            "canonical_program": program,
            "hash_algorithm": "sha256",
        },
    }


def jobspec_hash(jobspec: dict) -> str:
    """SHA-256 of the JobSpec as canonical JSON (sorted keys, no spaces, UTF-8)."""
    blob = json.dumps(jobspec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _overlaps(a: str, b: str) -> bool:
    """Directory-wise overlap of two '/'-terminated paths."""
    return a.startswith(b) or b.startswith(a)


def path_issues(jobspec: dict, cb: Codebook | None = None) -> list[tuple[str, str]]:
    """CMP-01: the path rules on every path in a JobSpec (inputs are read, outputs written)."""
    cb = cb or load_codebook()
    issues: list[tuple[str, str]] = []
    clean_outputs: list[str] = []
    outputs = jobspec["outputs"]["durable_paths"]
    for kind, p in [("input", p) for p in jobspec["inputs"]] + [("output", p) for p in outputs]:
        if p.startswith("/"):
            issues.append(("PATH_ESCAPES_REPO_ROOT", f"{kind} {p!r} is absolute; paths are repo-relative"))
        elif ".." in p.split("/"):
            issues.append(("PATH_CONTAINS_TRAVERSAL", f"{kind} {p!r} contains '..'"))
        elif kind == "output":
            forbidden = [r for r in cb.forbidden_roots if _overlaps(p, r)]
            if forbidden:
                issues.append(
                    ("FORBIDDEN_PATH_OVERLAP", f"output {p!r} overlaps the forbidden root {forbidden[0]!r}")
                )
            elif not any(p.startswith(r) and p != r for r in cb.durable_roots):
                issues.append(
                    ("OUTPUT_OUTSIDE_DURABLE_ROOT",
                     f"output {p!r} is not inside a durable root ({', '.join(cb.durable_roots)})")
                )
            else:
                clean_outputs.append(p)
    for i, a in enumerate(clean_outputs):
        for b in clean_outputs[i + 1 :]:
            if _overlaps(a, b):
                issues.append(("PATH_OVERLAP", f"outputs {a!r} and {b!r} overlap"))
    return issues
