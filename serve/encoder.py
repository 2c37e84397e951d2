"""The served TinyVAE: image bytes in, trusted latents out, latents back to PNG.

A plain class (no Ray) wrapped by ``serve.app``. Images are read only from bytes, with
Pillow limited to PNG and JPEG, and their size is checked from the header before any pixel
is decoded. The size rule (docs/SERVE.md):

- exactly 64x64: used as is;
- square, with a side from 16 to 1024 pixels: resized to 64x64 (Pillow's antialiasing
  bicubic filter);
- anything else (not square, under 16 or over 1024 pixels a side): rejected with the size.

Any mode is converted to RGB (grey replicated, palette expanded, alpha dropped).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serve.compressor import ASSETS

DEFAULT_ENCODER = ASSETS / "tinyvae"
IMAGE_SIZE = 64
MIN_SIDE, MAX_SIDE = 16, 1024
FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """The bytes are not a usable image; the message says why (HTTP 422 or 400)."""


def read_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """PNG/JPEG bytes -> (size, size, 3) uint8 RGB, under the size rule above."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise ImageError(f"image is too large; the side must be from {MIN_SIDE} to {MAX_SIDE} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"not a PNG or JPEG image ({type(exc).__name__})") from None
    w, h = img.size
    if w != h:
        raise ImageError(f"image is {w}x{h}; it must be square (crop it first), {size}x{size} ideally")
    if not MIN_SIDE <= w <= MAX_SIDE:
        raise ImageError(f"image is {w}x{h}; the side must be from {MIN_SIDE} to {MAX_SIDE} pixels")
    try:
        img = img.convert("RGB")
        if w != size:
            img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
        return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
        raise ImageError(f"image data is corrupt ({type(exc).__name__}: {str(exc)[:80]})") from None


def png_bytes(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class EncoderConfig:
    """Which TinyVAE checkpoint to serve and how."""

    checkpoint: str = str(DEFAULT_ENCODER)
    """Folder written by ``tinycompress vae train`` (model.safetensors, config.json, vq.safetensors)."""
    threads: int = 1
    """torch threads per replica."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


class ImageCodec:
    """Encode crops to trusted latents (+ VQ codes), decode latents to PNG."""

    def __init__(self, cfg: EncoderConfig | None = None):
        import torch

        from learner.vae.report import load_quantizer
        from learner.vae.train import load_checkpoint
        from learner.vae.trust import TrustCalibration

        self.cfg = cfg or EncoderConfig()
        torch.set_num_threads(self.cfg.threads)
        path = Path(self.cfg.checkpoint)
        self.model, self.config = load_checkpoint(path)
        if "trust" not in self.config:
            raise ValueError(f"{path}/config.json has no trust calibration: finish the checkpoint "
                             "with `tinycompress vae train` (it calibrates trust)")
        self.calib = TrustCalibration(**self.config["trust"])
        self.quantizer = load_quantizer(path, self.config)
        self.latent_dim = int(self.model.cfg.latent_dim)
        self.version = {"model": self.config.get("model", "tinyvae"), "version": self.config.get("version"),
                        "latent_dim": self.latent_dim, "image_size": self.model.cfg.image_size,
                        "vq_codes": self.quantizer.cfg.num_codes if self.quantizer else None}

    def encode(self, pixels: list[np.ndarray], entity_ids: list[str]) -> list[dict]:
        """(64, 64, 3) uint8 crops -> one ``{latent, codes, trust}`` dict each."""
        import torch

        from learner.vae.trust import wrap

        x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
        out = []
        for t in wrap(self.model, x, entity_ids, self.calib, self.version["version"],
                      self.version["model"], quantizer=self.quantizer):
            meta = asdict(t)
            latent, codes = list(meta.pop("latent")), meta.pop("tokens")
            out.append({"latent": latent, "codes": list(codes) if codes is not None else None, "trust": meta})
        return out

    def decode(self, latents: list[list[float]]) -> list[bytes]:
        """(B, latent_dim) latents -> B PNG files of the decoded crops."""
        import torch

        with torch.no_grad():
            x = self.model.decode(torch.tensor(latents, dtype=torch.float32))  # (B, 3, H, W)
        pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [png_bytes(p) for p in pixels]
