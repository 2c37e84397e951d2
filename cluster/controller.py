"""The GRPO controller: sample -> score -> update -> sync -> log, one short function a phase.

Synchronous mode: each step's rollouts come from the policy the learner just published.
Rollout workers and the learner are Ray actors (the learner takes the GPU when the cluster
has one), scoring goes through the validator actor pool, and new weights reach every worker
as one versioned flat numpy buffer put once in the object store.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import ray
import torch
from safetensors.torch import load_file, save_file

from cluster.actors import LearnerActor, RolloutActor
from learner.config import RunConfig
from learner.grpo_learner import ScoredBatch
from rollout.dataset import read_split
from rollout.sampler import RolloutBatch, merge_rollouts
from validator_actors.pool import ValidatorPool
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator

TIMEOUT_S = 600
LEARNER_CPUS, WORKER_CPUS, VALIDATOR_CPUS = 0.5, 0.5, 0.25  # logical; sized so 2 CPUs hold a run


class GRPOController:
    def __init__(self, cfg: RunConfig, data_dir: str | Path, init: str | Path, out: str | Path,
                 log=print, resume: bool = False):
        self.cfg, self.t = cfg, cfg.train
        self.data_dir, self.out, self.log = Path(data_dir), Path(out), log
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_rows = read_split(self.data_dir, "train").to_pylist()
        self.val_rows = read_split(self.data_dir, "val").to_pylist()[: self.t.eval_samples]
        self.order = list(range(len(self.train_rows)))
        random.Random(self.t.seed).shuffle(self.order)
        self.position, self.step, self.best = 0, 0, -1.0
        saved = latest_checkpoint(self.out) if resume else None
        if resume and saved is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
        init = saved or init
        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        learner_opts = {"num_gpus": 1, "num_cpus": 0.01} if gpu else {}
        need = (0.01 if gpu else LEARNER_CPUS) + WORKER_CPUS * self.t.rollout_workers \
            + VALIDATOR_CPUS * self.t.validator_actors
        free = _free_cpus_within(need, seconds=30.0)  # actors just killed free their CPUs lazily
        if need > free + 1e-9:
            raise RuntimeError(
                f"this run needs {need:g} logical CPUs (learner {LEARNER_CPUS}, {self.t.rollout_workers} "
                f"rollout workers x {WORKER_CPUS}, {self.t.validator_actors} validators x {VALIDATOR_CPUS}) "
                f"but the cluster has {free:g} free: lower train.rollout_workers / train.validator_actors "
                "or start Ray with more (logical) CPUs")
        self.learner = LearnerActor.options(**learner_opts).remote(str(init), cfg.grpo)
        self.workers = [
            RolloutActor.remote(str(init), temperature=cfg.grpo.temperature, top_p=self.t.top_p,
                                max_new_tokens=self.t.max_new_tokens, seed=self.t.seed + i)
            for i in range(self.t.rollout_workers)
        ]
        self.counter = TokenCounter(self.data_dir / "tokenizer")
        self.pool = ValidatorPool(num_actors=self.t.validator_actors, timeout_s=60.0,
                                  token_counter=self.counter,
                                  actor_options={"num_cpus": VALIDATOR_CPUS})
        self.validator = Validator()
        if saved is not None:
            self._restore(saved)

    # ---- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Policy + optimizer (safetensors), state.json, sampler RNG; then the latest pointer."""
        path = self.out / "checkpoints" / f"step_{self.step:06d}"
        ray.get(self.learner.save.remote(str(path), {"stage": "grpo", "step": self.step}, True),
                timeout=TIMEOUT_S)
        rngs = ray.get([w.rng_state.remote() for w in self.workers], timeout=TIMEOUT_S)
        save_file({f"worker{i}": r for i, r in enumerate(rngs)}, str(path / "rng.safetensors"))
        state = {"step": self.step, "position": self.position, "order": self.order,
                 "best_val_pass_rate": self.best, "seed": self.t.seed}
        (path / "state.json").write_text(json.dumps(state))
        tmp = self.out / "checkpoints" / "latest.tmp"
        tmp.write_text(path.name)
        os.replace(tmp, self.out / "checkpoints" / "latest")  # atomic: a kill leaves the old one
        return path

    def _restore(self, path: Path) -> None:
        state = json.loads((path / "state.json").read_text())
        self.step, self.position, self.order = state["step"], state["position"], state["order"]
        self.best = state["best_val_pass_rate"]
        version = ray.get(self.learner.load_optimizer.remote(str(path)), timeout=TIMEOUT_S)
        rngs = load_file(str(path / "rng.safetensors"))
        ray.get([w.restore.remote(version, rngs[f"worker{i}"]) for i, w in enumerate(self.workers)],
                timeout=TIMEOUT_S)
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # drop lines of steps after the checkpoint: they will be redone
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))
        self.log(f"[grpo] resumed from {path} at step {self.step}, policy version {version}")

    # ---- phases -------------------------------------------------------------------------
    def next_batch(self) -> list[dict]:
        rows = []
        for _ in range(self.t.prompts_per_step):
            if self.position == len(self.order):
                random.Random(self.t.seed + self.step).shuffle(self.order)
                self.position = 0
            rows.append(self.train_rows[self.order[self.position]])
            self.position += 1
        return rows

    def sample(self, rows: list[dict]) -> RolloutBatch:
        per = len(rows) // len(self.workers)
        refs = [w.generate.remote([r["intent"] for r in rows[i * per : (i + 1) * per]], self.t.group_size)
                for i, w in enumerate(self.workers)]
        return merge_rollouts(ray.get(refs, timeout=TIMEOUT_S))

    def score(self, rows: list[dict], rollout: RolloutBatch) -> ScoredBatch:
        g = self.t.group_size
        intents = [r["intent"] for r in rows for _ in range(g)]
        refs = [r["reference_hash"] for r in rows for _ in range(g)]
        scores = self.pool.score(intents, rollout.texts, refs)
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
        valid = torch.tensor([s.valid for s in scores])
        self.last_ir_tokens = sum(s.tokens for s in scores) / len(scores)
        return ScoredBatch(rollout, rewards, valid)

    def update(self, batch: ScoredBatch) -> dict:
        return ray.get(self.learner.update.remote(batch), timeout=TIMEOUT_S)

    def sync(self) -> int:
        weights = self.learner.weights.remote()  # one object in the store, read by every worker
        return min(ray.get([w.set_weights.remote(weights) for w in self.workers], timeout=TIMEOUT_S))

    def evaluate(self) -> dict:
        texts = ray.get(self.workers[0].greedy.remote([r["intent"] for r in self.val_rows]), timeout=TIMEOUT_S)
        reports = [self.validator.validate(p, r["reference_hash"]) for p, r in zip(texts, self.val_rows)]
        tokens = self.counter(texts)
        return {"val_pass_rate": sum(r.valid for r in reports) / len(reports),
                "val_ir_tokens": sum(tokens) / len(tokens)}

    # ---- loop ---------------------------------------------------------------------------
    def train_step(self) -> dict:
        t0 = time.perf_counter()
        rows = self.next_batch()
        rollout = self.sample(rows)
        t1 = time.perf_counter()
        batch = self.score(rows, rollout)
        t2 = time.perf_counter()
        metrics = self.update(batch)
        t3 = time.perf_counter()
        version = self.sync()
        t4 = time.perf_counter()
        self.step += 1
        return {"step": self.step, "pass_rate": float(batch.valid.float().mean()),
                "ir_tokens": self.last_ir_tokens, **metrics,
                "worker_version": version, "t_generate": t1 - t0, "t_score": t2 - t1,
                "t_update": t3 - t2, "t_sync": t4 - t3, "step_time": t4 - t0,
                "samples_per_s": len(rollout.texts) / (t4 - t0)}

    def run(self) -> dict:
        with open(self.out / "metrics.jsonl", "a") as fh:
            while self.step < self.t.steps:
                m = self.train_step()
                if self.step % self.t.eval_every == 0 or self.step == self.t.steps:
                    m.update(self.evaluate())
                    if m["val_pass_rate"] > self.best:
                        self.best = m["val_pass_rate"]
                        ray.get(self.learner.save.remote(str(self.out / "best"), {"stage": "grpo", "step": self.step,
                                "val_pass_rate": self.best}), timeout=TIMEOUT_S)
                fh.write(json.dumps(m) + "\n")
                fh.flush()
                if self.step % self.t.checkpoint_every == 0 or self.step == self.t.steps:
                    self.save_checkpoint()
                self.log(f"[grpo] step {m['step']}: reward {m['reward_mean']:+.3f} pass {m['pass_rate']:.3f} "
                         f"tokens {m['ir_tokens']:.1f} kl {m.get('kl', 0.0):.4f} time {m['step_time']:.2f}s"
                         + (f" | val pass {m['val_pass_rate']:.3f} tokens {m['val_ir_tokens']:.2f}"
                            if "val_pass_rate" in m else ""))
        self.shutdown()
        return {"steps": self.step, "best_val_pass_rate": self.best}

    def shutdown(self) -> None:
        """Release every actor this controller started (their CPUs go back to the cluster)."""
        self.pool.shutdown()
        for actor in [self.learner, *self.workers]:
            ray.kill(actor)


def _free_cpus_within(need: float, seconds: float) -> float:
    """Free logical CPUs, waiting up to ``seconds`` for ``need`` of them."""
    deadline = time.monotonic() + seconds
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free + 1e-9 >= need or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None
