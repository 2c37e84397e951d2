"""A rollout worker as a plain class: a policy copy and a sampler, refreshed by weight syncs.

The Ray actor (``cluster/actors.py``) is a thin shell over :class:`RolloutWorker`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from rollout.sampler import RolloutBatch, Sampler


class RolloutWorker:
    """Generates GRPO groups with the policy version it last received."""

    def __init__(self, checkpoint: str, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 96, seed: int = 0, threads: int = 1, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()
        self.tok = AutoTokenizer.from_pretrained(checkpoint)
        self.sampler = Sampler(self.model, self.tok, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0

    def generate(self, intents: list[str], group_size: int) -> RolloutBatch:
        return self.sampler.sample(intents, group_size, policy_version=self.version, generator=self.generator)

    def set_weights(self, version: int, arrays: dict[str, np.ndarray]) -> int:
        """Copy a flat weight buffer in (zero-copy numpy from the object store)."""
        copy_weights(self.model, arrays)
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
