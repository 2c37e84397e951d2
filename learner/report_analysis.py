"""The numbers of ``tinycompress report``, computed from per-row results: pure functions.

A *result* is one arm's verdict on one data row (``ArmRow``); a *row* is the dataset's
record of that intent. Everything here (pass rates with Wilson intervals, failures by code
and by intent feature, what cannot be compressed, the scaling fit, the ROI break-even and the
integrate / iterate / abandon decision) is a function of those two lists and of the
thresholds below, so a test can recompute any figure the report prints.

Wilson score interval: Wilson (1927), "Probable inference, the law of succession, and
statistical inference", JASA 22(158).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from statistics import NormalDist, fmean

import numpy as np

from rollout.datagen.intents import TEMPLATES, template_ids

Z95 = NormalDist().inv_cdf(0.975)
FLOORS = {"pass_rate": 0.90, "compression": 0.80, "latency_p50_ms": 100.0, "size_mb": 1024.0}
"""The design's success floors: test pass rate > 90%, compression > 80%, inference < 100 ms
(greedy, batch 1, CPU, median), model < 1 GB."""
HANDLED = 0.90
"""An arm handles an intent feature when its pass rate on the rows with it reaches this."""
LONG_MINIMAL = 8
"""An intent 'cannot be compressed' far when its minimal program has at least this many tokens."""
LENGTH_EDGES = (45, 65)
"""Intent-token bucket edges for the length feature."""
HELDOUT_TEMPLATES = frozenset(template_ids(heldout=True))


@dataclass(frozen=True)
class ArmRow:
    """One arm's output for one row, as ``results.parquet`` stores it."""

    arm: str
    split: str
    id: str
    program: str
    valid: bool
    code: str  # the first error code ("" when valid)
    ir_tokens: int
    intent_tokens: int
    latency_ms: float


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for ``passed`` successes out of ``n``.

    >>> [round(x, 4) for x in wilson(8, 10)]
    [0.4902, 0.9433]
    """
    if n == 0:
        return (0.0, 1.0)
    p, z2 = passed / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if passed == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    return (lo, 1.0 if passed == n else min(1.0, centre + half))


def summarize(results: list[ArmRow]) -> dict:
    """Pass rate with its interval, IR tokens, compression, savings, latency, failures."""
    n = len(results)
    passed = sum(r.valid for r in results)
    lat = [r.latency_ms for r in results]
    saved = [r.intent_tokens - r.ir_tokens for r in results]
    return {
        "n": n, "passed": passed, "pass_rate": passed / n, "ci95": list(wilson(passed, n)),
        "ir_tokens_mean": fmean(r.ir_tokens for r in results),
        "intent_tokens_mean": fmean(r.intent_tokens for r in results),
        "compression_mean": fmean(1 - r.ir_tokens / r.intent_tokens for r in results),
        "tokens_saved_total": sum(saved),
        # a failing program is sent back as the raw intent: it saves nothing
        "tokens_saved_effective_per_intent": fmean(s if r.valid else 0 for s, r in zip(saved, results)),
        "latency_ms": {"mean": fmean(lat), "p50": float(np.percentile(lat, 50)),
                       "p95": float(np.percentile(lat, 95))},
        "failures_by_code": failures_by_code(results),
    }


def failures_by_code(results: list[ArmRow]) -> dict[str, int]:
    """Failing rows by their first error code, most common first."""
    return dict(Counter(r.code for r in results if not r.valid).most_common())


# ---- intent features ---------------------------------------------------------------------
def template_family(template_id: int) -> str:
    """The shape of a frame: passive (object first), question, polite lead, or embedded."""
    frame = TEMPLATES[template_id]
    if "{core_passive}" in frame:
        return "passive"
    if "{run}?" in frame or "{ctx}?" in frame:
        return "question"
    if "{p} {core}" in frame or "{P} {core}" in frame:
        return "polite lead"
    return "embedded"


def length_bucket(intent_tokens: int, edges: tuple[int, ...] = LENGTH_EDGES) -> str:
    lo = 0
    for hi in edges:
        if intent_tokens < hi:
            return f"intent {lo}-{hi - 1} tokens"
        lo = hi
    return f"intent >= {lo} tokens"


def row_features(row: dict) -> list[str]:
    """The features of one intent (a row of the dataset); every row has a family and a length."""
    tags = set(row["tags"])
    named = {"negation (deny)": "!" in row["program"], "complete set": "all_rules" in tags,
             "run name": "run" in tags, "legacy alias": "legacy" in tags,
             "context phrase": "default_context" not in tags, "AND of items": "compound" in tags,
             "OR of requests": "or" in tags,
             "held-out template": row["template_id"] in HELDOUT_TEMPLATES}
    return [f"frame: {template_family(row['template_id'])}", length_bucket(row["intent_tokens"])] + [
        name for name, present in named.items() if present]


def _rows_by_key(rows: dict[str, list[dict]]) -> dict[tuple[str, str], dict]:
    return {(split, r["id"]): r for split, rs in rows.items() for r in rs}


def feature_table(results: list[ArmRow], rows: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """{feature: {arm: {n, passed, pass_rate}}} over every split measured."""
    index = _rows_by_key(rows)
    table: dict[str, dict[str, list[int]]] = {}
    for r in results:
        for feat in row_features(index[(r.split, r.id)]):
            cell = table.setdefault(feat, {}).setdefault(r.arm, [0, 0])
            cell[0] += 1
            cell[1] += r.valid
    return {f: {arm: {"n": n, "passed": k, "pass_rate": k / n} for arm, (n, k) in arms.items()}
            for f, arms in sorted(table.items())}


def unhandled_features(table: dict[str, dict[str, dict]], threshold: float = HANDLED) -> list[str]:
    """Features on which no arm reaches ``threshold``."""
    return [f for f, arms in table.items() if all(c["pass_rate"] < threshold for c in arms.values())]


def failure_kind(code: str, row: dict) -> tuple[str, tuple[str, ...]]:
    """A kind of failure: the error code with the intent's features (its length aside)."""
    return code, tuple(f for f in row_features(row) if not f.startswith("intent "))


def top_failures(results: list[ArmRow], rows: dict[str, list[dict]], k: int = 5) -> list[dict]:
    """One failing intent from each of the ``k`` most common kinds of failure in ``results``
    (one arm's); ``count`` failures share its kind."""
    index = _rows_by_key(rows)
    kinds: dict[tuple, list[ArmRow]] = {}
    for r in results:
        if not r.valid:
            kinds.setdefault(failure_kind(r.code, index[(r.split, r.id)]), []).append(r)
    ranked = sorted(kinds.items(), key=lambda kv: -len(kv[1]))[:k]  # stable: first seen first
    out = []
    for (code, feats), members in ranked:
        first = members[0]
        row = index[(first.split, first.id)]
        out.append({"code": code, "features": list(feats), "count": len(members), "split": first.split,
                    "id": first.id, "intent": row["intent"], "reference": row["program"],
                    "output": first.program})
    return out


def incompressible(results: list[ArmRow], rows: dict[str, list[dict]],
                   min_tokens: int = LONG_MINIMAL) -> dict:
    """Rows whose minimal program has >= ``min_tokens`` tokens, and each arm on them."""
    index = _rows_by_key(rows)
    keys = {k for k, row in index.items() if row["minimal_tokens"] >= min_tokens}
    by_arm: dict[str, list[ArmRow]] = {}
    for r in results:
        if (r.split, r.id) in keys:
            by_arm.setdefault(r.arm, []).append(r)
    hard = [index[k] for k in sorted(keys)]
    return {
        "min_tokens": min_tokens, "n": len(hard), "share": len(hard) / len(index),
        "minimal_compression_mean": fmean(1 - r["minimal_tokens"] / r["intent_tokens"] for r in hard) if hard else None,
        "arms": {arm: {"n": len(rs), "pass_rate": fmean(r.valid for r in rs),
                       "compression_mean": fmean(1 - r.ir_tokens / r.intent_tokens for r in rs)}
                 for arm, rs in by_arm.items()},
    }


# ---- scaling, ROI, decision ------------------------------------------------------------------
def _logit(p: float, n: int) -> float:
    p = min(max(p, 0.5 / n), 1 - 0.5 / n)  # a perfect score stays finite
    return math.log(p / (1 - p))


def fit_scaling(points: list[dict]) -> dict | None:
    """Least-squares trends over model sizes: logit(pass) and IR tokens, each linear in
    log10(params). ``points``: [{params, pass_rate, n, ir_tokens_mean}]; None under two sizes."""
    if len({p["params"] for p in points}) < 2:
        return None
    x = np.log10([p["params"] for p in points])
    b_pass, a_pass = np.polyfit(x, [_logit(p["pass_rate"], p["n"]) for p in points], 1)
    b_tok, a_tok = np.polyfit(x, [p["ir_tokens_mean"] for p in points], 1)
    return {"logit_pass": {"intercept": float(a_pass), "slope_per_decade": float(b_pass)},
            "ir_tokens": {"intercept": float(a_tok), "slope_per_decade": float(b_tok)}}


def predict(fit: dict, params: float) -> dict:
    """The fitted trend at ``params`` (beyond the sizes fitted this is extrapolation)."""
    x = math.log10(params)
    logit = fit["logit_pass"]["intercept"] + fit["logit_pass"]["slope_per_decade"] * x
    return {"pass_rate": 1 / (1 + math.exp(-logit)),
            "ir_tokens_mean": fit["ir_tokens"]["intercept"] + fit["ir_tokens"]["slope_per_decade"] * x}


def break_even(best_pass: float, rules_pass: float, cost_ratio: float) -> float:
    """The pass rate a model ``cost_ratio`` times as costly as the best small arm must reach so
    that each unit of extra cost buys as much pass rate as the small arm's cost bought over the
    rules: p_best + (p_best - p_rules) * (cost_ratio - 1). Above 1.0 it cannot pay.

    >>> break_even(0.9, 0.5, 2.0)
    1.3
    """
    return round(best_pass + (best_pass - rules_pass) * (cost_ratio - 1), 12)


def roi(best: dict, rules_pass: float, target_params: float, fit: dict | None,
        latency_fit: dict | None) -> dict:
    """What a ``target_params`` model costs against ``best`` (memory, latency, training) and the
    pass rate it must reach to pay for each; all scaled from ``best``'s measured figures."""
    ratio = target_params / best["params"]
    latency = (10 ** (latency_fit["intercept"] + latency_fit["slope_per_decade"] * math.log10(target_params))
               if latency_fit else best["latency_p50_ms"] * ratio)
    costs = {"memory (MB of weights)": (best["size_mb"], best["size_mb"] * ratio),
             "latency p50 (ms, CPU, batch 1)": (best["latency_p50_ms"], latency)}
    if best.get("train_seconds"):
        hours = best["train_seconds"] / 3600
        costs["training (hours on the small arm's device)"] = (hours, hours * ratio)
    out = {"target_params": target_params, "against": best["arm"], "param_ratio": ratio,
           "headroom": 1 - best["pass_rate"],
           "latency_scaling": "fitted power law over the CPU arms" if latency_fit else "proportional to parameters",
           "predicted": predict(fit, target_params) if fit else None, "costs": {}}
    for name, (small, large) in costs.items():
        need = break_even(best["pass_rate"], rules_pass, large / small)
        reach = out["predicted"]["pass_rate"] if fit else None
        out["costs"][name] = {"best_small": small, "target": large, "ratio": large / small,
                              "required_pass_rate": need, "reachable": need <= 1.0,
                              "pays_by_trend": reach is not None and need <= 1.0 and reach >= need}
    return out


def fit_latency(points: list[dict]) -> dict | None:
    """log10(latency p50) linear in log10(params) over CPU arms; None under two sizes."""
    if len({p["params"] for p in points}) < 2:
        return None
    slope, intercept = np.polyfit(np.log10([p["params"] for p in points]),
                                  np.log10([p["latency_p50_ms"] for p in points]), 1)
    return {"intercept": float(intercept), "slope_per_decade": float(slope)}


def decide(best: dict | None, rules: dict | None, floors: dict = FLOORS) -> dict:
    """Integrate, iterate or abandon, by the rules the report states.

    ``best``: the model arm measured here with the highest lower 95% bound on test, with
    ``ci95``, ``pass_rate``, ``compression_mean``, ``latency_p50_ms``, ``size_mb``; ``rules``:
    the better rule-based arm on the same rows, with ``ci95``.
    - abandon: no model arm, or the best one's lower bound is not above the rules' upper bound;
    - integrate: it is, and every floor is met;
    - iterate: it is, and some floor is missed.
    """
    if rules is None:
        return {"decision": "undecided", "why": "no rule-based arm was measured", "checks": []}
    if best is None:
        return {"decision": "abandon", "why": "no model arm was measured", "checks": []}
    checks = [
        ("beats the rules (lower 95% bound above their upper bound)", "rate", best["ci95"][0],
         rules["ci95"][1], best["ci95"][0] > rules["ci95"][1]),
        ("test pass rate > floor", "rate", best["pass_rate"], floors["pass_rate"],
         best["pass_rate"] > floors["pass_rate"]),
        ("compression > floor", "rate", best["compression_mean"], floors["compression"],
         best["compression_mean"] > floors["compression"]),
        ("latency p50 (CPU, batch 1) < floor", "ms", best["latency_p50_ms"], floors["latency_p50_ms"],
         best["latency_p50_ms"] < floors["latency_p50_ms"]),
        ("checkpoint size < floor", "MB", best["size_mb"], floors["size_mb"], best["size_mb"] < floors["size_mb"]),
    ]
    rows = [{"check": c, "unit": u, "value": v, "threshold": t, "met": bool(m)} for c, u, v, t, m in checks]
    if not rows[0]["met"]:
        return {"decision": "abandon", "why": "the best model arm does not beat the rules", "checks": rows}
    missed = [r["check"] for r in rows[1:] if not r["met"]]
    if missed:
        return {"decision": "iterate", "why": "beats the rules but misses: " + "; ".join(missed), "checks": rows}
    return {"decision": "integrate", "why": "beats the rules and meets every floor", "checks": rows}
