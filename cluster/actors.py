"""Ray actor shells: resource options and forwarding only (the logic is in plain classes)."""

from __future__ import annotations

import json

import ray
import torch
from safetensors.torch import load_file, save_file

from learner.grpo_learner import GRPOConfig, GRPOLearner, ScoredBatch, WeightsRef
from learner.policy import init_set_tokens, load_policy, policy_config_from_meta, save_policy
from rollout.worker import RolloutWorker


@ray.remote(num_cpus=0.5, max_restarts=0)
class RolloutActor:
    def __init__(self, checkpoint: str, **kwargs):
        self.worker = RolloutWorker(checkpoint, **kwargs)

    def generate(self, intents: list[str], group_size: int):
        return self.worker.generate(intents, group_size)

    def greedy(self, intents: list[str]) -> list[str]:
        return self.worker.sampler.sample(intents, 1, greedy=True).texts

    def set_weights(self, weights: WeightsRef) -> int:
        return self.worker.set_weights(weights.version, weights.arrays)

    def version(self) -> int:
        return self.worker.version

    def parameter(self, name: str) -> torch.Tensor:
        """One named parameter of the worker's policy copy (to check what a sync delivered)."""
        return self.worker.model.state_dict()[name].detach().clone()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def rng_state(self) -> torch.Tensor:
        return self.worker.generator.get_state()

    def restore(self, version: int, rng_state: torch.Tensor) -> int:
        self.worker.generator.set_state(rng_state)
        self.worker.version = version
        return version


@ray.remote(num_cpus=0.5, max_restarts=0)
class LearnerActor:
    def __init__(self, checkpoint: str, cfg: GRPOConfig, threads: int = 1, set_token_init: float = 0.0,
                 reference: str | None = None, reference_set_token_init: float = 0.0):
        """``reference`` (a resumed run's starting checkpoint, its full-set rows initialized with
        ``reference_set_token_init``): the KL term's frozen model; default: ``checkpoint`` itself."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(threads)
        # a learned encoding keeps training as its factors (rollout workers get it folded)
        model, tok, self.meta = load_policy(checkpoint, device=device, trainable_encoding=True)
        if set_token_init:
            init_set_tokens(model, tok, set_token_init)
        ref = None
        if reference is not None and cfg.beta > 0:
            ref, _, _ = load_policy(reference, device=device)
            if reference_set_token_init:
                init_set_tokens(ref, tok, reference_set_token_init)
        self.learner = GRPOLearner(model, tok, cfg, device=device, reference=ref)

    def update(self, batch: ScoredBatch) -> dict:
        return self.learner.update(batch)

    def weights(self) -> WeightsRef:
        return self.learner.weights()

    def device(self) -> str:
        return str(self.learner.device)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def save(self, path: str, meta: dict, with_optimizer: bool = False) -> str:
        cfg = policy_config_from_meta(self.meta)
        save_policy(self.learner.model, self.learner.tok, cfg, path, {**meta, "policy_version": self.learner.version})
        if with_optimizer:
            tensors, opt_meta = self.learner.optimizer_state()
            save_file(tensors, f"{path}/optimizer.safetensors")
            with open(f"{path}/optimizer.json", "w") as fh:
                json.dump(opt_meta, fh)
        return path

    def load_optimizer(self, path: str) -> int:
        with open(f"{path}/optimizer.json") as fh:
            meta = json.load(fh)
        self.learner.load_optimizer_state(load_file(f"{path}/optimizer.safetensors"), meta)
        return self.learner.version
