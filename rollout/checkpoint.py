"""Reading a policy checkpoint: the project's one loader of a policy folder.

A checkpoint is an ordinary ``save_pretrained`` folder (``config.json``, ``model.safetensors``,
the tokenizer's files) plus ``tinycompress.json``: the policy's architecture and provenance.
Training writes it (``learner.policy.save_policy``); rollout workers, evaluation, the learner
and serving read it here. Imports torch and transformers only when called, so the CLI's
checks stay light.
"""

from __future__ import annotations

import json
from pathlib import Path

META_FILE = "tinycompress.json"


def read_policy(path: str | Path, device: str = "cpu"):
    """(model, tokenizer, meta) of the checkpoint folder ``path``: float32, eval mode, on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a checkpoint (no config.json): run `tinycompress sft` first")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    return model.to(device).eval(), tokenizer, meta
