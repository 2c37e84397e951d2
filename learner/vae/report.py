"""One side-by-side evaluation run of a TinyVAE checkpoint on a crop set.

Everything in the docs' tables is measured in one call of :func:`evaluate`, on the same crops
of each evaluated split (the held-out source, the per-group test split, or val for choosing
settings): TinyVAE against PCA-64 and JPEG q=1, the share of crops where it beats PCA, shift
agreement; and on test the int8 encoder, the VQ dictionary, trust scores and cross-view
agreement, and the picture grid.
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
    return ev.summary(p, s, method=name, bytes_per_crop=bytes_per_crop,
                      share_ssim_above_085=float((s > 0.85).mean())), p, s


def evaluate(ckpt: Path, arrays: dict, splits=("heldout", "test"), max_test: int = 0,
             grid: Path | None = None, seed: int = 0, extras: bool = True, baseline: Path | None = None,
             pca_fit_max: int = 20000, pca_cache: Path | None = None, log=print) -> dict:
    """Measure a checkpoint on each of a crop set's evaluated ``splits``; return the report.

    Per split: TinyVAE, PCA-64 (fitted on at most ``pca_fit_max`` evenly spaced training crops)
    and JPEG q=1 side by side, the share of crops where TinyVAE beats PCA, and agreement under
    shifts of 2-16 pixels; ``baseline`` adds another checkpoint's row. With ``extras``: the VQ
    and int8 costs, trust and the cross-view views (on ``test``), and the picture grid (on the
    first split). ``pca_cache``: a file where the PCA fit is kept and reused (it depends only
    on the training crops, the latent size and the seed).
    """
    model, config = load_checkpoint(ckpt)
    tr = arrays["train_crops"]
    xtr = to_tensor(tr[np.linspace(0, len(tr) - 1, min(pca_fit_max, len(tr))).astype(int)])  # (N, 3, H, W)
    pca = _pca(xtr, model.cfg.latent_dim, seed, pca_cache)
    base = load_checkpoint(baseline)[0] if baseline is not None else None
    report = {"checkpoint": str(ckpt), "model_version": config.get("version"), "n_train": len(tr),
              "pca_fit_crops": len(xtr), "baseline": str(baseline) if baseline else None, "splits": {}}
    splits = [k for k in splits if len(arrays.get(f"{k}_crops", ()))]
    for k in splits:
        log(f"-- {k}")
        report["splits"][k], recons = _split_report(model, pca, base, arrays, k, max_test, seed, log)
        if grid is not None and k == splits[0]:
            idx = _grid_index(len(recons["x"]))
            save_grid(Path(grid), recons["x"][idx], recons["vae"], recons["pca"], recons["jpeg"], idx)
            report["grid"] = {"path": str(grid), "split": k}
    if extras and "test" in splits:
        x = to_tensor(_subset(arrays["test_crops"], max_test))
        report["vq"] = _vq_costs(model, config, ckpt, x, xtr, _adder(x, report["splits"]["test"]["table"], log), seed)
        mu = ev.reconstruct(model, x)[1]
        report["int8"] = _int8_costs(model, ckpt, x, mu, _adder(x, report["splits"]["test"]["table"], log))
        psnr = ev.psnr_ssim(ev.reconstruct(model, x)[0], x)[0]
        report["trust"] = _trust(model, config, x, psnr)
        report["cross_view"] = _cross_view(model, arrays, seed)
    return report


def _pca(xtr: torch.Tensor, k: int, seed: int, cache: Path | None) -> ev.PCA:
    key = {"n": len(xtr), "k": k, "seed": seed, "sum": float(xtr[:, :, ::8, ::8].sum())}
    if cache is not None and Path(cache).exists():
        saved = torch.load(cache, weights_only=False)
        if saved["key"] == key:
            pca = ev.PCA.__new__(ev.PCA)
            pca.mean, pca.basis = saved["mean"], saved["basis"]
            return pca
    pca = ev.PCA(xtr, k, seed)
    if cache is not None:
        torch.save({"key": key, "mean": pca.mean, "basis": pca.basis}, cache)
    return pca


def _subset(a: np.ndarray, max_n: int) -> np.ndarray:
    return a[np.linspace(0, len(a) - 1, min(max_n, len(a))).astype(int)] if max_n else a


def _adder(x, rows, log):
    def add(name, recon, nbytes):
        row, _, _ = _row(name, recon, x, nbytes)
        rows.append(row)
        log(f"{name:<28} PSNR {row['psnr_mean']:.2f} dB  SSIM {row['ssim_mean']:.4f}  {nbytes:.0f} B")
        return recon
    return add


def _split_report(model, pca, base, arrays, split, max_test, seed, log) -> tuple[dict, dict]:
    crops = _subset(arrays[f"{split}_crops"], max_test)
    x, z = to_tensor(crops), model.cfg.latent_dim  # (N, 3, H, W)
    rows, per_crop = [], {}

    def add(key, name, recon, nbytes):
        row, p, s = _row(name, recon, x, nbytes)
        rows.append(row)
        per_crop[key] = (p, s)
        log(f"{name:<28} PSNR {row['psnr_mean']:.2f} dB (median {row['psnr_median']:.2f})  SSIM "
            f"{row['ssim_mean']:.4f}  >0.85: {row['share_ssim_above_085']:.3f}  {nbytes:.0f} B")

    vae_rec, mu = ev.reconstruct(model, x)
    add("vae", "TinyVAE (fp32 latent)", vae_rec, 4 * z)
    add("vae16", "TinyVAE (fp16 latent)", model.decode(mu.half().float()).detach(), 2 * z)
    if base is not None:
        add("baseline", "TinyVAE baseline checkpoint", ev.reconstruct(base, x)[0], 4 * base.cfg.latent_dim)
    pca_rec = pca.reconstruct(x)
    add("pca", f"PCA-{z} (fp32 coefficients)", pca_rec, 4 * z)
    jpg, sizes = ev.jpeg_roundtrip(crops, quality=1)
    add("jpeg", "JPEG quality 1", jpg, float(sizes.mean()))
    (pv, sv), (pp, sp) = per_crop["vae"], per_crop["pca"]
    out = {"n": len(x), "table": rows,
           "beats_pca": {"psnr": float((pv > pp).mean()), "ssim": float((sv > sp).mean()),
                         "psnr_gain_mean_db": float((pv - pp).mean()), "ssim_gain_mean": float((sv - sp).mean())},
           "shift": _shift(model, pca, base, arrays, split, seed),
           "per_source": _per_source(_subset(arrays[f"{split}_source"], max_test), per_crop)}
    log(f"TinyVAE beats PCA on {out['beats_pca']['psnr']:.3f} of crops (PSNR), "
        f"{out['beats_pca']['ssim']:.3f} (SSIM)")
    for name, by_shift in out["shift"].items():
        log(f"shift cosine {name}: " + ", ".join(f"{s}px {v['same_mean']:.3f} (AUC {v['auc']:.3f})"
                                                  for s, v in by_shift.items()))
    return out, {"x": x, "vae": vae_rec, "pca": pca_rec, "jpeg": jpg}


def _shift(model, pca, base, arrays, split, seed) -> dict:
    """Cosine of codes for crops of one scene 2-16 px apart vs different scenes, per code."""
    a = arrays.get(f"{split}_shift_a")
    if a is None or len(a) < 2:
        return {}
    a, b = to_tensor(a), to_tensor(arrays[f"{split}_shift_b"])
    px, src = arrays[f"{split}_shift_px"], arrays[f"{split}_shift_source"]
    codes = {"TinyVAE": lambda x: model.encode(x)[0], "PCA": pca.encode}
    if base is not None:
        codes["TinyVAE baseline"] = lambda x: base.encode(x)[0]
    return {name: ev.shift_agreement(f, a, b, px, src, seed) for name, f in codes.items()}


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


def _per_source(src: np.ndarray, per_crop: dict) -> dict:
    """Mean PSNR and SSIM per source photograph, per method."""
    return {name: {int(k): [float(p[src == k].mean()), float(q[src == k].mean())] for k in np.unique(src)}
            for name, (p, q) in per_crop.items() if name != "vae16"}


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
