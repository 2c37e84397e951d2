"""Training and checkpoints for TinyVAE (Kingma & Welling 2014, beta-VAE weighting).

The loop reads like CleanRL: sample a batch -> loss -> update -> log, one short function
each. A checkpoint is a folder: ``model.safetensors`` (weights), ``config.json`` (the
``VAEConfig``, the ``VAETrainConfig``, the trust calibration and the model version) and
``log.jsonl`` (one line per logged step). While training, ``train_state.pt`` (weights,
optimizer, step, RNG, log) is written every ``save_every`` steps, and a run started again
with the same ``--out`` resumes from it.

Batches are cut from the stored 80x80 training crops: two 64x64 views of each crop at random
offsets (up to 16 pixels apart; the second is used by the shift-consistency term only), a
random horizontal flip and a colour jitter shared by both views.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from learner.vae.model import TinyVAE, VAEConfig, vae_loss

MODEL_NAME = "tinyvae"


@dataclass(frozen=True)
class VAETrainConfig:
    """How a TinyVAE is trained. Stored in the checkpoint's ``config.json``."""

    steps: int = 6000
    """Optimizer steps."""
    batch_size: int = 128
    """Crops per step."""
    lr: float = 2e-3
    """Peak Adam learning rate (linear warm-up, then cosine decay to 5% of it)."""
    warmup: int = 200
    """Warm-up steps."""
    seed: int = 0
    """Seed for initialisation, batch order, flips and the latent noise."""
    threads: int = 2
    """torch CPU threads."""
    log_every: int = 100
    """Steps between log lines."""
    time_limit_s: float = 0.0
    """Stop after this many CPU seconds of training, this process's own (0 = no limit); the
    learning-rate schedule then follows them, so a time-limited run still ends with a decayed
    rate. CPU time, not wall time: a paused (SIGSTOP) or crowded run gets the same compute."""
    jitter: float = 0.1
    """Colour jitter: brightness +-jitter, contrast and saturation x[1 - 2 jitter, 1 + 2 jitter]."""
    save_every: int = 500
    """Steps between resumable training states (``train_state.pt``)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.warmup < 0 or self.log_every < 1 or self.threads < 1 or self.time_limit_s < 0:
            raise ValueError("warmup and time_limit_s must be >= 0; log_every and threads >= 1")
        if not 0 <= self.jitter < 0.5 or self.save_every < 1:
            raise ValueError(f"jitter must be in [0, 0.5) and save_every >= 1, got {self.jitter}, "
                             f"{self.save_every}")


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 crops (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)


def progress(tcfg: VAETrainConfig, step: int, elapsed: float) -> float:
    """Fraction of training done: by steps, or by wall time when a time limit is set."""
    frac = step / tcfg.steps
    return max(frac, elapsed / tcfg.time_limit_s) if tcfg.time_limit_s else frac


def lr_at(tcfg: VAETrainConfig, step: int, frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay (by ``frac``) to 5% of the peak."""
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    return tcfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def sample_views(data: torch.Tensor, tcfg: VAETrainConfig, gen: torch.Generator,
                 size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views (B, 3, size, size) in [0, 1] of a random batch of stored crops ``data``
    (N, 3, W, W) uint8: each at its own random offset, one flip and one colour jitter per crop."""
    b, room = tcfg.batch_size, data.shape[-1] - size
    x = data[torch.randint(len(data), (b,), generator=gen)].float().div_(255.0)  # (B, 3, W, W)
    flip = torch.rand(b, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    x = jitter(x, tcfg.jitter, gen)
    views = []
    for _ in range(2):
        off = torch.randint(room + 1, (b, 2), generator=gen)
        views.append(torch.stack([x[i, :, y:y + size, x0:x0 + size] for i, (y, x0) in enumerate(off.tolist())]))
    return views[0], views[1]


def jitter(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness +-amount, contrast and saturation x[1 - 2 amount, 1 + 2 amount], per crop.

    ``x``: (B, 3, H, W) in [0, 1] -> the same shape, clipped to [0, 1].
    """
    if amount == 0:
        return x
    b = len(x)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)  # noqa: E731
    grey = x.mean(1, keepdim=True)  # (B, 1, H, W)
    x = grey + u(1 - 2 * amount, 1 + 2 * amount) * (x - grey)  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + u(1 - 2 * amount, 1 + 2 * amount) * (x - mean) + u(-amount, amount)  # contrast, brightness
    return x.clamp_(0.0, 1.0)


def train_step(model: TinyVAE, opt: torch.optim.Optimizer, x: torch.Tensor,
               x_shifted: torch.Tensor | None = None) -> dict[str, float]:
    """One update on batch ``x`` (B, 3, H, W), with ``x_shifted`` (shifted views of the same
    crops) when the shift term is on; returns the loss terms before the update."""
    model.train()
    recon, mu, logvar = model(x)
    mu_b = model.encode(x_shifted)[0] if model.cfg.shift_weight > 0 else None
    terms = vae_loss(model.cfg, x, recon, mu, logvar, mu_b)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def train(cfg: VAEConfig, tcfg: VAETrainConfig, train_wide: np.ndarray, log=print,
          init: Path | None = None, out: Path | None = None) -> tuple[TinyVAE, list[dict]]:
    """Train a TinyVAE on stored uint8 crops (N, W, W, 3), W >= 64, fresh or from checkpoint
    ``init``; with ``out``, save a resumable state there and resume from one found there."""
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    gen = torch.Generator().manual_seed(tcfg.seed)
    model = TinyVAE(cfg)
    if init is not None:
        grow_from(model, load_checkpoint(init)[0])
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    data = torch.from_numpy(np.ascontiguousarray(train_wide)).permute(0, 3, 1, 2)  # (N, 3, W, W) uint8
    first, used, rows = _resume(out, model, opt, gen, log)
    start = time.process_time() - used
    for step in range(first, tcfg.steps):
        frac = progress(tcfg, step, time.process_time() - start)
        for group in opt.param_groups:
            group["lr"] = lr_at(tcfg, step, frac)
        terms = train_step(model, opt, *sample_views(data, tcfg, gen, cfg.image_size))
        last = step == tcfg.steps - 1 or frac >= 1.0
        if step % tcfg.log_every == 0 or last:
            rows.append({"step": step, "lr": group["lr"], "cpu_s": round(time.process_time() - start, 1),
                         **terms})
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
        if out is not None and (step + 1) % tcfg.save_every == 0 and not last:
            _save_state(out, model, opt, gen, step + 1, time.process_time() - start, rows)
        if last:
            break
    model.eval()
    return model, rows


def grow_from(model: TinyVAE, source: TinyVAE) -> None:
    """Copy ``source``'s weights into ``model``, which may have decoder blocks ``source`` lacks
    (those keep their zero-initialised branches, so ``model`` starts as ``source``)."""
    hint = "--init checkpoint does not fit this model (widths, latent size or extra blocks differ)"
    try:
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(f"{hint}: {str(err).splitlines()[1:2]}") from None
    foreign = [k for k in missing if not k.startswith("decoder.refine.")] + list(unexpected)
    if foreign:
        raise ValueError(f"{hint}: {foreign[:4]}")


def _save_state(out: Path, model, opt, gen, step: int, used: float, rows: list[dict]) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = Path(out) / "train_state.pt.tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "step": step, "cpu_s": used, "rows": rows}, tmp)
    tmp.replace(Path(out) / "train_state.pt")


def _resume(out: Path | None, model, opt, gen, log) -> tuple[int, float, list[dict]]:
    """(first step, CPU seconds already spent, log rows) from ``out/train_state.pt`` if any."""
    path = Path(out) / "train_state.pt" if out is not None else None
    if path is None or not path.exists():
        return 0, 0.0, []
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    log(f"resumed from {path} at step {state['step']} ({state['cpu_s']:.0f} CPU s)")
    return state["step"], state["cpu_s"], state["rows"]


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(out: Path, model: TinyVAE, tcfg: VAETrainConfig | None = None,
                    extra: dict | None = None, rows: list[dict] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``log.jsonl``) into folder ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:12]
    config = {"model": MODEL_NAME, "version": digest, "vae": dataclasses.asdict(model.cfg),
              "train": dataclasses.asdict(tcfg) if tcfg else None, **(extra or {})}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if rows is not None:
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def load_checkpoint(path: Path) -> tuple[TinyVAE, dict]:
    """The model (in eval mode) and the parsed ``config.json`` of a checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `tinycompress vae train --out {path}`")
    config = json.loads((path / "config.json").read_text())
    model = TinyVAE(VAEConfig(**config["vae"]))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval(), config


def update_config(path: Path, **sections) -> None:
    """Add or replace top-level sections of a checkpoint's ``config.json``."""
    cfg_path = Path(path) / "config.json"
    config = json.loads(cfg_path.read_text())
    config.update(sections)
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")


def finish_checkpoint(out: Path, model: TinyVAE, tcfg: VAETrainConfig, vq_cfg, train_crops: np.ndarray,
                      rows: list[dict], data: dict | None = None, max_fit: int = 20000) -> Path:
    """Calibrate trust, fit the VQ dictionary by k-means and export the int8 encoder; save all.

    Writes ``model.safetensors``, ``config.json`` (with ``trust`` and ``vq`` sections),
    ``vq.safetensors``, ``encoder_int8.safetensors`` and ``log.jsonl`` into ``out``.
    """
    from safetensors.torch import save_file

    from learner.vae.int8 import export_int8
    from learner.vae.trust import calibrate, error_and_kl
    from learner.vae.vq import VectorQuantizer

    idx = np.linspace(0, len(train_crops) - 1, min(max_fit, len(train_crops))).astype(int)
    x = to_tensor(train_crops[idx])  # (N, 3, H, W)
    calib = calibrate(model, x)
    mu = error_and_kl(model, x)[0]  # (N, Z)
    vq = VectorQuantizer(vq_cfg, model.cfg.latent_dim).fit_kmeans(mu, seed=tcfg.seed)
    extra = {"trust": dataclasses.asdict(calib), "vq": dataclasses.asdict(vq_cfg), "data": data}
    save_checkpoint(out, model, tcfg, extra, rows)
    save_file({"codebook": vq.codebook.detach().contiguous()}, str(Path(out) / "vq.safetensors"))
    export_int8(model.encoder, Path(out) / "encoder_int8.safetensors")
    (Path(out) / "train_state.pt").unlink(missing_ok=True)  # finished: nothing to resume
    return Path(out)
