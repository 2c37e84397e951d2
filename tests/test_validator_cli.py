"""``tinycompress validate`` as a subprocess: JSON out, exit 0 valid / 1 invalid, no Ray import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "validate", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_valid_program_exits_0_with_report_and_compression():
    intent = "could you please check contract rule number three while we are building"
    r = validate("C?3 : build", "--intent", intent)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] is True and out["errors"] == []
    assert out["canonical"] == "C3?:build" and len(out["hash"]) == 64
    assert out["token_counter"] == "lexical"
    assert out["compression"] == 1 - out["tokens"] / out["intent_tokens"] > 0.5


def test_invalid_program_exits_1_with_its_code():
    r = validate("C14")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["valid"] is False and [e["code"] for e in out["errors"]] == ["UNKNOWN_NUMBER"]
    assert "compression" not in out
    with_intent = json.loads(validate("C14", "--intent", "check contract rule 14").stdout)
    assert with_intent["compression"] is None and with_intent["tokens"] > 0  # an invalid program compresses nothing


def test_reference_mismatch_gives_hash_mismatch():
    ok = validate("L.C.3?:build", "--reference", "C3?:build")
    assert ok.returncode == 0, ok.stdout
    by_hash = validate("C3?:build", "--reference", json.loads(ok.stdout)["hash"])
    assert by_hash.returncode == 0
    r = validate("C3:build", "--reference", "C3?:build")
    assert r.returncode == 1
    assert [e["code"] for e in json.loads(r.stdout)["errors"]] == ["HASH_MISMATCH"]


def test_usage_errors_exit_2():
    assert validate("C3", "--reference", "C99").returncode == 2
    assert validate("C3", "--tokenizer", "/nonexistent/tokenizer").returncode == 2


def test_validate_path_imports_neither_ray_nor_torch():
    code = (
        "import sys, contextlib, io\n"
        "from cluster.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['validate', 'C3?'])\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in ('ray', 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
