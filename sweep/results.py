"""The sweep's results: one row per trial (Parquet + Markdown) and the best policy exported.

A row describes the trial's best evaluation, the one its ``run/best/`` policy holds: val
reward (the ASHA objective: +1 pass / -1 fail - 0.01 per IR token), pass rate, IR tokens and
compression (1 - mean IR tokens / mean intent tokens on the evaluated val rows), with the
trial's searched values, steps run, wall time and why it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import yaml

from sweep.trial import RESULT_FILE

METRIC = "val_reward"


def trial_row(path: Path, trial_id: str, error: Exception | None, wall_s: float, search_keys: list[str],
              intent_tokens: dict[int, float]) -> dict:
    """The table row of the trial whose Tune folder is ``path``."""
    run = path / "run"
    if not (run / "config.yaml").exists():  # failed before it started training
        return {"trial": trial_id, "steps": 0, "stop_reason": _stop_reason(path, error, [], 0)}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (
        run / "metrics.jsonl").exists() else []
    evals = [m for m in lines if METRIC in m]
    best = max(evals, key=lambda m: (m[METRIC], -m["step"])) if evals else {}
    row = {"trial": trial_id, "preset": cfg["model"]["preset"]}
    for key in search_keys:
        section, _, name = key.partition(".")
        row[key] = cfg[section][name]
    start = run / "warm_start_eval.json"  # the controller's step-0 evaluation of the warm start
    row.update({
        "start_val_reward": json.loads(start.read_text())[METRIC] if start.exists() else None,
        "val_reward": best.get(METRIC), "val_pass_rate": best.get("val_pass_rate"),
        "val_ir_tokens": best.get("val_ir_tokens"),
        "val_compression": 1 - best["val_ir_tokens"] / intent_tokens[cfg["train"]["eval_samples"]] if best else None,
        "best_step": best.get("step"), "steps": lines[-1]["step"] if lines else 0,
        "max_steps": cfg["train"]["steps"], "wall_s": round(wall_s, 1),
        "stop_reason": _stop_reason(path, error, lines, cfg["train"]["steps"]),
        "config": str(run / "config.yaml"), "checkpoint": str(run / "best") if evals else None,
    })
    return row


def _stop_reason(path: Path, error: Exception | None, lines: list[dict], max_steps: int) -> str:
    """steps (ran them all), plateau (the controller's patience), asha (stopped at a rung), error."""
    if error is not None:
        return f"error: {type(error).__name__}"
    if (path / RESULT_FILE).exists():
        return json.loads((path / RESULT_FILE).read_text())["stop_reason"]
    if lines and lines[-1]["step"] >= max_steps:
        return "steps"
    return f"asha (step {lines[-1]['step']})" if lines else "asha"


def results_table(grid, search_keys: list[str], intent_tokens: dict[int, float]) -> pd.DataFrame:
    """One row per trial of a Tune ResultGrid, best val reward first."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        rows.append(trial_row(Path(result.path), trial_id, result.error, metrics.get("time_total_s", 0.0),
                              search_keys, intent_tokens))
    table = pd.DataFrame(rows)
    return table.sort_values(METRIC, ascending=False, na_position="last").reset_index(drop=True)


def write_tables(table: pd.DataFrame, out: Path, title: str) -> tuple[Path, Path]:
    parquet, markdown = out / "results.parquet", out / "results.md"
    table.to_parquet(parquet, index=False)
    markdown.write_text(f"# {title}\n\n{summary(table)}\n\n{to_markdown(table)}\n")
    return parquet, markdown


def summary(table: pd.DataFrame) -> str:
    """Which trial won and by how much over the runner-up."""
    scored = table.dropna(subset=[METRIC])
    if scored.empty:
        return "No trial reached an evaluation."
    best = scored.iloc[0]
    text = (f"Best: trial {best.trial} ({best.preset}), val reward {best.val_reward:+.4f} (its warm start "
            f"{best.start_val_reward:+.4f}), pass rate {best.val_pass_rate:.1%}, {best.val_ir_tokens:.2f} IR "
            f"tokens at step {best.best_step}.")
    if len(scored) > 1:
        second = scored.iloc[1]
        text += (f" Runner-up: trial {second.trial} ({second.preset}), {second.val_reward:+.4f} "
                 f"(margin {best.val_reward - second.val_reward:+.4f}).")
    return text


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["config", "checkpoint", "max_steps"])
    cells = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def export_best(table: pd.DataFrame, out: Path) -> Path | None:
    """Copy the best trial's best policy to OUT/best (loads with load_policy / tinycompress eval)."""
    scored = table.dropna(subset=[METRIC])
    if scored.empty:
        return None
    best = scored.iloc[0]
    target = out / "best"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(best.checkpoint, target)
    record = {"trial": best.trial, "config": best.config, METRIC: best.val_reward,
              "val_pass_rate": best.val_pass_rate, "val_ir_tokens": best.val_ir_tokens, "step": int(best.best_step)}
    (target / "sweep_best.json").write_text(json.dumps(record, indent=2) + "\n")
    return target
