"""Trust metadata for TinyVAE latents.

Each latent can travel with who made it and how much to trust it: entity id, model name and
version, a UTC timestamp and a trust score in [0, 1] computed at encode time (where the
original pixels are known) from two quantities of the VAE (Kingma & Welling 2014):

    e = mean squared error of decode(mu) against the crop, per pixel value in [0, 1]
    k = KL(q(z|x) || N(0, I)) / latent_dim, nats per latent dimension

    trust = 2 ** ( -(e / e_ref + k / k_ref) / 2 )

where ``e_ref`` and ``k_ref`` are the medians of e and k over the training crops (stored in
the checkpoint). So trust is 1 exactly for a perfect reconstruction with zero KL, a typical
training crop scores 0.5, and each doubling of either ratio past the median halves the score
again (it falls monotonically as error or KL grows).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from learner.vae.model import TinyVAE, kl_per_dim


@dataclass(frozen=True)
class TrustCalibration:
    """Reference values that make a typical training crop score 0.5."""

    mse_ref: float
    """Median per-pixel squared error of decode(mu) on the training crops."""
    kl_ref: float
    """Median KL per latent dimension (nats) on the training crops."""

    def __post_init__(self) -> None:
        if not (self.mse_ref > 0 and self.kl_ref > 0):
            raise ValueError(f"mse_ref and kl_ref must be > 0, got {self.mse_ref}, {self.kl_ref}; "
                             "calibrate on more than one distinct crop")


@dataclass(frozen=True)
class TrustedLatent:
    """A latent with its provenance and trust score; JSON round-trips with to_json/from_json."""

    latent: tuple[float, ...]
    """The posterior mean mu, latent_dim values."""
    entity_id: str
    """Who or what the crop belongs to (caller's id)."""
    model_name: str
    """Name of the encoder, e.g. ``tinyvae``."""
    model_version: str
    """Checkpoint version (first 12 hex digits of the weights' sha256)."""
    timestamp: str
    """UTC time of encoding, ISO 8601."""
    trust: float
    """Trust score in [0, 1] (see the module docstring)."""
    recon_mse: float
    """e: per-pixel squared error of the reconstruction."""
    kl_per_dim: float
    """k: KL per latent dimension, nats."""
    tokens: tuple[int, ...] | None = None
    """Discrete dictionary tokens of the latent, when a VQ codebook is attached."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.trust <= 1.0:
            raise ValueError(f"trust must be in [0, 1], got {self.trust}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrustedLatent":
        d = json.loads(text)
        d["latent"] = tuple(d["latent"])
        d["tokens"] = tuple(d["tokens"]) if d.get("tokens") is not None else None
        return cls(**d)


def trust_score(mse: torch.Tensor, kl_dim: torch.Tensor, calib: TrustCalibration) -> torch.Tensor:
    """``2 ** (-(mse / mse_ref + kl_dim / kl_ref) / 2)``, elementwise; shapes (B,) -> (B,)."""
    ratio = mse / calib.mse_ref + kl_dim / calib.kl_ref
    return torch.exp2(-0.5 * ratio.clamp_min(0.0))


@torch.no_grad()
def error_and_kl(model: TinyVAE, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, ...]:
    """Per crop: mu (B, Z), per-pixel MSE of decode(mu) (B,) and KL per dimension (B,)."""
    mus, mses, kls = [], [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]  # (b, 3, H, W)
        mu, logvar = model.encode(xb)
        mses.append((model.decode(mu) - xb).pow(2).flatten(1).mean(1))
        kls.append(kl_per_dim(mu, logvar).mean(1))
        mus.append(mu)
    return torch.cat(mus), torch.cat(mses), torch.cat(kls)


def calibrate(model: TinyVAE, x: torch.Tensor) -> TrustCalibration:
    """Medians of e and k over crops ``x`` (N, 3, H, W), usually the training crops."""
    _, mse, kl = error_and_kl(model, x)
    return TrustCalibration(float(mse.median()), float(kl.median()))


def wrap(model: TinyVAE, x: torch.Tensor, entity_ids: list[str], calib: TrustCalibration,
         version: str, model_name: str = "tinyvae", quantizer=None,
         now: datetime | None = None) -> list[TrustedLatent]:
    """Encode crops ``x`` (B, 3, H, W) and wrap each latent with its metadata."""
    if len(entity_ids) != len(x):
        raise ValueError(f"need one entity id per crop: {len(entity_ids)} ids for {len(x)} crops")
    mu, mse, kl = error_and_kl(model, x)
    trust = trust_score(mse, kl, calib)
    tokens = quantizer.quantize(mu).tolist() if quantizer is not None else [None] * len(x)
    stamp = (now or datetime.now(timezone.utc)).isoformat()
    return [TrustedLatent(tuple(np.round(m, 6).tolist()), eid, model_name, version, stamp,
                          float(t), float(e), float(k), tuple(tok) if tok is not None else None)
            for m, eid, t, e, k, tok in zip(mu.numpy(), entity_ids, trust, mse, kl, tokens)]
