"""The GRPO controller: draw -> sample -> score -> shape -> update -> sync -> log, one short
function a phase.

Rollout workers and the learner are Ray actors (shells over ``rollout.worker.RolloutWorker``
and ``learner.grpo_learner.GRPOLearner``; the learner takes the GPU when the cluster has one),
scoring goes through the validator actor pool, ``rollout.shaping.shape`` turns the scores into
the learner's batch, and new weights reach every worker as one versioned flat numpy buffer put
once in the object store. ``cluster.run_folder`` owns the run folder's layout.

Two modes (``train.mode``):

* ``sync``: each step's rollouts come from the policy the learner just published.
* ``async``: step t+1's rollouts are generated while step t trains. Ray runs an actor's calls
  in order, so the weight sync queued behind that generation reaches the workers before the
  generation of step t+2: rollouts lag the learner by exactly one policy version (``staleness``).

A rollout worker that dies is replaced (fresh actor, the learner's current weights) and its
shard regenerated; a validator actor that dies is replaced by the pool. Either way the step
completes with every group scored once.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch
from ray.exceptions import RayActorError
from safetensors.torch import load_file, save_file

from cluster.actors import LearnerActor, RolloutActor
from cluster.run_folder import checkpoint_folder, latest_checkpoint, point_latest, truncate_metrics
from learner.config import RunConfig, TrainConfig
from rollout.batch import RolloutBatch, ScoredBatch, WeightsRef, merge_rollouts
from rollout.datagen.dataset import read_split
from rollout.shaping import shape
from validator_actors.pool import ValidatorPool
from validator_actors.tokens import TokenCounter
from validator_actors.validator import Score, Validator, score

INFLIGHT_WEIGHTS = "inflight_weights.safetensors"
"""Async checkpoints: the weights the batch in flight is generated from."""
TIMEOUT_S = 600

EvalCallback = Callable[[dict, "Path | None"], "bool | None"]


class GRPOController:
    """Drives one GRPO run. ``on_eval(metrics, checkpoint_or_None)`` is called after each
    evaluation (and the checkpoint of that step, if one was due); returning True stops the run."""

    def __init__(self, cfg: RunConfig, data_dir: str | Path, init: str | Path, out: str | Path,
                 log=print, resume: bool = False, resume_from: str | Path | None = None,
                 on_eval: EvalCallback | None = None, check_cpus: bool = True):
        self.cfg, self.t = cfg, cfg.train
        self.data_dir, self.out, self.log, self.on_eval = Path(data_dir), Path(out), log, on_eval
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_rows = read_split(self.data_dir, self.t.split).to_pylist()
        self.val_rows = read_split(self.data_dir, "val").to_pylist()[: self.t.eval_samples]
        self.order = list(range(len(self.train_rows)))
        random.Random(self.t.seed).shuffle(self.order)
        self.position, self.step = 0, 0
        self.best = {"val_reward": -math.inf, "val_pass_rate": -1.0, "step": 0}
        self.evals_without_gain, self.worker_restarts = 0, 0
        self.inflight: tuple[list[dict], list, tuple[int, list[int]]] | None = None
        # async: what the in-flight batch is generated from (the workers' RNG states before it,
        # and the weights they hold), so that a checkpoint can have it drawn again exactly
        self.inflight_start: tuple[list, object] | None = None
        self.published = None  # the weights last given to the workers (None: the checkpoint they loaded)
        saved = Path(resume_from) if resume_from else (latest_checkpoint(self.out) if resume else None)
        if resume and saved is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
        self.init = str(saved or init)
        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        self.learner_opts = {"num_gpus": 1, "num_cpus": 0.01} if gpu else {"num_cpus": self.t.learner_cpus}
        if self.t.learner_resource:  # pinned to the nodes that offer it (e.g. a GPU group)
            self.learner_opts["resources"] = {self.t.learner_resource: 0.01}
        if check_cpus:
            _check_cpus(self.learner_opts["num_cpus"], self.t)
            _check_custom_resources(self.t)
        fresh_init = self.t.set_token_init if saved is None else 0.0  # a checkpoint has them already
        # a resumed run keeps the KL term's reference: the policy it started from, not the checkpoint
        reference = {"reference": str(init), "reference_set_token_init": self.t.set_token_init} if saved else {}
        self.learner = LearnerActor.options(**self.learner_opts).remote(
            self.init, cfg.grpo, threads=self.t.learner_torch_threads, set_token_init=fresh_init, **reference)
        self.workers = [self._new_worker(i) for i in range(self.t.rollout_workers)]
        if fresh_init:
            self.sync()  # the workers loaded the checkpoint as saved: give them the learner's rows
        self.counter = TokenCounter(self.data_dir / "tokenizer")
        self.pool = ValidatorPool(num_actors=self.t.validator_actors, timeout_s=60.0,
                                  token_counter=self.counter,
                                  actor_options={"num_cpus": self.t.validator_cpus})
        self.validator = Validator()
        self.shaping = cfg.shaping()
        self.tokenizer = None
        if self.shaping.minimal_rewrites or self.shaping.negatives:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.init)
        if saved is not None:
            self._restore(saved)
        self.tb = None
        if self.t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1)

    def _new_worker(self, i: int):
        resources = {self.t.rollout_resource: 0.01} if self.t.rollout_resource else None
        return RolloutActor.options(num_cpus=self.t.worker_cpus, resources=resources).remote(
            self.init, temperature=self.cfg.grpo.temperature, top_p=self.t.top_p,
            max_new_tokens=self.t.max_new_tokens, seed=self.t.seed + i + 1000 * self.worker_restarts)

    # ---- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Policy + optimizer (safetensors), state.json, sampler RNG; then the latest pointer."""
        path = checkpoint_folder(self.out, self.step)
        ray.get(self.learner.save.remote(str(path), {"stage": "grpo", "step": self.step}, True),
                timeout=TIMEOUT_S)
        rngs = ray.get([w.rng_state.remote() for w in self.workers], timeout=TIMEOUT_S)
        inflight_version = None
        if self.inflight and self.inflight_start:  # async: the batch in flight, drawn again on resume
            starts, weights = ray.get(self.inflight_start[0], timeout=TIMEOUT_S), ray.get(self.inflight_start[1])
            rngs += starts
            save_file({k: torch.from_numpy(v.copy()) for k, v in weights.arrays.items()},
                      str(path / INFLIGHT_WEIGHTS))
            inflight_version = weights.version
        names = [f"worker{i}" for i in range(len(self.workers))] + [f"inflight{i}" for i in range(len(rngs) - len(self.workers))]
        save_file(dict(zip(names, rngs)), str(path / "rng.safetensors"))
        # async: the batch already drawn for the next step is not trained on yet; a resumed run
        # draws it again, so the data position saved is the one before it
        position, order = self.inflight[2] if self.inflight else (self.position, self.order)
        state = {"step": self.step, "position": position, "order": order, "best": self.best,
                 "evals_without_gain": self.evals_without_gain, "seed": self.t.seed,
                 "inflight_version": inflight_version}
        (path / "state.json").write_text(json.dumps(state))
        point_latest(path, self.t.keep_checkpoints)
        return path

    def _restore(self, path: Path) -> None:
        state = json.loads((path / "state.json").read_text())
        self.step, self.position, self.order = state["step"], state["position"], state["order"]
        self.best, self.evals_without_gain = state["best"], state["evals_without_gain"]
        version = ray.get(self.learner.load_optimizer.remote(str(path)), timeout=TIMEOUT_S)
        rngs = load_file(str(path / "rng.safetensors"))
        ray.get([w.restore.remote(version, rngs[f"worker{i}"]) for i, w in enumerate(self.workers)
                 if f"worker{i}" in rngs], timeout=TIMEOUT_S)
        if state.get("inflight_version") is not None and self.t.mode == "async" and self.step < self.t.steps:
            self._redraw_inflight(path, state["inflight_version"], rngs, version)
        truncate_metrics(self.out, self.step, lambda m: self.log(f"[grpo] {m}"))  # later steps are redone
        self.log(f"[grpo] resumed from {path} at step {self.step}, policy version {version}")

    def _redraw_inflight(self, path: Path, inflight_version: int, rngs: dict, version: int) -> None:
        """Async resume: the batch that was in flight at the checkpoint is drawn again as it was,
        from the same data position, weights and RNG states; then the saved policy is published
        behind it, as it was then. A resumed async run thus equals an uninterrupted one."""
        arrays = {k: v.numpy() for k, v in load_file(str(path / INFLIGHT_WEIGHTS)).items()}
        weights = ray.put(WeightsRef(inflight_version, arrays))
        ray.get([w.set_weights.remote(weights) for w in self.workers], timeout=TIMEOUT_S)
        ray.get([w.restore.remote(inflight_version, rngs[f"inflight{i}"]) for i, w in enumerate(self.workers)
                 if f"inflight{i}" in rngs], timeout=TIMEOUT_S)
        self.published = weights
        self.inflight = self._draw()
        self.sync(wait=False)

    # ---- phases -------------------------------------------------------------------------
    def next_batch(self) -> list[dict]:
        rows = []
        for _ in range(self.t.prompts_per_step * self.t.oversample):
            if self.position == len(self.order):
                random.Random(self.t.seed + self.step).shuffle(self.order)
                self.position = 0
            rows.append(self.train_rows[self.order[self.position]])
            self.position += 1
        return rows

    def submit(self, rows: list[dict]) -> list:
        """Start generation: one shard of ``rows`` per rollout worker (refs, not results)."""
        per = len(rows) // len(self.workers)
        return [w.generate.remote([r["intent"] for r in rows[i * per : (i + 1) * per]], self.t.group_size)
                for i, w in enumerate(self.workers)]

    def collect(self, rows: list[dict], refs: list) -> RolloutBatch:
        """Wait for every shard; a shard whose worker died is regenerated on a replacement."""
        per = len(rows) // len(self.workers)
        return merge_rollouts([
            self._get(i, ref, lambda w, i=i: w.generate.remote(
                [r["intent"] for r in rows[i * per : (i + 1) * per]], self.t.group_size), "generation")
            for i, ref in enumerate(refs)])

    def _get(self, i: int, ref, call: Callable, what: str):
        """``ray.get(ref)`` of a call on rollout worker ``i``; if the worker died, it is replaced
        (with the learner's newest weights) and ``call(worker)`` is made again, up to 3 tries."""
        for attempt in range(3):
            try:
                return ray.get(ref, timeout=TIMEOUT_S)
            except RayActorError as e:
                if attempt == 2:
                    raise
                self.log(f"[grpo] rollout worker {i} died during {what} ({type(e).__name__}); restarting it")
                self.workers[i] = self._restart_worker(i)
                ref = call(self.workers[i])

    def _restart_worker(self, i: int):
        ray.kill(self.workers[i])
        self.worker_restarts += 1
        worker = self._new_worker(i)
        worker.set_weights.remote(self.learner.weights.remote())  # runs before anything queued after
        return worker

    def sample(self, rows: list[dict]) -> RolloutBatch:
        return self.collect(rows, self.submit(rows))

    def score(self, rows: list[dict], rollout: RolloutBatch) -> tuple[ScoredBatch, list[Score]]:
        """The batch the learner trains on (``rollout.shaping.shape``) and the pool's scores of
        what was *sampled*."""
        refs = [r["reference_hash"] for r in rows for _ in range(self.t.group_size)]
        sampled = self.pool.score([r["intent"] for r in rows for _ in range(self.t.group_size)], rollout.texts, refs)
        batch = shape(rollout, sampled, refs, self.shaping, validator=self.validator, count=self.counter,
                      tokenizer=self.tokenizer)
        return batch, sampled

    def update(self, batch: ScoredBatch) -> dict:
        return ray.get(self.learner.update.remote(batch), timeout=TIMEOUT_S)

    def sync(self, wait: bool = True) -> int | None:
        """Publish the learner's weights once; every worker copies them in its call order.

        ``wait=False`` (async) returns once the weights are in the object store: the copies
        run on each worker after the generation already queued there."""
        weights = self.published = self.learner.weights.remote()  # one object in the store, read by every worker
        refs = [w.set_weights.remote(weights) for w in self.workers]
        if not wait:
            ray.wait([weights], timeout=TIMEOUT_S)
            return None
        versions = []
        for i, ref in enumerate(refs):
            try:
                versions.append(ray.get(ref, timeout=TIMEOUT_S))
            except RayActorError:  # replaced, with the newest weights, when its next shard fails
                self.log(f"[grpo] rollout worker {i} died during the weight sync")
        return min(versions, default=None)

    def evaluate(self) -> dict:
        """Greedy on the val intents (worker 0; replaced and asked again if it dies)."""
        greedy = lambda w: w.greedy.remote([r["intent"] for r in self.val_rows])  # noqa: E731
        texts = self._get(0, greedy(self.workers[0]), greedy, "evaluation")
        scores = score([r["intent"] for r in self.val_rows], texts, [r["reference_hash"] for r in self.val_rows],
                       validator=self.validator, token_counter=self.counter)
        n = len(scores)
        return {"val_pass_rate": sum(s.valid for s in scores) / n,
                "val_ir_tokens": sum(s.tokens for s in scores) / n,
                "val_reward": sum(s.reward for s in scores) / n}

    # ---- loop ---------------------------------------------------------------------------
    def _draw(self) -> tuple[list[dict], list, tuple[int, list[int]]]:
        before = (self.position, list(self.order))
        rows = self.next_batch()
        if self.t.mode == "async":  # queued before the generation: the RNG states it starts from
            if self.published is None:  # the workers hold the checkpoint they loaded: the learner's now
                self.published = self.learner.weights.remote()
            self.inflight_start = ([w.rng_state.remote() for w in self.workers], self.published)
        return rows, self.submit(rows), before

    def train_step(self) -> dict:
        """One step; async mode starts the next step's generation before this update."""
        t0 = time.perf_counter()
        rows, refs, _ = self.inflight or self._draw()
        self.inflight = None
        rollout = self.collect(rows, refs)
        t1 = time.perf_counter()
        batch, sampled = self.score(rows, rollout)
        t2 = time.perf_counter()
        if self.t.mode == "async":
            update_ref = self.learner.update.remote(batch)
            if self.step + 1 < self.t.steps:
                self.inflight = self._draw()  # generates under the weights the workers hold now
            metrics = ray.get(update_ref, timeout=TIMEOUT_S)
        else:
            metrics = self.update(batch)
        t3 = time.perf_counter()
        version = self.sync(wait=self.t.mode == "sync")
        t4 = time.perf_counter()
        self.step += 1
        staleness = metrics["policy_version"] - 1 - rollout.policy_version
        if staleness > self.t.max_staleness:  # the one-deep pipeline cannot do this; fail loudly
            raise RuntimeError(f"rollouts lag the learner by {staleness} versions (max {self.t.max_staleness})")
        return {"step": self.step, "pass_rate": sum(s.valid for s in sampled) / len(sampled),
                "ir_tokens": sum(s.tokens for s in sampled) / len(sampled), **metrics,
                "rollout_version": rollout.policy_version, "staleness": staleness,
                **({"worker_version": version} if version is not None else {}),
                "groups_trained": len(batch.rollout.prompts),
                "rewrites": int(batch.rollout.offpolicy.sum()) if batch.rollout.offpolicy is not None else 0,
                "worker_restarts": self.worker_restarts, "validator_restarts": self.pool.stats.restarts,
                "t_generate": t1 - t0, "t_score": t2 - t1, "t_update": t3 - t2, "t_sync": t4 - t3,
                "step_time": t4 - t0, "samples_per_s": len(rollout.texts) / (t4 - t0)}

    def _after_eval(self, m: dict) -> bool:
        """Track the best val reward (pass rate, then shorter programs); True on a plateau."""
        if m["val_reward"] > self.best["val_reward"] + 1e-9:
            self.best = {"val_reward": m["val_reward"], "val_pass_rate": m["val_pass_rate"],
                         "val_ir_tokens": m["val_ir_tokens"], "step": self.step}
            self.evals_without_gain = 0
            ray.get(self.learner.save.remote(str(self.out / "best"), {"stage": "grpo", **self.best}),
                    timeout=TIMEOUT_S)
        else:
            self.evals_without_gain += 1
        return 0 < self.t.patience <= self.evals_without_gain

    def run(self) -> dict:
        stop_reason = "steps"
        try:
            if self.step == 0:  # the warm start's val figures: step 0 of the curves
                start = {"step": 0, **self.evaluate()}
                (self.out / "warm_start_eval.json").write_text(json.dumps(start))
                self._tensorboard(start)
                self.log(f"[grpo] warm start: val pass {start['val_pass_rate']:.3f} tokens "
                         f"{start['val_ir_tokens']:.2f} reward {start['val_reward']:+.4f}")
            with open(self.out / "metrics.jsonl", "a") as fh:
                while self.step < self.t.steps:
                    m = self.train_step()
                    evaluated = self.step % self.t.eval_every == 0 or self.step == self.t.steps
                    plateau = False
                    if evaluated:
                        m.update(self.evaluate())
                        plateau = self._after_eval(m)
                    fh.write(json.dumps(m) + "\n")
                    fh.flush()
                    self._tensorboard(m)
                    saved = None
                    if self.step % self.t.checkpoint_every == 0 or self.step == self.t.steps or plateau:
                        saved = self.save_checkpoint()
                    self.log(_progress_line(m, self.t.steps))
                    if evaluated and self.on_eval is not None and self.on_eval(m, saved):
                        stop_reason = "callback"
                        break
                    if plateau:
                        stop_reason = "plateau"
                        self.log(f"[grpo] val reward has not improved for {self.evals_without_gain} "
                                 f"evaluations (patience {self.t.patience}): stopping")
                        break
        finally:
            self.shutdown()
        return {"steps": self.step, "stop_reason": stop_reason, "best_step": self.best["step"],
                "best_val_reward": self.best["val_reward"], "best_val_pass_rate": self.best["val_pass_rate"]}

    def _tensorboard(self, m: dict) -> None:
        if self.tb is None:
            return
        for key, value in m.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(("val/" if key.startswith("val_") else "train/") + key, value, m["step"])
        self.tb.flush()

    def actors(self) -> list:
        """Every Ray actor this run started: the learner, the rollout workers, the validators."""
        return [self.learner, *self.workers, *self.pool.actors]

    def shutdown(self) -> None:
        """Release every actor this controller started (their CPUs go back to the cluster)."""
        if self.tb is not None:
            self.tb.close()
        self.pool.shutdown()
        for actor in [self.learner, *self.workers]:
            ray.kill(actor)


def _progress_line(m: dict, steps: int) -> str:
    line = (f"[grpo] step {m['step']}/{steps}: reward {m['reward_mean']:+.3f} pass {m['pass_rate']:.3f} "
            f"tokens {m['ir_tokens']:.2f} kl {m.get('kl', 0.0):.4f} entropy {m.get('entropy', 0.0):.4f} "
            f"rewrites {m['rewrites']} groups {m['groups_trained']} lag {m['staleness']} time {m['step_time']:.2f}s")
    if "val_pass_rate" in m:
        line += f" | val pass {m['val_pass_rate']:.3f} tokens {m['val_ir_tokens']:.2f} reward {m['val_reward']:+.4f}"
    return line


def _check_cpus(learner_cpus: float, t: TrainConfig, wait_s: float = 30.0) -> None:
    """Fail at start, with the arithmetic, when the cluster cannot hold the run's actors."""
    need = t.actor_cpus(learner_cpus)
    deadline = time.monotonic() + wait_s  # actors just killed free their CPUs lazily
    while (free := ray.available_resources().get("CPU", 0.0)) + 1e-9 < need and time.monotonic() < deadline:
        time.sleep(0.5)
    if need > free + 1e-9:
        raise RuntimeError(
            f"this run needs {need:g} logical CPUs (learner {learner_cpus:g}, {t.rollout_workers} rollout workers "
            f"x {t.worker_cpus:g}, {t.validator_actors} validators x {t.validator_cpus:g}) but the cluster has "
            f"{free:g} free: lower train.rollout_workers / validator_actors / *_cpus or start Ray with more "
            "(logical) CPUs")


def _check_custom_resources(t: TrainConfig) -> None:
    """Fail at start when no node offers a resource the config pins actors to (they would wait forever)."""
    offered = ray.cluster_resources()
    for key in ("rollout_resource", "learner_resource"):
        name = getattr(t, key)
        if name and offered.get(name, 0.0) < 0.01:
            raise RuntimeError(f"train.{key} is {name!r} but no node of the cluster offers it: start the nodes "
                               f"meant for it with --resources='{{\"{name}\": 100}}' or set train.{key}: null")
