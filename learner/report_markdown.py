"""``report.md`` from ``report.json``'s content: every number printed is read from it."""

from __future__ import annotations

import os
from pathlib import Path

SECTIONS = ("How this report was made", "Decision", "Arms", "Failure analysis",
            "What cannot be compressed", "Scaling and ROI", "What the figures mean")


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def ci(pair: list[float]) -> str:
    return f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def params(n: float) -> str:
    if not n:
        return "—"
    return f"{n / 1e9:g}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def headline(report: dict) -> str:
    """The decision in one sentence with its headline numbers."""
    d, best, rules = report["decision"], report["best_model"], report["best_rules"]
    if not best or not rules:
        return f"Decision: **{d['decision']}** ({d['why']})."
    b, r = report["arms"][best], report["arms"][rules]["splits"]["test"]
    bt, bh = b["splits"]["test"], b["splits"].get("heldout")
    held = f", {pct(bh['pass_rate'])} on held-out templates" if bh else ""
    return (f"Decision: **{d['decision']}** ({d['why']}): the best small model, `{best}` ({params(b['params'])} parameters), "
            f"passes {pct(bt['pass_rate'])} of test intents (95% CI {ci(bt['ci95'])}){held}, against "
            f"{pct(r['pass_rate'])} for the rule-based compressor, at {pct(bt['compression_mean'])} compression "
            f"and {num(bt['latency_ms']['p50'], 1)} ms median latency on CPU.")


def _made(report: dict) -> list[str]:
    m, mach = report["meta"], report["meta"]["machine"]
    rows = ", ".join(f"{s}: {n}" for s, n in report["rows"].items())
    return ["## How this report was made", "", "```bash", m["command"], "```", "",
            f"Started {m['started']}, took {num(m['seconds'], 0)} s. Data `{m['data']}`, rows per split ({rows}; "
            f"the first rows of each split, the same rows for every measured arm). Machine: {mach['platform']}, "
            f"{mach['cpus']} CPUs, torch {mach['torch']} on {mach['torch_threads']} thread(s), load average "
            f"{mach['load_average_at_start'][0]} at the start (other work on the machine slows the latency figures).",
            ""]


def _decision(report: dict) -> list[str]:
    d, f = report["decision"], report["thresholds"]["floors"]
    rules = [
        "The best model arm is the checkpoint measured here with the highest lower 95% bound on test; "
        "the rules are the better of `baseline` and `baseline-minimal` on the same rows. Recorded arms never decide.",
        "**abandon** when no model arm was measured or the best one's lower bound is not above the rules' upper bound;",
        f"**integrate** when it is, and every floor holds: test pass rate > {pct(f['pass_rate'])}, compression > "
        f"{pct(f['compression'])}, median latency (greedy, batch 1, CPU) < {num(f['latency_p50_ms'], 0)} ms, "
        f"checkpoint < {num(f['size_mb'], 0)} MB;",
        "**iterate** when it beats the rules and misses a floor.",
    ]
    checks = [[c["check"], _unit(c["value"], c["unit"]), _unit(c["threshold"], c["unit"]),
               "yes" if c["met"] else "**no**"] for c in d["checks"]]
    return (["## Decision", "", headline(report), "", *[f"- {r}" for r in rules], "",
             f"Applied: **{d['decision']}**, {d['why']}.", ""]
            + (_table(["check", "value", "threshold", "met"], checks) + [""] if checks else []))


def _unit(x: float, unit: str) -> str:
    return pct(x) if unit == "rate" else f"{num(x, 1)} {unit}"


def _arms(report: dict) -> list[str]:
    out = ["## Arms", ""]
    head = ["arm", "rows", "pass rate", "95% CI", "IR tokens", "compression", "tokens saved / intent (effective)",
            "latency p50 / p95 ms", "throughput intents/s (batch)", "params", "size MB", "training"]
    for split in ("test", "heldout"):
        rows = []
        for name, a in report["arms"].items():
            s = a["splits"].get(split)
            if s is None:
                continue
            t = a["throughput"].get(split, {})
            rows.append([f"`{name}`" + (" (recorded)" if a["kind"] == "recorded" else ""), str(s["n"]),
                         pct(s["pass_rate"]), ci(s["ci95"]), num(s["ir_tokens_mean"]), pct(s["compression_mean"]),
                         num(s.get("tokens_saved_effective_per_intent"), 1),
                         f"{num(s['latency_ms']['p50'], 2)} / {num(s['latency_ms']['p95'], 2)}",
                         f"{num(t.get('intents_per_s'), 1)} ({t.get('batch', '—')})", params(a["params"]),
                         num(a["size_mb"]), _training(a.get("training"))])
        out += [f"**{split}**", "", *_table(head, rows), ""]
    out += ["Recorded arms were measured on another machine and their own rows "
            "(their `device` and `n` say which); compare them with care.", ""]
    return out + _figure(report, "pareto", "Pass rate against IR tokens") + _figure(
        report, "latency", "Latency against parameters") + _figure(report, "curves", "Learning curves")


def _training(t: dict | None) -> str:
    if not t or t.get("seconds") is None:
        return "not recorded"
    return f"{t['stage']}: {t['steps']} steps, {num(t['seconds'], 0)} s on {t['device'] or 'a device not logged'}"


def _figure(report: dict, key: str, title: str) -> list[str]:
    path = report["figures"].get(key)
    if path is None:
        return []
    return [f"![{title}]({os.path.relpath(path, report['_figures_from']).replace(os.sep, '/')})", ""]


def _failures(report: dict) -> list[str]:
    measured = list(report["failures_by_code"])
    codes = sorted({c for n in measured for c in report["failures_by_code"][n]})
    out = ["## Failure analysis", "", "Failing rows by first error code (test + heldout):", ""]
    out += _table(["arm", *codes], [[f"`{n}`", *[str(report["failures_by_code"][n].get(c, 0)) for c in codes]]
                                    for n in measured]) + [""]
    feats = report["features"]
    out += ["Pass rate by intent feature (test + heldout; n = rows with the feature):", ""]
    out += _table(["feature", "n", *[f"`{n}`" for n in measured]],
                  [[f, str(max(c["n"] for c in arms.values())), *[pct(arms[n]["pass_rate"]) if n in arms else "—"
                                                                   for n in measured]]
                   for f, arms in feats.items()]) + [""]
    out += _figure(report, "features", "Pass rate by intent feature")
    un = report["unhandled_features"]
    out += [f"Features no arm handles (no arm reaches {pct(report['thresholds']['handled'])}): "
            + (", ".join(un) if un else "none") + ".", ""]
    for name in measured:
        out += [f"**`{name}`: the five most common kinds of failure** (code and intent features), one intent each:", ""]
        for f in report["top_failures"][name]:
            out += [f"- {f['code']}, {f['count']} failure(s) of this kind ({', '.join(f['features'])}): "
                    f"\"{f['intent']}\" expected `{f['reference']}`, got `{f['output'] or '(empty)'}`"]
        out += ["" if report["top_failures"][name] else "- no failures", ""]
    return out


def _incompressible(report: dict) -> list[str]:
    inc = report["incompressible"]
    out = ["## What cannot be compressed", "",
           f"Intents whose minimal program, the shortest known, still has at least {inc['min_tokens']} tokens: "
           f"{inc['n']} rows ({pct(inc['share'])}); their minimal programs would compress them by "
           f"{pct(inc['minimal_compression_mean'])} on average.", ""]
    rows = [[f"`{n}`", str(a["n"]), pct(a["pass_rate"]), pct(a["compression_mean"])] for n, a in inc["arms"].items()]
    return out + (_table(["arm", "rows", "pass rate", "compression"], rows) + [""] if rows else [])


def _scaling(report: dict) -> list[str]:
    sc, r = report["scaling"], report["roi"]
    out = ["## Scaling and ROI", "", "Per model size, the arm with the best test pass rate:", ""]
    out += _table(["size", "arm", "test pass rate", "IR tokens", "latency p50 ms", "training"],
                  [[params(p["params"]), p["label"], pct(p["pass_rate"]), num(p["ir_tokens_mean"]),
                    num(p["latency_p50_ms"], 1), _training(p["training"])]
                   for p in sc["points"]]) + [""]
    if sc["fit"]:
        f = sc["fit"]
        out += [f"Fitted trend (least squares, log10 parameters): logit(pass) = {num(f['logit_pass']['intercept'], 3)} "
                f"+ {num(f['logit_pass']['slope_per_decade'], 3)} per decade; IR tokens = "
                f"{num(f['ir_tokens']['intercept'], 3)} + {num(f['ir_tokens']['slope_per_decade'], 3)} per decade.", ""]
    else:
        out += ["Under two model sizes: no trend is fitted.", ""]
    out += _figure(report, "scaling", "Scaling")
    if r is None:
        return out + ["No ROI: it needs a model arm and a rule-based arm measured here.", ""]
    pred = r["predicted"]
    out += [f"**Extrapolation, not measurement:** a {params(r['target_params'])}-parameter model against `{r['against']}` "
            f"({num(r['param_ratio'], 1)}x the parameters; latency scaled {r['latency_scaling']})"
            + (f"; the trend predicts {pct(pred['pass_rate'])} test pass rate and {num(pred['ir_tokens_mean'])} IR "
               "tokens." if pred else "; no trend to predict its pass rate."),
            "", f"The most any larger model can add is the best small arm's headroom, {pct(r['headroom'])} "
            "of pass rate. It pays for a cost only if each unit of extra cost buys as much pass rate as the small model's "
            "cost bought over the rules: required pass rate = p_small + (p_small − p_rules) × (cost ratio − 1).", ""]
    out += _table(["cost", f"`{r['against']}`", f"{params(r['target_params'])} (extrapolated)", "ratio",
                   "required pass rate", "pays by the trend"],
                  [[k, num(c["best_small"], 3), num(c["target"], 3), num(c["ratio"], 1),
                    pct(c["required_pass_rate"]) + ("" if c["reachable"] else " (unreachable)"),
                    "yes" if c["pays_by_trend"] else "no"] for k, c in r["costs"].items()]) + [""]
    return out


METRICS = [
    ("pass rate", "share of rows whose program the validator passes, fidelity hash included (levels 1–6)"),
    ("95% CI", "Wilson score interval of the pass rate"),
    ("IR tokens", "the program's tokens under the dataset's BPE, mean per row"),
    ("compression", "1 − IR tokens / intent tokens, mean per row, failing rows included"),
    ("tokens saved / intent (effective)", "intent tokens − IR tokens on passing rows, 0 on failing ones "
                                          "(a failed program falls back to the intent), mean per row"),
    ("latency p50 / p95", "wall ms to compress one intent, greedy, batch 1, on the threads of the run"),
    ("throughput", "greedy intents/s at the batch shown (rule-based arms: sequential)"),
    ("size MB", "model weights on disk (`model*.safetensors`)"),
    ("training", "steps, wall seconds and device from the run's own logs: the arm's own stage (a GRPO "
                 "run's warm start is not added)"),
]


def render(report: dict, figures_from: Path) -> str:
    """The Markdown report; figure links are relative to ``figures_from`` (its folder)."""
    report = {**report, "_figures_from": str(figures_from)}
    lines = ["# TinyCompress: evaluation and ROI report", "",
             "Generated by `tinycompress report`; every figure below is measured or computed by that command.", ""]
    lines += _made(report) + _decision(report) + _arms(report) + _failures(report)
    lines += _incompressible(report) + _scaling(report)
    lines += ["## What the figures mean", "", *_table(["figure", "meaning"], [[a, b] for a, b in METRICS]), ""]
    return "\n".join(lines)
