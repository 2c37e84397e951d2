"""Evaluation of TinyVAE against PCA-64 and JPEG, cross-view agreement, VQ and int8 costs.

- PSNR and SSIM (Wang et al. 2004, via ``pytorch-msssim``: Gaussian window 11, sigma 1.5)
  per crop, then the mean over the test crops.
- PCA with as many components as the latent (Pearson 1901; randomized SVD of Halko et al.
  2011), fitted on the same training crops: the best *linear* 192x code.
- JPEG at its smallest quality (1) with Pillow, with its size in bytes.
- Cross-view agreement: cosine of the latents (mu) of two views of the same crop against
  that of views of different crops, as two distributions and the AUC (Mann-Whitney U).
"""

from __future__ import annotations

import io

import numpy as np
import torch

from learner.vae.model import TinyVAE


@torch.no_grad()
def reconstruct(model: TinyVAE, x: torch.Tensor, batch: int = 512, quantizer=None,
                encoder=None) -> tuple[torch.Tensor, torch.Tensor]:
    """decode(mu) for crops ``x`` (N, 3, H, W) -> (recon (N, 3, H, W), mu (N, Z)).

    ``quantizer`` passes mu through the VQ dictionary; ``encoder`` swaps in another encoder
    (e.g. the int8 one).
    """
    enc = encoder or model.encoder
    recons, mus = [], []
    for i in range(0, len(x), batch):
        mu = enc(x[i:i + batch])[0]  # (b, Z)
        z = quantizer.dequantize(quantizer.quantize(mu)) if quantizer is not None else mu
        recons.append(model.decode(z))
        mus.append(mu)
    return torch.cat(recons), torch.cat(mus)


@torch.no_grad()
def psnr_ssim(recon: torch.Tensor, x: torch.Tensor, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-crop PSNR (dB) and SSIM of ``recon`` against ``x``, both (N, 3, H, W) in [0, 1]."""
    from pytorch_msssim import ssim

    mse = (recon.clamp(0, 1) - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    s = torch.cat([ssim(recon[i:i + batch].clamp(0, 1), x[i:i + batch], data_range=1.0,
                        size_average=False) for i in range(0, len(x), batch)])
    return (10 * torch.log10(1.0 / mse)).numpy(), s.numpy()


def summary(psnr: np.ndarray, ssim: np.ndarray, **extra) -> dict:
    return {"psnr_mean": float(psnr.mean()), "psnr_median": float(np.median(psnr)),
            "ssim_mean": float(ssim.mean()), "ssim_median": float(np.median(ssim)), **extra}


class PCA:
    """Linear code: ``encode`` (N, D) -> (N, k), ``decode`` back; fitted by randomized SVD."""

    def __init__(self, train: torch.Tensor, k: int, seed: int = 0):
        flat = train.flatten(1)  # (N, D)
        self.mean = flat.mean(0)
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(flat - self.mean, q=min(k + 16, *flat.shape), center=False, niter=6)
        self.basis = v[:, :k]  # (D, k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.basis

    def decode(self, c: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return (c @ self.basis.T + self.mean).view(-1, *shape).clamp(0, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x.shape[1:])


def jpeg_roundtrip(crops: np.ndarray, quality: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """JPEG-compress uint8 crops (N, H, W, 3); return the decoded (N, 3, H, W) and bytes per crop."""
    from PIL import Image

    out, sizes = [], []
    for c in crops:
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell())
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
    return x, np.asarray(sizes)


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a, b, dim=1).numpy()


def average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share their average rank."""
    order = v.argsort(kind="mergesort")
    _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
    ranks = np.empty(len(v))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(tie) / 2 (the Mann-Whitney AUC), by ranks."""
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (n >= 2)."""
    return (np.arange(n) + rng.integers(1, n, size=1)[0]) % n if n > 1 else np.zeros(1, int)


@torch.no_grad()
def cross_view(encoder, a: torch.Tensor, b: torch.Tensor, kinds: np.ndarray, kind_names,
               seed: int = 0) -> dict:
    """Cosines of mu for same-crop view pairs (a[i], b[i]) and different-crop pairs (a[i], b[p(i)])."""
    mu_a, mu_b = encoder(a)[0], encoder(b)[0]  # (N, Z)
    same = cosine(mu_a, mu_b)
    perm = derangement(len(a), np.random.default_rng(seed))
    diff = cosine(mu_a, mu_b[perm])
    per_kind = {name: float(same[kinds == k].mean()) for k, name in enumerate(kind_names)
                if (kinds == k).any()}
    return {"same": same, "different": diff, "auc": auc(same, diff), "same_by_kind": per_kind}


def different_scene(sources: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each pair i, a random partner j from another source photograph (another scene);
    a derangement when every pair comes from one source. ``sources``: (N,) -> (N,) indices."""
    n = len(sources)
    out = derangement(n, rng)
    for i in range(n):
        others = np.flatnonzero(sources != sources[i])
        if len(others):
            out[i] = others[rng.integers(len(others))]
    return out


@torch.no_grad()
def shift_agreement(encode, a: torch.Tensor, b: torch.Tensor, shifts: np.ndarray, sources: np.ndarray,
                    seed: int = 0) -> dict[int, dict]:
    """Per shift: cosine of the codes of two crops of one scene ``shift`` pixels apart (``a[i]``,
    ``b[i]``) against that of crops of different scenes (``a[i]``, ``b[j]``, another source), and
    the AUC of the two. ``encode``: (N, 3, H, W) -> (N, Z) codes; ``shifts``, ``sources``: (N,)."""
    za, zb = encode(a), encode(b)  # (N, Z)
    same = cosine(za, zb)
    diff = cosine(za, zb[different_scene(sources, np.random.default_rng(seed))])
    out = {}
    for s in np.unique(shifts):
        m = shifts == s
        out[int(s)] = {"pairs": int(m.sum()), "same_mean": float(same[m].mean()),
                       "same_p05": float(np.percentile(same[m], 5)),
                       "different_mean": float(diff[m].mean()), "auc": auc(same[m], diff[m])}
    return out


def describe(v: np.ndarray) -> dict:
    return {"mean": float(v.mean()), "std": float(v.std()), "p05": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "p95": float(np.percentile(v, 95))}
