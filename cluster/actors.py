"""Ray actor shells: resource options and forwarding only (the logic is in plain classes).

:class:`RolloutActor` holds a :class:`rollout.worker.RolloutWorker`, :class:`LearnerActor` a
:class:`learner.grpo_learner.GRPOLearner`; each method forwards one call. Their CPU shares
and placement are set by the caller with ``.options()``.
"""

from __future__ import annotations

import ray
import torch

from learner.grpo_learner import GRPOConfig, GRPOLearner
from rollout.batch import ScoredBatch, WeightsRef
from rollout.worker import RolloutWorker


@ray.remote(num_cpus=0.5, max_restarts=0)
class RolloutActor:
    def __init__(self, checkpoint: str, **kwargs):
        self.worker = RolloutWorker.from_checkpoint(checkpoint, **kwargs)

    def generate(self, intents: list[str], group_size: int):
        return self.worker.generate(intents, group_size)

    def greedy(self, intents: list[str]) -> list[str]:
        return self.worker.greedy(intents)

    def set_weights(self, weights: WeightsRef) -> int:
        return self.worker.set_weights(weights.version, weights.arrays)

    def version(self) -> int:
        return self.worker.version

    def parameter(self, name: str) -> torch.Tensor:
        return self.worker.parameter(name)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def rng_state(self) -> torch.Tensor:
        return self.worker.rng_state()

    def restore(self, version: int, rng_state: torch.Tensor) -> int:
        return self.worker.restore(version, rng_state)


@ray.remote(num_cpus=0.5, max_restarts=0)
class LearnerActor:
    def __init__(self, checkpoint: str, cfg: GRPOConfig, **kwargs):
        """``kwargs``: :meth:`GRPOLearner.from_checkpoint`'s (threads, set-token init, reference)."""
        self.learner = GRPOLearner.from_checkpoint(checkpoint, cfg, **kwargs)

    def update(self, batch: ScoredBatch) -> dict:
        return self.learner.update(batch)

    def weights(self) -> WeightsRef:
        return self.learner.weights()

    def device(self) -> str:
        return str(self.learner.device)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def save(self, path: str, meta: dict, with_optimizer: bool = False) -> str:
        return str(self.learner.save(path, meta, with_optimizer))

    def load_optimizer(self, path: str) -> int:
        return self.learner.load_optimizer(path)
