"""``tinycompress report``: a report built on the tiny preset, every figure recomputed from the
rows it measured and the logs it read; the analysis functions against references."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from learner import report_analysis as an
from learner.report import parse_arm, parse_recorded
from learner.report_markdown import SECTIONS, ci, pct
from rollout.datagen.dataset import build_dataset, read_split

LIMIT = 6
TINY_YAML = Path(__file__).resolve().parents[1] / "tune_configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_data")
    build_dataset(out, n=300, seed=3, progress=lambda m: None)
    return out


@pytest.fixture(scope="module")
def tiny(data, tmp_path_factory):
    from dataclasses import replace

    from learner.config import RunConfig
    from learner.sft import SFTTrainer

    cfg = RunConfig.from_yaml(TINY_YAML)
    cfg = replace(cfg, sft=replace(cfg.sft, max_steps=4, eval_every=2, eval_samples=8))
    out = tmp_path_factory.mktemp("tiny") / "ck"
    SFTTrainer(cfg, data, out, device="cpu", log=lambda m: None).fit()
    return out


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """A GRPO run folder as the controller writes it: metrics.jsonl, warm_start_eval.json, best/."""
    out = tmp_path_factory.mktemp("run") / "grpo"
    shutil.copytree(tiny, out / "best")
    rng = random.Random(0)
    lines = [{"step": s, "step_time": rng.uniform(1, 5), "pass_rate": rng.random(),
              **({"val_pass_rate": rng.random()} if s % 3 == 0 else {})} for s in range(1, 10)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (out / "warm_start_eval.json").write_text(json.dumps({"step": 0, "val_pass_rate": rng.random()}))
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """``tinycompress eval`` files of a larger model measured elsewhere, and its SFT summary."""
    out = tmp_path_factory.mktemp("recorded")
    rng = random.Random(1)
    for split in ("test", "heldout"):
        n = 200
        model = {"n": n, "pass_rate": rng.randint(100, 200) / n, "program_tokens_mean": rng.uniform(4, 12),
                 "compression_mean": rng.uniform(0.7, 0.9), "failures_by_code": {"HASH_MISMATCH": 3},
                 "latency_ms": {"mean": 50.0, "p50": rng.uniform(20, 80), "p95": 300.0},
                 "throughput": {"batch": 64, "intents_per_s": 70.0}, "size_mb": 190.0, "params": 50_000_000}
        (out / f"big_{split}.json").write_text(json.dumps({"device": "cuda", "threads": 16, "policy": "big",
                                                           "model": model}))
    (out / "summary.json").write_text(json.dumps({"steps": 2000, "seconds": 237.1, "device": "cuda"}))
    return out


@pytest.fixture(scope="module")
def built(data, tiny, run, recorded, tmp_path_factory):
    """The command run as a subprocess, as a user runs it: (out folder, report.json, results, markdown)."""
    out = tmp_path_factory.mktemp("report") / "out"
    md = out.parent / "docs" / "REPORT.md"
    cmd = [sys.executable, "-m", "cluster.cli", "report", "--data", str(data),
           "--arm", "baseline", "--arm", "baseline-minimal", "--arm", f"tiny={tiny}", "--arm", f"grpo={run}",
           "--recorded", f"big={recorded}/big_{{split}}.json,{recorded}/summary.json",
           "--out", str(out), "--markdown", str(md), "--limit", str(LIMIT), "--batch", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert summary["decision"] == report["decision"]["decision"]
    results = pq.read_table(out / "results.parquet").to_pylist()
    return out, report, results, md


def _rows(data) -> dict[str, list[dict]]:
    return {s: read_split(data, s).to_pylist()[:LIMIT] for s in ("test", "heldout")}


MEASURED = ("baseline", "baseline-minimal", "tiny", "grpo")


# ---- the report as built ----------------------------------------------------------------------
def test_every_section_and_figure_is_present(built):
    out, report, _, md = built
    text = md.read_text()
    for section in SECTIONS:
        assert f"\n## {section}\n" in text, section
    assert set(report["figures"]) == {"pareto", "features", "latency", "scaling", "curves"}
    for path in map(Path, report["figures"].values()):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
        link = Path(os.path.relpath(path, md.parent)).as_posix()
        assert f"]({link})" in text, link  # linked relative to the Markdown file
    assert report["meta"]["command"] in text and "--limit 6" in report["meta"]["command"]


def test_every_arm_measured_the_same_rows_and_the_validators_verdicts(built, data):
    from rollout.baseline import RuleBasedCompressor
    from validator_actors.tokens import TokenCounter
    from validator_actors.validator import Validator

    _, _, results, _ = built
    rows = _rows(data)
    by_key = {(s, r["id"]): r for s, rs in rows.items() for r in rs}
    for arm in MEASURED:
        for split, rs in rows.items():
            assert [r["id"] for r in results if r["arm"] == arm and r["split"] == split] == [r["id"] for r in rs]
    validator, count, base = Validator(), TokenCounter(data / "tokenizer"), RuleBasedCompressor()
    tokens = count([r["program"] for r in results])
    for r, n in zip(results, tokens):
        row = by_key[(r["split"], r["id"])]
        verdict = validator.validate(r["program"], row["reference_hash"])
        assert r["valid"] == verdict.valid and r["code"] == (verdict.codes or [""])[0]
        assert r["ir_tokens"] == n and r["intent_tokens"] == row["intent_tokens"] and r["latency_ms"] > 0
        if r["arm"] == "baseline":
            assert r["program"] == base.compress(row["intent"])
        if r["arm"] == "baseline-minimal":
            assert r["program"] == base.compress_minimal(row["intent"])


def test_pass_rates_tokens_and_latency_are_recomputed_from_the_rows(built):
    from scipy.stats import binomtest

    _, report, results, md = built
    text = md.read_text()
    for arm in MEASURED:
        for split in ("test", "heldout"):
            rs = [r for r in results if r["arm"] == arm and r["split"] == split]
            s = report["arms"][arm]["splits"][split]
            passed = sum(r["valid"] for r in rs)
            assert (s["n"], s["passed"]) == (len(rs), passed) and s["pass_rate"] == passed / len(rs)
            ref = binomtest(passed, len(rs)).proportion_ci(confidence_level=0.95, method="wilson")
            assert s["ci95"] == pytest.approx([ref.low, ref.high], abs=1e-9)
            assert s["ir_tokens_mean"] == pytest.approx(np.mean([r["ir_tokens"] for r in rs]))
            assert s["compression_mean"] == pytest.approx(np.mean([1 - r["ir_tokens"] / r["intent_tokens"] for r in rs]))
            saved = [(r["intent_tokens"] - r["ir_tokens"]) * r["valid"] for r in rs]
            assert s["tokens_saved_effective_per_intent"] == pytest.approx(np.mean(saved))
            assert s["latency_ms"]["p95"] == pytest.approx(np.percentile([r["latency_ms"] for r in rs], 95))
            line = next(ln for ln in text.splitlines() if ln.startswith(f"| `{arm}` | {len(rs)} | {pct(passed / len(rs))}"))
            assert ci(s["ci95"]) in line  # the Markdown prints the recomputed figures


def test_failures_and_features_are_recomputed_from_the_rows(built, data):
    _, report, results, md = built
    rows = _rows(data)
    by_key = {(s, r["id"]): r for s, rs in rows.items() for r in rs}
    for arm in MEASURED:
        mine = [r for r in results if r["arm"] == arm]
        assert report["failures_by_code"][arm] == dict(Counter(r["code"] for r in mine if not r["valid"]))
        assert sum(f["count"] for f in report["top_failures"][arm]) <= sum(not r["valid"] for r in mine)
        kinds = {an.failure_kind(r["code"], by_key[(r["split"], r["id"])]) for r in mine if not r["valid"]}
        assert len(report["top_failures"][arm]) == min(5, len(kinds))
        for feature, test in (("run name", lambda row: "run" in row["tags"]),
                              ("complete set", lambda row: "all_rules" in row["tags"]),
                              ("held-out template", lambda row: row["id"].startswith("heldout"))):
            hits = [r for r in mine if test(by_key[(r["split"], r["id"])])]
            cell = report["features"].get(feature, {}).get(arm)
            assert (cell["n"], cell["passed"]) == (len(hits), sum(r["valid"] for r in hits)) if hits else cell is None
    families = [f for f in report["features"] if f.startswith("frame: ")]
    assert sum(report["features"][f]["tiny"]["n"] for f in families) == 2 * LIMIT  # one family a row
    assert report["unhandled_features"] == [f for f, arms in report["features"].items()
                                            if max(c["pass_rate"] for c in arms.values()) < an.HANDLED]
    hard = [r for r in by_key.values() if r["minimal_tokens"] >= an.LONG_MINIMAL]
    assert report["incompressible"]["n"] == len(hard)


def test_training_cost_and_curves_come_from_the_runs_own_logs(built, tiny, run):
    _, report, _, _ = built
    summary = json.loads((tiny / "sft_summary.json").read_text())
    t = report["arms"]["tiny"]["training"]
    assert (t["steps"], t["seconds"], t["device"]) == (summary["steps"], summary["seconds"], summary["device"])
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    g = report["arms"]["grpo"]["training"]
    assert g["steps"] == metrics[-1]["step"] and g["seconds"] == pytest.approx(sum(m["step_time"] for m in metrics))
    curve = next(c for c in report["curves"] if c["name"] == "grpo")
    elapsed = np.cumsum([m["step_time"] for m in metrics])
    expected = [(0.0, json.loads((run / "warm_start_eval.json").read_text())["val_pass_rate"])] + [
        (t, m["val_pass_rate"]) for t, m in zip(elapsed, metrics) if "val_pass_rate" in m]
    assert np.allclose(curve["points"], expected)


def test_recorded_arm_is_labelled_and_never_decides(built, recorded):
    _, report, _, md = built
    big = report["arms"]["big"]
    rec = json.loads((recorded / "big_test.json").read_text())["model"]
    assert big["kind"] == "recorded" and "recorded" in big["label"]
    assert big["splits"]["test"]["pass_rate"] == pytest.approx(rec["pass_rate"])
    assert big["splits"]["test"]["ci95"] == pytest.approx(list(an.wilson(round(rec["pass_rate"] * rec["n"]), rec["n"])))
    assert report["best_model"] in ("tiny", "grpo")
    assert "| `big` (recorded) |" in md.read_text()


def test_decision_scaling_and_roi_follow_the_measured_figures(built):
    _, report, _, md = built
    arms = report["arms"]
    best = max(("tiny", "grpo"), key=lambda a: arms[a]["splits"]["test"]["ci95"][0])
    rules = max(("baseline", "baseline-minimal"), key=lambda a: arms[a]["splits"]["test"]["pass_rate"])
    assert (report["best_model"], report["best_rules"]) == (best, rules)
    first = report["decision"]["checks"][0]
    assert (first["value"], first["threshold"]) == (arms[best]["splits"]["test"]["ci95"][0],
                                                    arms[rules]["splits"]["test"]["ci95"][1])
    assert report["decision"]["decision"] in ("integrate", "iterate", "abandon")
    assert f"Applied: **{report['decision']['decision']}**" in md.read_text()
    sizes = {p["params"] for p in report["scaling"]["points"]}
    assert sizes == {arms["tiny"]["params"], arms["big"]["params"]} and report["scaling"]["fit"] is not None
    roi = report["roi"]
    assert roi["param_ratio"] == pytest.approx(5e8 / arms[best]["params"])
    mem = roi["costs"]["memory (MB of weights)"]
    assert mem["target"] == pytest.approx(arms[best]["size_mb"] * roi["param_ratio"])
    p, r = arms[best]["splits"]["test"]["pass_rate"], arms[rules]["splits"]["test"]["pass_rate"]
    assert mem["required_pass_rate"] == pytest.approx(p + (p - r) * (mem["ratio"] - 1))
    assert "Extrapolation, not measurement" in md.read_text()


# ---- the analysis functions ------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(0, 5), (5, 5), (8, 10), (54, 100), (983, 1000)])
def test_wilson_matches_scipy_and_holds_the_estimate(k, n):
    from scipy.stats import binomtest

    lo, hi = an.wilson(k, n)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert lo <= k / n <= hi
    wider = an.wilson(k, n)
    narrower = an.wilson(4 * k, 4 * n)
    assert narrower[1] - narrower[0] <= wider[1] - wider[0]


def test_scaling_fit_recovers_a_known_trend_and_extrapolates_it():
    a, b = -3.0, 0.8
    points = [{"params": p, "n": 10**9, "pass_rate": 1 / (1 + math.exp(-(a + b * math.log10(p)))),
               "ir_tokens_mean": 12 - 1.5 * math.log10(p)} for p in (2e5, 1e7, 5e7)]
    fit = an.fit_scaling(points)
    assert fit["logit_pass"]["intercept"] == pytest.approx(a, abs=1e-6)
    assert fit["logit_pass"]["slope_per_decade"] == pytest.approx(b, abs=1e-6)
    at = an.predict(fit, 5e8)
    assert at["pass_rate"] == pytest.approx(1 / (1 + math.exp(-(a + b * math.log10(5e8)))))
    assert at["ir_tokens_mean"] == pytest.approx(12 - 1.5 * math.log10(5e8))
    assert an.fit_scaling(points[:1]) is None


def test_break_even_grows_with_the_cost_and_equals_the_small_arm_at_equal_cost():
    assert an.break_even(0.9, 0.5, 1.0) == pytest.approx(0.9)
    needs = [an.break_even(0.9, 0.5, r) for r in (1, 2, 10, 50)]
    assert needs == sorted(needs) and needs[-1] > 1.0


def _arm(pass_rate, n=1000, compression=0.85, latency=50.0, size=20.0):
    k = round(pass_rate * n)
    return {"arm": "m", "pass_rate": k / n, "ci95": list(an.wilson(k, n)), "compression_mean": compression,
            "latency_p50_ms": latency, "size_mb": size, "params": 1e7, "train_seconds": 300.0}


def test_decision_rules():
    rules = _arm(0.54)
    assert an.decide(_arm(0.98), rules)["decision"] == "integrate"
    slow = an.decide(_arm(0.98, latency=150.0), rules)
    assert slow["decision"] == "iterate" and "latency" in slow["why"]
    assert an.decide(_arm(0.85), rules)["decision"] == "iterate"  # beats the rules, misses the pass floor
    assert an.decide(_arm(0.56), rules)["decision"] == "abandon"  # intervals overlap
    assert an.decide(_arm(0.98, n=8), _arm(0.54, n=8))["decision"] == "abandon"  # too few rows to tell
    assert an.decide(None, rules)["decision"] == "abandon"
    assert an.decide(_arm(0.98), None)["decision"] == "undecided"


def test_arm_arguments():
    assert parse_arm("baseline").kind == "baseline" and parse_arm("baseline-minimal").kind == "baseline-minimal"
    assert parse_arm("10m=serve/assets/compressor_10m").path == "serve/assets/compressor_10m"
    spec = parse_recorded("50m=docs/bench/eval_50m_{split}.json,docs/bench/s.json")
    assert (spec.name, spec.summary) == ("50m", "docs/bench/s.json")
    for bad in ("10m", "=x", "x="):
        with pytest.raises(ValueError):
            parse_arm(bad)
    with pytest.raises(ValueError):
        parse_recorded("50m=docs/bench/eval.json")  # no {split}
