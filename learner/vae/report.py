"""One side-by-side evaluation run of a TinyVAE checkpoint on a crop set.

Everything in the issue's table is measured on the same test crops in one call of
:func:`evaluate`: TinyVAE (fp32, int8 encoder, VQ dictionary) against PCA-64 and JPEG q=1,
trust scores, cross-view agreement, and the picture grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from learner.vae import quality as ev
from learner.vae.int8 import dynamic_int8, load_int8
from learner.vae.train import load_checkpoint, to_tensor
from learner.vae.trust import TrustCalibration, error_and_kl, trust_score
from learner.vae.vq import VectorQuantizer, VQConfig
from learner.vae.images import VIEW_KINDS


def load_quantizer(ckpt: Path, config: dict) -> VectorQuantizer | None:
    from safetensors.torch import load_file

    if "vq" not in config or not (Path(ckpt) / "vq.safetensors").exists():
        return None
    vq = VectorQuantizer(VQConfig(**config["vq"]), config["vae"]["latent_dim"])
    vq.load_state_dict(load_file(str(Path(ckpt) / "vq.safetensors")))
    return vq


def _row(name: str, recon: torch.Tensor, x: torch.Tensor, bytes_per_crop: float) -> tuple[dict, np.ndarray, np.ndarray]:
    p, s = ev.psnr_ssim(recon, x)
    return ev.summary(p, s, method=name, bytes_per_crop=bytes_per_crop), p, s


def evaluate(ckpt: Path, arrays: dict, max_test: int = 0, grid: Path | None = None,
             seed: int = 0, log=print) -> dict:
    """Measure a checkpoint on a crop set's test split; return the report (JSON-ready)."""
    model, config = load_checkpoint(ckpt)
    tr_crops, te_crops = arrays["train_crops"], arrays["test_crops"]
    if max_test:
        te_crops = te_crops[np.linspace(0, len(te_crops) - 1, min(max_test, len(te_crops))).astype(int)]
    x, xtr = to_tensor(te_crops), to_tensor(tr_crops)  # (N, 3, H, W)
    z = model.cfg.latent_dim
    rows, per_crop = [], {}

    def add(name, recon, nbytes):
        row, p, s = _row(name, recon, x, nbytes)
        rows.append(row)
        per_crop[name] = (p, s)
        log(f"{name:<28} PSNR {row['psnr_mean']:.2f} dB  SSIM {row['ssim_mean']:.4f}  {nbytes:.0f} B")
        return recon

    vae_rec, mu = ev.reconstruct(model, x)
    add("TinyVAE (fp32 latent)", vae_rec, 4 * z)
    add("TinyVAE (fp16 latent)", model.decode(mu.half().float()).detach(), 2 * z)
    pca = ev.PCA(xtr, z, seed)
    pca_rec = add(f"PCA-{z} (fp32 coefficients)", pca.reconstruct(x), 4 * z)
    jpg, sizes = ev.jpeg_roundtrip(te_crops, quality=1)
    add("JPEG quality 1", jpg, float(sizes.mean()))
    report = {"checkpoint": str(ckpt), "model_version": config.get("version"),
              "n_train": len(tr_crops), "n_test": len(te_crops)}
    report["vq"] = _vq_costs(model, config, ckpt, x, xtr, add, seed)
    report["int8"] = _int8_costs(model, ckpt, x, mu, add)
    report["table"] = rows
    report["per_source"] = _per_source(arrays, max_test, per_crop, len(te_crops))
    report["trust"] = _trust(model, config, x, per_crop["TinyVAE (fp32 latent)"][0])
    report["cross_view"] = _cross_view(model, arrays, seed)
    if grid is not None:
        save_grid(Path(grid), x[_grid_index(len(x))], vae_rec, pca_rec, jpg, _grid_index(len(x)))
        report["grid"] = str(grid)
    return report


def _vq_costs(model, config, ckpt, x, xtr, add, seed) -> dict:
    """Reconstruction cost of the shipped VQ and of a one-token (group_dim = latent) dictionary."""
    out = {}
    shipped = load_quantizer(ckpt, config)
    quantizers = [shipped] if shipped is not None else []
    if shipped is None or shipped.cfg.group_dim != model.cfg.latent_dim:
        with torch.no_grad():
            mu_tr = ev.reconstruct(model, xtr)[1]
        k = min(shipped.cfg.num_codes if shipped else 512, len(mu_tr))  # tiny smoke sets
        one = VQConfig(num_codes=k, group_dim=model.cfg.latent_dim)
        quantizers.append(VectorQuantizer(one, model.cfg.latent_dim).fit_kmeans(mu_tr, seed=seed))
    for vq in quantizers:
        tokens = model.cfg.latent_dim // vq.cfg.group_dim
        bits = tokens * float(np.log2(vq.cfg.num_codes))
        rec, _ = ev.reconstruct(model, x, quantizer=vq)
        add(f"TinyVAE + VQ {vq.cfg.num_codes}x{tokens} tokens", rec, bits / 8)
        out[f"{tokens}_tokens"] = {"num_codes": vq.cfg.num_codes, "group_dim": vq.cfg.group_dim,
                                   "tokens": tokens, "bits": bits}
    return out


def _int8_costs(model, ckpt, x, mu, add) -> dict:
    """Accuracy cost of the int8 encoder (weight-only file and dynamic-int8 heads)."""
    out = {}
    path = Path(ckpt) / "encoder_int8.safetensors"
    encoders = {"dynamic int8 heads": dynamic_int8(model.encoder)}
    if path.exists():
        encoders = {"int8 weights": load_int8(path, model.cfg), **encoders}
        out["file_bytes"] = path.stat().st_size
        out["fp32_encoder_bytes"] = 4 * sum(p.numel() for p in model.encoder.parameters())
    for name, enc in encoders.items():
        rec, mu_q = ev.reconstruct(model, x, encoder=enc)
        add(f"TinyVAE ({name})", rec, 4 * model.cfg.latent_dim)
        cos = ev.cosine(mu, mu_q)
        out[name] = {"latent_cosine_mean": float(cos.mean()), "latent_cosine_min": float(cos.min()),
                     "latent_rel_error": float(((mu_q - mu).norm(dim=1) / mu.norm(dim=1)).mean())}
    return out


def _per_source(arrays, max_test, per_crop, n) -> dict:
    src = arrays["test_source"]
    if max_test:
        src = src[np.linspace(0, len(src) - 1, n).astype(int)]
    return {name: {int(s): [float(p[src == s].mean()), float(q[src == s].mean())] for s in np.unique(src)}
            for name, (p, q) in per_crop.items() if not name.startswith("TinyVAE (")
            or name == "TinyVAE (fp32 latent)"}


def _trust(model, config, x, psnr) -> dict:
    calib = TrustCalibration(**config["trust"])
    _, mse, kl = error_and_kl(model, x)
    t = trust_score(mse, kl, calib).numpy()
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    _, mse_n, kl_n = error_and_kl(model, noisy)
    t_noisy = trust_score(mse_n, kl_n, calib).numpy()
    return {"calibration": config["trust"], "test": ev.describe(t), "test_noisy_0.1": ev.describe(t_noisy),
            "spearman_trust_psnr": ev.spearman(t, psnr)}


def _cross_view(model, arrays, seed) -> dict:
    if len(arrays["views_a"]) < 2:
        return {}
    res = ev.cross_view(model.encoder, to_tensor(arrays["views_a"]), to_tensor(arrays["views_b"]),
                        arrays["views_kind"], VIEW_KINDS, seed)
    return {"pairs": len(res["same"]), "auc": res["auc"], "same": ev.describe(res["same"]),
            "different": ev.describe(res["different"]), "same_by_kind": res["same_by_kind"],
            "_same": res["same"], "_different": res["different"]}


def _grid_index(n: int, k: int = 8) -> np.ndarray:
    return np.linspace(0, n - 1, min(k, n)).astype(int)


def save_grid(path: Path, orig, vae, pca, jpg, idx) -> None:
    """Rows: original / TinyVAE / PCA-64 / JPEG q1 for the crops ``idx``; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("original", orig), ("TinyVAE", vae[idx]), ("PCA-64", pca[idx]), ("JPEG q1", jpg[idx])]
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.4 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (name, imgs) in enumerate(rows):
        for c in range(len(idx)):
            ax = axes[r, c]
            ax.imshow(imgs[c].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_cross_view_plot(path: Path, same: np.ndarray, diff: np.ndarray, auc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.linspace(-1, 1, 41)
    ax.hist(diff, bins, alpha=0.6, label="different crops")
    ax.hist(same, bins, alpha=0.6, label="two views of one crop")
    ax.set_xlabel("cosine of latents (mu)"), ax.set_ylabel("pairs")
    ax.set_title(f"TinyVAE cross-view agreement, AUC {auc:.3f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
