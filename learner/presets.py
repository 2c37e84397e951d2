"""The policy presets and the checkpoint metadata check: plain dataclasses, no torch.

``learner.config`` reads these to check a run's config, and the CLI checks a warm start
against them, before anything heavy is imported (a bad config fails in a fraction of a second).
``learner.policy`` builds and loads the models they describe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rollout.checkpoint import META_FILE  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture of the policy. Presets: :data:`PRESETS`."""

    name: str
    """Preset name, recorded in checkpoints."""
    hidden_size: int
    """Model width d_model."""
    num_layers: int
    """Transformer blocks."""
    num_heads: int
    """Attention heads; must divide hidden_size."""
    intermediate_size: int
    """SwiGLU MLP width."""
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (None = num_heads)."""
    max_seq_len: int = 256
    """Longest prompt + completion in tokens."""
    d_enc: int | None = None
    """Learned-encoding width: factorize embeddings vocab -> d_enc -> d_model (None = off)."""

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads {self.num_heads} must be divisible by num_kv_heads {kv}")
        if self.d_enc is not None and not 0 < self.d_enc <= self.hidden_size:
            raise ValueError(f"d_enc must be in 1..hidden_size ({self.hidden_size}), got {self.d_enc}")

    def with_(self, **changes) -> PolicyConfig:
        return replace(self, **changes)  # re-runs __post_init__ checks


PRESETS: dict[str, PolicyConfig] = {
    "tiny": PolicyConfig("tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=172),
    "10m": PolicyConfig("10m", hidden_size=320, num_layers=8, num_heads=8, intermediate_size=864),
    "50m": PolicyConfig("50m", hidden_size=512, num_layers=16, num_heads=8, intermediate_size=1376),
}
NOMINAL_PARAMS = {"10m": 10e6, "50m": 50e6}


def check_init(path: str | Path, policy: PolicyConfig, flag: str = "--init") -> None:
    """Raise ValueError unless the checkpoint at ``path`` holds ``policy`` (the config's preset
    and encoding): continuing a checkpoint never silently changes the model's shape."""
    saved = json.loads((Path(path) / META_FILE).read_text()).get("policy") or {}
    if saved != asdict(policy):
        differ = sorted(k for k in set(saved) | set(asdict(policy)) if saved.get(k) != asdict(policy).get(k))
        raise ValueError(f"{flag} {path}: the checkpoint holds the {saved.get('name', 'unknown')} policy, the "
                         f"config asks for {policy.name} ({', '.join(differ)} differ); set model.preset and "
                         "model.d_enc to match the checkpoint")

