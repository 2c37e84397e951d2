"""``tinycompress report``: measure every arm on the same rows, analyse, decide, write.

Arms are the rule-based compressor (``baseline``), the same with ``ir.minimal`` applied
(``baseline-minimal``), any number of checkpoints (an SFT checkpoint folder, or a GRPO run
folder whose ``best/`` is taken and whose ``metrics.jsonl`` gives the training cost), and
*recorded* arms: figures another machine measured (``tinycompress eval`` JSON files), shown
beside the others and labelled as such, never used to decide. Every measured arm decodes the
first ``limit`` rows of ``test`` and ``heldout`` greedily, one intent at a time, on the CPU
threads the caller set; throughput is measured apart at a larger batch.

Outputs in ``out``: ``report.json`` (every figure), ``results.parquet`` (one line per arm and
row: the program, the verdict, tokens, latency), ``figures/*.png``, and the Markdown report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from statistics import fmean

from learner import report_analysis as an

SPLITS = ("test", "heldout")
BASELINES = ("baseline", "baseline-minimal")


@dataclass(frozen=True)
class ArmSpec:
    """One arm as the command line names it."""

    name: str
    kind: str  # baseline | baseline-minimal | checkpoint | recorded
    path: str | None = None  # checkpoint or run folder; recorded: eval JSON with {split}
    summary: str | None = None  # recorded: the training summary JSON (sft_summary.json)


def parse_arm(text: str) -> ArmSpec:
    """``baseline``, ``baseline-minimal`` or ``NAME=CHECKPOINT_OR_RUN_FOLDER``."""
    if text in BASELINES:
        return ArmSpec(text, text)
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--arm takes baseline, baseline-minimal or NAME=PATH, got {text!r}")
    return ArmSpec(name, "checkpoint", path)


def parse_recorded(text: str) -> ArmSpec:
    """``NAME=EVAL_JSON[,SUMMARY_JSON]``, the eval path holding ``{split}``."""
    name, sep, rest = text.partition("=")
    pattern, _, summary = rest.partition(",")
    if not sep or not name or "{split}" not in pattern:
        raise ValueError(f"--recorded takes NAME=EVAL_JSON_WITH_{{split}}[,SUMMARY_JSON], got {text!r}")
    return ArmSpec(name, "recorded", pattern, summary or None)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, GRPO run folder or None): a run folder's checkpoint is ``best/``."""
    p = Path(path)
    if (p / "metrics.jsonl").exists() and (p / "best" / "config.json").exists():
        return p / "best", p
    return p, None


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_cost(ckpt: Path, run: Path | None) -> dict:
    """Steps, wall seconds and device from the run's own logs (None where they say nothing)."""
    if run is not None:
        metrics = _jsonl(run / "metrics.jsonl")
        return {"stage": "grpo", "steps": metrics[-1]["step"] if metrics else 0,
                "seconds": sum(m["step_time"] for m in metrics), "device": None,
                "source": str(run / "metrics.jsonl")}
    if (ckpt / "sft_summary.json").exists():
        s = json.loads((ckpt / "sft_summary.json").read_text())
        return {"stage": "sft", "steps": s["steps"], "seconds": s["seconds"], "device": s["device"],
                "source": str(ckpt / "sft_summary.json")}
    return {"stage": None, "steps": None, "seconds": None, "device": None, "source": None}


def learning_curve(name: str, path: str | Path) -> dict | None:
    """Validation pass rate against the run's cumulative wall seconds (GRPO ``metrics.jsonl``,
    or an SFT checkpoint's ``sft_log.jsonl``); None when the folder has neither."""
    ckpt, run = resolve_checkpoint(path)
    if run is not None:
        metrics = _jsonl(run / "metrics.jsonl")
        seconds = list(accumulate(m["step_time"] for m in metrics))
        points = [(s, m["val_pass_rate"]) for s, m in zip(seconds, metrics) if "val_pass_rate" in m]
        start = run / "warm_start_eval.json"
        if start.exists():
            points.insert(0, (0.0, json.loads(start.read_text())["val_pass_rate"]))
        return {"name": name, "stage": "grpo", "device": None, "points": points}
    if (ckpt / "sft_log.jsonl").exists():
        log = _jsonl(ckpt / "sft_log.jsonl")
        device = training_cost(ckpt, None)["device"]
        return {"name": name, "stage": "sft", "device": device,
                "points": [(m["seconds"], m["val_pass_rate"]) for m in log if "val_pass_rate" in m]}
    return None


# ---- measuring ---------------------------------------------------------------------------------
def measure(arm: str, compress, rows: dict[str, list[dict]], counter, validator) -> list[an.ArmRow]:
    """Run ``compress`` on every row, one intent at a time, and score it with the validator."""
    from validator_actors.validator import score

    out = []
    for split, split_rows in rows.items():
        programs, latencies = [], []
        for row in split_rows:
            t0 = time.perf_counter()
            programs.append(compress(row["intent"]))
            latencies.append((time.perf_counter() - t0) * 1000)
        scores = score([r["intent"] for r in split_rows], programs,
                       [r["reference_hash"] for r in split_rows], validator=validator, token_counter=counter)
        out += [an.ArmRow(arm, split, row["id"], p, s.valid, (s.codes or ("",))[0], s.tokens,
                          row["intent_tokens"], lat)
                for row, p, s, lat in zip(split_rows, programs, scores, latencies)]
    return out


def measure_baseline(spec: ArmSpec, rows, counter, validator) -> tuple[dict, list[an.ArmRow]]:
    from rollout.baseline import RuleBasedCompressor

    base = RuleBasedCompressor()
    compress = base.compress_minimal if spec.kind == "baseline-minimal" else base.compress
    results = measure(spec.name, compress, rows, counter, validator)
    label = "rules" if spec.kind == "baseline" else "rules + ir.minimal"
    info = {"kind": spec.kind, "label": label, "params": 0, "size_mb": 0.0, "device": "cpu",
            "training": None, "throughput": {
                split: {"batch": 1, "intents_per_s": 1000 / fmean(r.latency_ms for r in results if r.split == split)}
                for split in rows}}
    return info, results


def measure_checkpoint(spec: ArmSpec, rows, counter, validator, batch: int,
                       throughput_intents: int) -> tuple[dict, list[an.ArmRow]]:
    from learner.evaluate import checkpoint_size_mb, greedy_sampler, throughput
    from learner.policy import count_params

    ckpt, run = resolve_checkpoint(spec.path)
    sampler, meta = greedy_sampler(ckpt, next(iter(rows.values()))[0]["intent"])
    model = sampler.model
    compress = lambda intent: sampler.greedy([intent])[0]  # noqa: E731
    results = measure(spec.name, compress, rows, counter, validator)
    speed = {split: throughput(sampler, [r["intent"] for r in rs][:throughput_intents], batch)
             for split, rs in rows.items()}
    info = {"kind": "checkpoint", "label": spec.name, "path": str(ckpt), "run": str(run) if run else None,
            "preset": meta.get("policy", {}).get("name"), "stage": meta.get("stage"),
            "params": meta.get("params") or count_params(model), "size_mb": checkpoint_size_mb(ckpt),
            "device": "cpu", "training": training_cost(ckpt, run), "throughput": speed}
    return info, results


def recorded_arm(spec: ArmSpec, splits: tuple[str, ...]) -> dict:
    """An arm from ``tinycompress eval`` JSON files measured elsewhere (and its SFT summary)."""
    splits_out, first = {}, None
    for split in splits:
        path = Path(spec.path.format(split=split))
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        first = first or rec
        m = rec["model"]
        passed = round(m["pass_rate"] * m["n"])
        splits_out[split] = {
            "n": m["n"], "passed": passed, "pass_rate": passed / m["n"], "ci95": list(an.wilson(passed, m["n"])),
            "ir_tokens_mean": m["program_tokens_mean"], "compression_mean": m["compression_mean"],
            "latency_ms": m["latency_ms"], "failures_by_code": m["failures_by_code"], "source": str(path)}
    if first is None:
        raise FileNotFoundError(f"--recorded {spec.name}: no file matches {spec.path} for {list(splits)}")
    m = first["model"]
    training = None
    if spec.summary:
        s = json.loads(Path(spec.summary).read_text())
        training = {"stage": "sft", "steps": s["steps"], "seconds": s["seconds"], "device": s["device"],
                    "source": spec.summary}
    return {"kind": "recorded", "label": f"{spec.name} (recorded, {first['device']})",
            "preset": first.get("policy"), "params": m["params"], "size_mb": m["size_mb"],
            "device": first["device"], "threads": first.get("threads"), "training": training,
            "throughput": {s: m["throughput"] for s in splits_out}, "splits": splits_out}


# ---- analysis ----------------------------------------------------------------------------------
def _best_inputs(name: str, info: dict) -> dict:
    test = info["splits"]["test"]
    train = info.get("training") or {}
    return {"arm": name, "params": info["params"], "size_mb": info["size_mb"],
            "latency_p50_ms": test["latency_ms"]["p50"], "pass_rate": test["pass_rate"], "ci95": test["ci95"],
            "compression_mean": test["compression_mean"], "train_seconds": train.get("seconds")}


def scaling_points(arms: dict) -> list[dict]:
    """Per model size, the arm with the best test pass rate (measured or recorded)."""
    best: dict[int, dict] = {}
    for name, info in arms.items():
        if info["kind"] in BASELINES or "test" not in info["splits"]:
            continue
        test = info["splits"]["test"]
        point = {"arm": name, "label": info["label"], "params": info["params"], "n": test["n"],
                 "pass_rate": test["pass_rate"], "ir_tokens_mean": test["ir_tokens_mean"],
                 "latency_p50_ms": test["latency_ms"]["p50"], "kind": info["kind"],
                 "training": info.get("training")}
        if info["params"] not in best or point["pass_rate"] > best[info["params"]]["pass_rate"]:
            best[info["params"]] = point
    return sorted(best.values(), key=lambda p: p["params"])


def analyse(arms: dict, results: list[an.ArmRow], rows: dict, target_params: float) -> dict:
    """Failures, features, what cannot be compressed, scaling, ROI and the decision."""
    measured = [n for n, i in arms.items() if i["kind"] != "recorded"]
    models = [n for n in measured if arms[n]["kind"] == "checkpoint"]
    rules = [n for n in measured if arms[n]["kind"] in BASELINES]
    features = an.feature_table(results, rows)
    best = max(models, key=lambda n: arms[n]["splits"]["test"]["ci95"][0], default=None)
    rule = max(rules, key=lambda n: arms[n]["splits"]["test"]["pass_rate"], default=None)
    points = scaling_points(arms)
    fit = an.fit_scaling(points)
    cpu = [p for p in points if p["kind"] == "checkpoint"]
    best_in = _best_inputs(best, arms[best]) if best else None
    rule_in = {"arm": rule, **arms[rule]["splits"]["test"]} if rule else None
    return {
        "failures_by_code": {n: an.failures_by_code([r for r in results if r.arm == n]) for n in measured},
        "top_failures": {n: an.top_failures([r for r in results if r.arm == n], rows) for n in measured},
        "features": features, "unhandled_features": an.unhandled_features(features),
        "incompressible": an.incompressible(results, rows),
        "scaling": {"points": points, "fit": fit},
        "roi": an.roi(best_in, rule_in["pass_rate"], target_params, fit, an.fit_latency(cpu))
        if best_in and rule_in else None,
        "best_model": best, "best_rules": rule, "decision": an.decide(best_in, rule_in),
    }


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def build_report(data_dir: str | Path, arms: list[ArmSpec], out: str | Path, *, recorded: list[ArmSpec] = (),
                 runs: list[tuple[str, str]] = (), markdown: str | Path | None = None, limit: int = 0,
                 throughput_batch: int = 32, throughput_intents: int = 128, target_params: float = 5e8,
                 command: str = "", log=print) -> dict:
    """Measure, analyse, draw and write the report; returns ``report.json``'s content."""
    from learner import report_figures, report_markdown
    from rollout.datagen.dataset import read_split
    from validator_actors.tokens import TokenCounter
    from validator_actors.validator import Validator

    out = Path(out)
    t0, meta = time.perf_counter(), {"machine": machine(), "command": command, "data": str(data_dir),
                                     "limit": limit, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = {s: read_split(data_dir, s).to_pylist()[: limit or None] for s in SPLITS}
    counter = TokenCounter(Path(data_dir) / "tokenizer")
    validator, results, infos = Validator(), [], {}
    for spec in arms:
        log(f"[report] measuring {spec.name} on {sum(map(len, rows.values()))} rows")
        if spec.kind in BASELINES:
            info, res = measure_baseline(spec, rows, counter, validator)
        else:
            info, res = measure_checkpoint(spec, rows, counter, validator, throughput_batch, throughput_intents)
        info["splits"] = {s: an.summarize([r for r in res if r.split == s]) for s in rows}
        infos[spec.name], results = info, results + res
    for spec in recorded:
        infos[spec.name] = recorded_arm(spec, SPLITS)
    report = {"meta": meta, "rows": {s: len(rs) for s, rs in rows.items()}, "arms": infos,
              "thresholds": {"floors": an.FLOORS, "handled": an.HANDLED, "long_minimal": an.LONG_MINIMAL,
                             "length_edges": list(an.LENGTH_EDGES), "target_params": target_params},
              **analyse(infos, results, rows, target_params)}
    curves = [c for c in (learning_curve(s.name, s.path) for s in arms if s.kind == "checkpoint") if c]
    curves += [c for c in (learning_curve(name, path) for name, path in runs) if c]
    report["curves"] = curves
    report["figures"] = report_figures.draw_all(report, out / "figures")
    report["meta"]["seconds"] = time.perf_counter() - t0
    write_outputs(report, results, out, Path(markdown) if markdown else out / "report.md", report_markdown)
    log(f"[report] {report['decision']['decision']}: written to {out} in {report['meta']['seconds']:.0f} s")
    return report


def write_outputs(report: dict, results: list[an.ArmRow], out: Path, md_path: Path, renderer) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    pq.write_table(pa.Table.from_pylist([asdict(r) for r in results]), out / "results.parquet")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(renderer.render(report, figures_from=md_path.parent))
