"""Int8 export of the TinyVAE encoder.

Two forms, both measured against fp32 in ``vae eval`` and ``benchmarks/bench_vae.py``:

- ``export_int8`` / ``load_int8``: weight-only int8, symmetric and per output channel
  (Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", 2018, without the zero point). Conv and linear weights
  are stored as int8 with one fp32 scale per output channel in a safetensors file (about 4x
  smaller); loading dequantizes them, so any fp32 runtime can use the file.
- ``dynamic_int8``: PyTorch dynamic quantization of the linear heads, which run in int8
  arithmetic at inference time (activations quantized on the fly).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from learner.vae.model import Encoder, VAEConfig


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: w (O, ...) -> q int8 (O, ...), scale fp32 (O,)."""
    flat = w.detach().reshape(len(w), -1)
    scale = flat.abs().amax(1).clamp_min(1e-12) / 127.0  # (O,)
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.view_as(w), scale.float()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.view(-1, *([1] * (q.dim() - 1)))


def export_int8(encoder: Encoder, path: Path) -> Path:
    """Write the encoder with int8 weights (``<name>.q`` + ``<name>.scale``) to ``path``."""
    from safetensors.torch import save_file

    tensors = {}
    for name, t in encoder.state_dict().items():
        if name.endswith("weight") and t.dim() >= 2:
            tensors[f"{name}.q"], tensors[f"{name}.scale"] = quantize_per_channel(t)
        else:  # biases and GroupNorm affine stay fp32 (a few hundred values)
            tensors[name] = t.detach().contiguous()
    save_file(tensors, str(path), metadata={"format": "tinyvae-encoder-int8-per-channel"})
    return Path(path)


def load_int8(path: Path, cfg: VAEConfig) -> Encoder:
    """An fp32 ``Encoder`` whose weights are the dequantized int8 ones from ``path``."""
    from safetensors.torch import load_file

    raw = load_file(str(path))
    state = {}
    for name, t in raw.items():
        if name.endswith(".scale"):
            continue
        if name.endswith(".q"):
            base = name[:-2]
            state[base] = dequantize(t, raw[f"{base}.scale"])
        else:
            state[name] = t
    enc = Encoder(cfg)
    enc.load_state_dict(state)
    return enc.eval()


def dynamic_int8(encoder: Encoder) -> nn.Module:
    """A copy of the encoder whose linear heads run in int8 (torch dynamic quantization)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(encoder).eval(), {nn.Linear}, dtype=torch.qint8)
