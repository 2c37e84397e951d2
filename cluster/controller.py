"""The GRPO controller: sample -> score -> update -> sync -> log, one short function a phase.

Synchronous mode: each step's rollouts come from the policy the learner just published.
Rollout workers and the learner are Ray actors (the learner takes the GPU when the cluster
has one), scoring goes through the validator actor pool, and new weights reach every worker
as one versioned flat numpy buffer put once in the object store.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import ray
import torch

from cluster.actors import LearnerActor, RolloutActor
from learner.config import RunConfig
from learner.grpo_learner import ScoredBatch
from rollout.dataset import read_split
from rollout.sampler import RolloutBatch, merge_rollouts
from validator_actors.pool import ValidatorPool
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Validator

TIMEOUT_S = 600


class GRPOController:
    def __init__(self, cfg: RunConfig, data_dir: str | Path, init: str | Path, out: str | Path, log=print):
        self.cfg, self.t = cfg, cfg.train
        self.data_dir, self.out, self.log = Path(data_dir), Path(out), log
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_rows = read_split(self.data_dir, "train").to_pylist()
        self.val_rows = read_split(self.data_dir, "val").to_pylist()[: self.t.eval_samples]
        self.order = list(range(len(self.train_rows)))
        random.Random(self.t.seed).shuffle(self.order)
        self.position, self.step = 0, 0
        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        learner_opts = {"num_gpus": 1, "num_cpus": 0.01} if gpu else {}
        self.learner = LearnerActor.options(**learner_opts).remote(str(init), cfg.grpo)
        self.workers = [
            RolloutActor.remote(str(init), temperature=cfg.grpo.temperature, top_p=self.t.top_p,
                                max_new_tokens=self.t.max_new_tokens, seed=self.t.seed + i)
            for i in range(self.t.rollout_workers)
        ]
        self.pool = ValidatorPool(num_actors=self.t.validator_actors, timeout_s=60.0,
                                  token_counter=TokenCounter(self.data_dir / "tokenizer"),
                                  actor_options={"num_cpus": 0.25})
        self.validator = Validator()

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
        counter = TokenCounter(self.data_dir / "tokenizer")
        tokens = counter(texts)
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
        best = -1.0
        with open(self.out / "metrics.jsonl", "a") as fh:
            for _ in range(self.t.steps):
                m = self.train_step()
                if self.step % self.t.eval_every == 0 or self.step == self.t.steps:
                    m.update(self.evaluate())
                    if m["val_pass_rate"] > best:
                        best = m["val_pass_rate"]
                        ray.get(self.learner.save.remote(str(self.out / "best"), {"stage": "grpo", "step": self.step,
                                "val_pass_rate": best}), timeout=TIMEOUT_S)
                fh.write(json.dumps(m) + "\n")
                fh.flush()
                self.log(f"[grpo] step {m['step']}: reward {m['reward_mean']:+.3f} pass {m['pass_rate']:.3f} "
                         f"tokens {m['ir_tokens']:.1f} kl {m.get('kl', 0.0):.4f} time {m['step_time']:.2f}s"
                         + (f" | val pass {m['val_pass_rate']:.3f} tokens {m['val_ir_tokens']:.2f}"
                            if "val_pass_rate" in m else ""))
        self.pool.shutdown()
        return {"steps": self.step, "best_val_pass_rate": best}
