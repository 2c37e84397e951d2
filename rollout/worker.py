"""A rollout worker as a plain class: a policy copy and a sampler, refreshed by weight syncs.

The Ray actor (``cluster/actors.py``) is a thin shell over :class:`RolloutWorker`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from rollout.checkpoint import read_policy
from rollout.batch import RolloutBatch
from rollout.sampler import Sampler


class RolloutWorker:
    """Generates GRPO groups with the policy version it last received."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 96, seed: int = 0):
        self.model, self.tok = model.eval(), tokenizer
        self.sampler = Sampler(self.model, self.tok, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: str, *, threads: int = 1, device: str = "cpu", **kwargs) -> RolloutWorker:
        """A worker over the policy checkpoint folder ``checkpoint`` (``threads`` torch threads)."""
        torch.set_num_threads(threads)
        model, tok, _ = read_policy(checkpoint, device=device)
        return cls(model, tok, **kwargs)

    def generate(self, intents: list[str], group_size: int) -> RolloutBatch:
        return self.sampler.sample(intents, group_size, policy_version=self.version, generator=self.generator)

    def greedy(self, intents: list[str]) -> list[str]:
        """The greedy program of each intent (evaluation)."""
        return self.sampler.greedy(intents, batch=max(1, len(intents)))  # one batch, as ever

    def set_weights(self, version: int, arrays: dict[str, np.ndarray]) -> int:
        """Copy a flat weight buffer in (zero-copy numpy from the object store)."""
        copy_weights(self.model, arrays)
        self.version = version
        return version

    def parameter(self, name: str) -> torch.Tensor:
        """A copy of one named parameter (to check what a weight sync delivered)."""
        return self.model.state_dict()[name].detach().clone()

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, version: int, rng_state: torch.Tensor) -> int:
        """Continue a saved run: its sampler RNG state and policy version."""
        self.generator.set_state(rng_state)
        self.version = version
        return version


def copy_weights(model, arrays: dict[str, np.ndarray]) -> None:
    """Copy named numpy arrays into ``model``'s parameters and buffers, in place."""
    state = model.state_dict()
    missing = sorted(set(state) - set(arrays))
    if missing:
        raise KeyError(f"weights lack {missing[:3]}{'...' if len(missing) > 3 else ''}")
    with torch.no_grad(), warnings.catch_warnings():
        # the object store hands out read-only arrays; they are only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(arrays[name]))
