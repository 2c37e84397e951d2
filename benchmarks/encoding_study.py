"""The embedding-compression study: token encodings learned end to end against two-stage
compression of a trained table (autoencoder, truncated SVD), at 1:1 to 16:1 (docs/ENCODING.md).

    nice -n 19 python benchmarks/encoding_study.py --data data/default --out runs/encoding_study
    python benchmarks/encoding_study.py --data DIR --out OUT --quick   # tiny, 2 ratios, 1 seed

Two tasks, each with its own models: ``sft``, the compressor's supervised objective (program
tokens given the intent; val loss and greedy val pass rate through the validator) and ``lm``,
next-token language modelling of the intents (val perplexity). Per task and seed the full-width
``reference`` trains first; the ``autoencoder`` and ``svd`` arms compress its table and retrain a
fresh model on the frozen codes; ``learned`` trains ``model.d_enc`` codes end to end. Every arm
of a (task, seed) sees the same batches for the same steps. The checkpoint is picked on val rows
[0, select_rows) and reported on the val rows after them.

Each finished cell is one line of OUT/cells.jsonl; a rerun skips the cells already there (a
stopped study resumes). OUT then holds summary.json, table.md and the two figures.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoding_report import write_report  # noqa: E402

TASKS = ("sft", "lm")


@dataclass(frozen=True)
class StudySettings:
    preset: str = "tiny"
    """Policy preset (learner.presets.PRESETS) of every model."""
    ratios: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Compression ratios d_model / d_enc."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds: model init and batch order (the same order for every arm of a seed)."""
    steps: int = 250
    """Optimizer steps per model, every arm and task."""
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    eval_at: tuple[float, ...] = (0.5, 0.75, 1.0)
    """Fractions of ``steps`` at which the checkpoint is evaluated on the selection rows."""
    select_rows: int = 200
    """Val rows [0, select_rows) pick the checkpoint; the rest of val is reported."""
    report_rows: int = 800
    """Val rows reported (after the selection rows)."""
    train_rows: int = 0
    """Train rows used (0 = all, with train_paraphrases)."""
    max_prompt_len: int = 96
    max_new_tokens: int = 64
    ae_steps: int = 1000
    """Full-batch Adam steps of the autoencoder fit."""

    def __post_init__(self):
        if any(r < 1 for r in self.ratios) or not self.seeds or self.steps < 1:
            raise ValueError("ratios must be >= 1, seeds non-empty, steps >= 1")


FULL = StudySettings()
QUICK = StudySettings(ratios=(1, 4), seeds=(0,), steps=6, batch_size=8, warmup_steps=2, eval_at=(0.5, 1.0),
                      select_rows=12, report_rows=16, train_rows=64, max_new_tokens=24, ae_steps=100)


class Task:
    """One task's examples and metrics: ``sft`` (program given intent) or ``lm`` (intents)."""

    def __init__(self, name: str, tok, train_rows: list[dict], val_rows: list[dict], s: StudySettings):
        from learner.sft import build_examples
        from rollout.sampler import encode_prompts

        self.name, self.tok, self.s = name, tok, s
        if name == "sft":
            make = lambda rows: build_examples(tok, rows, s.max_prompt_len, "surface")  # noqa: E731
        else:  # <bos> intent <eos>, loss on every token after <bos>
            make = lambda rows: [(p[:-1] + [tok.eos_token_id], 1)  # noqa: E731
                                 for p in encode_prompts(tok, [r["intent"] for r in rows], s.max_prompt_len)]
        self.train = make(train_rows)
        self.select_rows = val_rows[: s.select_rows]
        self.report_rows = val_rows[s.select_rows : s.select_rows + s.report_rows]
        self.select, self.report = make(self.select_rows), make(self.report_rows)

    def batches(self, seed: int):
        """Endless shuffled batches, the same sequence for every arm of ``seed``."""
        from learner.sft import batches

        rng = random.Random(f"{self.name}/{seed}")
        while True:
            yield from batches(self.train, self.s.batch_size, rng)

    @torch.no_grad()
    def nll(self, model, examples) -> float:
        """Mean negative log-likelihood per target token (token-weighted over ``examples``)."""
        from learner.sft import IGNORE, collate

        total, count = 0.0, 0
        for i in range(0, len(examples), 64):
            b = collate(examples[i : i + 64], self.tok.pad_token_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            target = b["labels"][:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum"))
            count += int((target != IGNORE).sum())
        return total / count

    @torch.no_grad()
    def metrics(self, model, part: str) -> dict:
        """``part`` (select or report): sft -> val_loss, val_pass_rate; lm -> val_loss, val_ppl."""
        model.eval()
        examples, rows = (self.select, self.select_rows) if part == "select" else (self.report, self.report_rows)
        loss = self.nll(model, examples)
        if self.name == "lm":
            return {"val_loss": loss, "val_ppl": math.exp(loss)}
        from rollout.sampler import Sampler
        from validator_actors.validator import Validator

        texts = Sampler(model, self.tok, max_new_tokens=self.s.max_new_tokens,
                        max_prompt_len=self.s.max_prompt_len).greedy([r["intent"] for r in rows])
        v = Validator()
        passed = sum(v.validate(p, r["reference_hash"]).valid for p, r in zip(texts, rows))
        return {"val_loss": loss, "val_pass_rate": passed / len(rows)}

    def better(self, a: dict, b: dict | None) -> bool:
        """Checkpoint selection: pass rate then loss (sft), loss (lm)."""
        if b is None:
            return True
        key = lambda m: (m.get("val_pass_rate", 0.0), -m["val_loss"])  # noqa: E731
        return key(a) > key(b)


def lr_factor(step: int, s: StudySettings) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (as learner.sft)."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(model, task: Task, seed: int, s: StudySettings, label: str) -> dict:
    """``s.steps`` AdamW steps on ``task``'s batches of ``seed``; the picked checkpoint's
    metrics on the report rows, the selection history, tokens and CPU seconds."""
    from learner.sft import collate, completion_loss

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, s))
    evals = sorted({max(1, round(f * s.steps)) for f in s.eval_at})
    cpu0, wall0, tokens, best, best_state, history = time.process_time(), time.perf_counter(), 0, None, None, []
    batches = task.batches(seed)
    torch.manual_seed(seed)
    for step in range(1, s.steps + 1):
        model.train()
        b = collate(next(batches), task.tok.pad_token_id)
        loss = completion_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        tokens += int(b["attention_mask"].sum())
        loss = float(loss.detach())
        if step in evals:
            m = task.metrics(model, "select")
            history.append({"step": step, "train_loss": loss, **m})
            if task.better(m, best):
                best, best_state = m | {"step": step}, copy.deepcopy(model.state_dict())
            print(f"[encoding] {label} step {step}/{s.steps} train {loss:.3f} select "
                  + " ".join(f"{k} {v:.4f}" for k, v in m.items()), file=sys.stderr, flush=True)
    model.load_state_dict(best_state)
    return {"picked_step": best["step"], "metrics": task.metrics(model, "report"), "history": history,
            "steps": s.steps, "tokens": tokens, "cpu_s": round(time.process_time() - cpu0, 1),
            "wall_s": round(time.perf_counter() - wall0, 1)}


PRIORITY = ((1, 8), (4, 16))
"""Ratios run first, every seed: the 1:1 control and the claim's 8:1, then 4:1 and 16:1, then
the rest; so a stopped study holds every seed of the ratios that matter most."""


def cells(s: StudySettings):
    """(task, arm, ratio, seed) in run order: ratio groups by :data:`PRIORITY`, and within a
    group seed by seed, each task's reference before its arms."""
    from learner.encoding import ARMS

    groups = [[r for r in s.ratios if r in g] for g in PRIORITY]
    groups.append([r for r in s.ratios if not any(r in g for g in PRIORITY)])
    for n, group in enumerate(g for g in groups if g):
        for seed in s.seeds:
            for task in TASKS:
                if n == 0:
                    yield task, "reference", 1, seed
                for arm in ARMS:
                    for ratio in group:
                        yield task, arm, ratio, seed


def key(cell: dict | tuple) -> str:
    task, arm, ratio, seed = (cell["task"], cell["arm"], cell["ratio"], cell["seed"]) if isinstance(cell, dict) else cell
    return f"{task}/{arm}/{ratio}/{seed}"


def load_cells(path: Path, s: StudySettings) -> dict[str, dict]:
    """The finished cells of ``path``; an error if they were run with other settings."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                c = json.loads(line)
                if c["settings"] != json.loads(json.dumps(asdict(s))):
                    raise SystemExit(f"{path} holds cells run with other settings; use another --out")
                done[key(c)] = c
    return done


def reference_table(out: Path, task: Task, seed: int, s: StudySettings, tok, cfg) -> torch.Tensor:
    """The trained reference's embedding table of (task, seed), retrained if its file is gone
    (same seed, same batches: the same model)."""
    from learner.encoding import embedding_table, encoded_policy

    path = out / "tables" / f"{task.name}_seed{seed}.pt"
    if not path.exists():
        torch.manual_seed(seed)
        model = encoded_policy(cfg, tok, "reference", None, seed)
        train(model, task, seed, s, f"{task.name} reference (table) seed {seed}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(embedding_table(model), path)
    return torch.load(path)


def run_cell(cell: tuple, out: Path, task: Task, s: StudySettings, tok, cfg) -> dict:
    from learner.encoding import compress, embedding_table, encoded_policy, parameter_counts

    name, arm, ratio, seed = cell
    d_enc = None if arm == "reference" else cfg.hidden_size // ratio
    compressed = None
    if arm in ("autoencoder", "svd"):
        compressed = compress(arm, reference_table(out, task, seed, s, tok, cfg), d_enc, seed=seed,
                              ae_steps=s.ae_steps)
    model = encoded_policy(cfg, tok, arm, d_enc, seed, compressed)
    counts = parameter_counts(model)
    result = train(model, task, seed, s, f"{name} {arm} {ratio}:1 seed {seed}")
    if arm == "reference":
        path = out / "tables" / f"{name}_seed{seed}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(embedding_table(model), path)
    return {"task": name, "arm": arm, "ratio": ratio, "d_enc": d_enc or cfg.hidden_size, "seed": seed,
            "params": counts, "ae_rel_error": compressed.rel_error if compressed else None, **result,
            "settings": asdict(s)}


def run(data: Path, out: Path, s: StudySettings, only: set[str] | None = None) -> list[dict]:
    """Every cell not yet in OUT/cells.jsonl (of the tasks in ``only``, all if None), appended as
    it finishes; returns all cells. One process per task may share OUT: each trains its own
    reference tables, and appends are locked."""
    from transformers import AutoTokenizer

    from learner.presets import PRESETS
    from rollout.datagen.dataset import read_split

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.jsonl"
    done = load_cells(path, s)
    todo = [c for c in cells(s) if key(c) not in done and (only is None or c[0] in only)]
    print(f"[encoding] {len(done)} cells done, {len(todo)} to run -> {path}", file=sys.stderr, flush=True)
    if todo:
        tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
        rows = read_split(data, "train").to_pylist()
        rows = rows[: s.train_rows] if s.train_rows else rows + read_split(data, "train_paraphrases").to_pylist()
        val = read_split(data, "val").to_pylist()
        tasks = {t: Task(t, tok, rows, val, s) for t in {c[0] for c in todo}}
        cfg = PRESETS[s.preset]
        for n, cell in enumerate(todo, 1):
            result = run_cell(cell, out, tasks[cell[0]], s, tok, cfg)
            with open(path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(json.dumps(result) + "\n")
            print(f"[encoding] cell {n}/{len(todo)} {key(cell)}: {json.dumps(result['metrics'])} "
                  f"cpu {result['cpu_s']} s", file=sys.stderr, flush=True)
    done |= load_cells(path, s)  # the cells just run, and any the other task's process appended
    return [done[key(c)] for c in cells(s) if key(c) in done]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/default"))
    p.add_argument("--out", type=Path, default=Path("runs/encoding_study"))
    p.add_argument("--quick", action="store_true", help="tiny preset, 2 ratios, 1 seed, a few steps (tests)")
    p.add_argument("--task", choices=TASKS, action="append",
                   help="run only this task's cells (repeatable; default: both); two processes, one "
                        "per task, may share --out")
    p.add_argument("--report-only", action="store_true", help="rebuild the summary, table and figures only")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.report_only:
        results = list(load_cells(args.out / "cells.jsonl", s).values())
    else:
        results = run(args.data, args.out, s, set(args.task) if args.task else None)
    summary = write_report(results, asdict(s), args.out)
    print(json.dumps({"out": str(args.out), "cells": len(results), "complete": summary["complete"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
