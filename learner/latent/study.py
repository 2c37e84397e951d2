"""The study grid: every arm at every budget and seed, one JSON line per finished cell.

One warm start (trained with the first seed) is shared by every arm and seed: the seeds vary
the arms' own initialization (compressor, queries) and batch order, not the warm reasoner.
Per seed: the baselines' reasoner, trained once and read through every
view at every K (``full`` once), then the latent reader at every K; after every seed has
those, per seed the same-model control, the question-aware variant and the four ablations at
``ablation_k`` (a stopped study holds the main comparison first). A cell is one (arm, view, K, seed) on the test split. A rerun skips the cells in OUT/cells.jsonl and
continues a stopped training from its run folder, so a stopped study resumes where it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from learner.latent.train import ARMS, BASELINE, WARM, TrainConfig, load_reader, quick, train
from learner.latent.views import VIEWS

ABLATIONS = ("shared", "query", "no_time", "single_layer", "no_projection", "no_aux")


@dataclass(frozen=True)
class StudySettings:
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_k: int = 16
    """K of the control and the ablations."""
    ablations: tuple[str, ...] = ABLATIONS
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        bad = [a for a in self.ablations if a not in ARMS]
        if bad:
            raise ValueError(f"unknown ablations {bad}; choose from {ABLATIONS}")
        if self.ablation_k not in self.train.budgets:
            raise ValueError(f"ablation_k {self.ablation_k} must be one of the budgets {self.train.budgets}")


def quick_settings() -> StudySettings:
    return StudySettings(seeds=(0,), ablation_k=4, ablations=("no_time",),
                         train=quick(replace(TrainConfig(), budgets=(4,))))


def plan(s: StudySettings) -> list[tuple[str, str, int, int]]:
    """Every cell (arm, view, k, seed) in the order it is run; ``full`` has k 0."""
    cells = []
    for seed in s.seeds:
        cells.append((BASELINE, "full", 0, seed))
        cells += [(BASELINE, v, k, seed) for k in s.train.budgets for v in VIEWS if v != "full"]
        cells += [("latent", "latent", k, seed) for k in s.train.budgets]
    return cells + [(a, "latent", s.ablation_k, seed) for seed in s.seeds for a in s.ablations]


def run_name(arm: str, k: int, seed: int) -> str:
    return f"{arm}-s{seed}" if arm in (WARM, BASELINE) else f"{arm}-k{k}-s{seed}"


def done_cells(out: Path) -> dict[tuple, dict]:
    path = out / "cells.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["arm"], r["view"], r["k"], r["seed"]): r for r in rows}


def run_study(data: str | Path, out: str | Path, s: StudySettings, log=print) -> list[dict]:
    """Run the missing cells; every cell's record, in plan order."""
    from learner.latent.data import load_split, load_tokenizer
    from learner.latent.evaluate import evaluate
    from learner.latent.views import examples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"data": str(data), **asdict(s)}
    saved = out / "settings.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(f"{out} holds a study with other settings; choose another folder")
    saved.write_text(json.dumps(settings, indent=2) + "\n")
    tok = load_tokenizer(data)
    test = examples(tok, load_split(data, "test"))
    done, cells = done_cells(out), plan(s)
    model, loaded = None, None
    for i, (arm, view, k, seed) in enumerate(cells):
        if (arm, view, k, seed) in done:
            continue
        tcfg = replace(s.train, seed=seed)
        run = out / "runs" / run_name(arm, k, seed)
        if loaded != run:
            warm = out / "runs" / WARM
            train(warm, data, WARM, 0, replace(s.train, seed=s.seeds[0]), log=log)  # at once when finished
            train(run, data, arm, k, tcfg, init=warm, log=log)
            model, loaded = load_reader(run, data)[0], run
        result = evaluate(model, test, view, k, tcfg.window, tok, tcfg.max_new_tokens)
        record = {"arm": arm, "view": view, "k": k, "seed": seed, "warm_steps": tcfg.warm_steps, "steps": tcfg.steps,
                  **result}
        with open(out / "cells.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        done[(arm, view, k, seed)] = record
        log(f"cell {i + 1}/{len(cells)} {arm}/{view} k={k} seed={seed}: EM {result['em']:.3f} F1 {result['f1']:.3f}")
    return [done[c] for c in cells]
