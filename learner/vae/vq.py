"""A discrete dictionary for TinyVAE latents: 512 codes, nearest-code lookup.

Follows van den Oord et al., "Neural Discrete Representation Learning" (VQ-VAE, 2017): a
codebook of K vectors, each input goes to its nearest code, trained either with the
codebook + commitment loss and a straight-through gradient (``forward``) or, after the VAE
is trained, by k-means on its latents (``fit_kmeans``, k-means++ seeding of Arthur &
Vassilvitskii 2007). ``group_dim`` splits a latent into ``latent_dim / group_dim`` pieces
that share the codebook (product quantization), so a 64-d latent becomes 64 / group_dim tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    """Size of the dictionary and how latents are cut into tokens."""

    num_codes: int = 512
    """Codebook entries (each token is a 9-bit integer for 512)."""
    group_dim: int = 8
    """Latent values per token; latent_dim / group_dim tokens per latent (64 = one token)."""
    commitment: float = 0.25
    """Weight of the commitment loss when trained by gradient (VQ-VAE's beta)."""

    def __post_init__(self) -> None:
        if self.num_codes < 2 or self.group_dim < 1:
            raise ValueError(f"num_codes must be >= 2 and group_dim >= 1, got {self.num_codes}, {self.group_dim}")


class VectorQuantizer(nn.Module):
    """``quantize``: (B, Z) -> tokens (B, Z / group_dim); ``dequantize``: tokens -> (B, Z)."""

    def __init__(self, cfg: VQConfig, latent_dim: int):
        super().__init__()
        if latent_dim % cfg.group_dim:
            raise ValueError(f"group_dim={cfg.group_dim} must divide latent_dim={latent_dim}")
        self.cfg = cfg
        self.codebook = nn.Parameter(torch.randn(cfg.num_codes, cfg.group_dim))  # (K, D)

    def _groups(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(-1, self.cfg.group_dim)  # (B * G, D)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code per group: (B, Z) -> (B, G) int64."""
        d = torch.cdist(self._groups(z), self.codebook)  # (B * G, K)
        return d.argmin(1).view(len(z), -1)

    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, G) int64 -> (B, Z)."""
        return self.codebook[tokens].flatten(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Straight-through quantization: z_q (B, Z), tokens (B, G), codebook + commitment loss."""
        tokens = self.quantize(z)
        zq = self.dequantize(tokens)
        loss = F.mse_loss(zq, z.detach()) + self.cfg.commitment * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), tokens, loss

    @torch.no_grad()
    def fit_kmeans(self, z: torch.Tensor, iters: int = 30, seed: int = 0) -> "VectorQuantizer":
        """Set the codebook by k-means on latents ``z`` (N, Z); empty clusters are re-seeded."""
        pts = self._groups(z).float()  # (P, D)
        gen = torch.Generator().manual_seed(seed)
        code = kmeans_pp(pts, self.cfg.num_codes, gen)
        for _ in range(iters):
            assign = torch.cdist(pts, code).argmin(1)  # (P,)
            sums = torch.zeros_like(code).index_add_(0, assign, pts)
            counts = torch.bincount(assign, minlength=len(code)).float()
            code = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], code)
            empty = (counts == 0).nonzero().flatten()
            if len(empty):  # re-seed with the points worst served by their code
                err = (pts - code[assign]).pow(2).sum(1)
                code[empty] = pts[err.topk(len(empty)).indices]
        self.codebook.copy_(code)
        return self


def kmeans_pp(pts: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeds: (P, D) -> (k, D). Needs at least k distinct points."""
    if len(torch.unique(pts, dim=0)) < k:
        raise ValueError(f"k-means needs at least {k} distinct latent pieces, got fewer from {len(pts)}")
    first = torch.randint(len(pts), (1,), generator=gen)
    code = [pts[first]]
    dist = (pts - code[0]).pow(2).sum(1)  # (P,)
    for _ in range(k - 1):
        nxt = torch.multinomial(dist / dist.sum(), 1, generator=gen)
        code.append(pts[nxt])
        dist = torch.minimum(dist, (pts - code[-1]).pow(2).sum(1))
    return torch.cat(code)  # (k, D)
