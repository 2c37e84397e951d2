"""Image data for TinyVAE: 64x64 RGB crops cut from real photographs that install offline.

Sources (no hub, no torchvision):

- scikit-image's bundled photographs (``skimage.data``; always available, used by tests);
- the example photographs in Debian's ``opencv-doc`` package;
- the wallpapers in Debian's ``plasma-workspace-wallpapers`` package.

The two Debian packages are fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` into a cache folder. Train and test are split by *source group* (a
photograph together with its near-duplicates, e.g. a stereo pair), never by crop, so no
test crop shares pixels with a training crop.

A crop set is one ``crops.npz`` (uint8 arrays, ``(N, 64, 64, 3)``) plus ``manifest.json``.
For the cross-view agreement test it also holds pairs of views of the same test crop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CROP = 64
APT_PACKAGES = ("opencv-doc", "plasma-workspace-wallpapers")
VIEW_KINDS = ("shift", "photometric", "noise", "camera")

# skimage.data photographs (grey ones are replicated to RGB); `cat` duplicates `chelsea`
SKIMAGE_COLOUR = ("astronaut", "chelsea", "coffee", "hubble_deep_field",
                  "immunohistochemistry", "retina", "rocket", "motorcycle")
SKIMAGE_GREY = ("camera", "moon", "coins", "clock", "brick", "grass", "gravel")


@dataclass(frozen=True)
class CropSetConfig:
    """How a crop set is cut. Every field is recorded in the manifest."""

    crops_per_source: int = 300
    """Training/test crops cut at random positions from each source photograph."""
    test_fraction: float = 0.15
    """Share of source groups held out for test (at least one group)."""
    max_side: int = 512
    """Sources are downscaled so that their shorter side is at most this many pixels."""
    min_std: float = 0.02
    """Crops whose pixel standard deviation (in [0, 1]) is below this are re-drawn."""
    view_pairs: int = 512
    """Pairs of views of the same test crop for the cross-view agreement test."""
    seed: int = 0
    """Seed for crop positions, the split and the view transforms."""

    def __post_init__(self) -> None:
        if self.crops_per_source < 1:
            raise ValueError(f"crops_per_source must be >= 1, got {self.crops_per_source}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.max_side < CROP + 16:
            raise ValueError(f"max_side must be >= {CROP + 16} to leave room for shifted views, "
                             f"got {self.max_side}")
        if not 0.0 <= self.min_std < 0.5:
            raise ValueError(f"min_std must be in [0, 0.5), got {self.min_std}")
        if self.view_pairs < 0:
            raise ValueError(f"view_pairs must be >= 0, got {self.view_pairs}")


@dataclass(frozen=True)
class Source:
    """One photograph: a name, the group it splits with, and its pixels."""

    name: str
    group: str
    origin: str
    pixels: np.ndarray  # (H, W, 3) uint8


# ---------------------------------------------------------------- sources


def skimage_sources() -> list[Source]:
    """scikit-image's bundled photographs, each its own group."""
    import skimage.data as sd

    out = []
    for name in SKIMAGE_COLOUR + SKIMAGE_GREY:
        img = sd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(sd, name)()
        out.append(Source(name, name, f"skimage.data.{name}", _as_rgb(img)))
    return out


def fetch_apt_images(cache: Path) -> Path:
    """Download and unpack the Debian image packages into ``cache``; return the unpacked root.

    Raises ``RuntimeError`` with the failing command when apt is not usable.
    """
    root = cache / "root"
    if (cache / ".unpacked").exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get/dpkg-deb not found: extra photographs need a Debian/Ubuntu host")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", *APT_PACKAGES]
    res = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (try `apt-get update`): {res.stderr.strip()[-500:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (cache / ".unpacked").touch()
    return root


def apt_sources(root: Path) -> list[Source]:
    """Colour photographs from the unpacked ``opencv-doc`` examples and the KDE wallpapers."""
    from PIL import Image

    out = []
    for path in sorted((root / "usr/share/doc/opencv-doc/examples").rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        with Image.open(path) as im:
            if im.mode != "RGB" or min(im.size) < 2 * CROP:  # masks, logos, diagrams, glyphs
                continue
            pixels = np.asarray(im)
        stem = path.stem
        out.append(Source(f"opencv/{path.parent.name}/{stem}", f"opencv/{_group_key(stem)}",
                          "apt:opencv-doc", pixels))
    for wall in sorted((root / "usr/share/wallpapers").glob("*/contents/images")):
        biggest = max(wall.iterdir(), key=lambda p: p.stat().st_size)
        with Image.open(biggest) as im:
            pixels = np.asarray(im.convert("RGB"))
        name = f"wallpaper/{wall.parent.parent.name}"
        out.append(Source(name, name, "apt:plasma-workspace-wallpapers", pixels))
    return out


def _group_key(stem: str) -> str:
    """Near-duplicates share a key: ``aloeL``/``aloeR``, ``graf1``/``graf3``, ``left``/``right``."""
    key = re.sub(r"(\d+|[LRAB])$", "", stem)
    key = re.sub(r"_(modified|original)$", "", key).rstrip("_")
    return {"right": "left", "": "numbered"}.get(key, key)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)  # (H, W, 3)


def downscale(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the shorter side is at most ``max_side`` (Lanczos); never upscale."""
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = max_side / min(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(CROP, round(w * scale)), max(CROP, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS))


# ---------------------------------------------------------------- splitting and cutting


def split_groups(groups: list[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out test groups: a seeded hash order, ``ceil(fraction * n)`` of them, at least 1."""
    uniq = sorted(set(groups))
    order = sorted(uniq, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_test = max(1, int(np.ceil(test_fraction * len(uniq))))
    if n_test >= len(uniq):
        raise ValueError(f"need at least 2 source groups to split train/test, got {len(uniq)}")
    return set(order[:n_test])


def random_crops(pixels: np.ndarray, n: int, rng: np.random.Generator, min_std: float,
                 margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops at random positions (re-drawn up to 20 times while flatter than ``min_std``).

    Returns crops ``(n, 64, 64, 3)`` uint8 and their top-left corners ``(n, 2)``.
    """
    h, w = pixels.shape[:2]
    crops = np.empty((n, CROP, CROP, 3), np.uint8)
    corners = np.empty((n, 2), np.int64)
    for i in range(n):
        for _ in range(20):
            y = int(rng.integers(margin, h - CROP - margin + 1))
            x = int(rng.integers(margin, w - CROP - margin + 1))
            crop = pixels[y:y + CROP, x:x + CROP]
            if crop.std() / 255.0 >= min_std:
                break
        crops[i], corners[i] = crop, (y, x)
    return crops, corners


def make_view(pixels: np.ndarray, corner: tuple[int, int], kind: str,
              rng: np.random.Generator) -> np.ndarray:
    """A second view of the crop at ``corner``: one of ``VIEW_KINDS``. Returns (64, 64, 3) uint8.

    shift: the crop moved by 1-4 pixels in the source; photometric: contrast x[0.8, 1.2] and
    brightness +-0.1; noise: Gaussian, sigma 0.03; camera: a second "camera" with its own
    white balance (channel gains 0.9-1.1), gamma (0.8-1.25) and a slight blur.
    """
    y, x = corner
    if kind == "shift":
        dy, dx = 0, 0
        while dy == 0 and dx == 0:
            dy, dx = (int(v) for v in rng.integers(-4, 5, size=2))
        return pixels[y + dy:y + dy + CROP, x + dx:x + dx + CROP].copy()
    v = pixels[y:y + CROP, x:x + CROP].astype(np.float32) / 255.0  # (64, 64, 3)
    if kind == "photometric":
        mean = v.mean()
        v = rng.uniform(0.8, 1.2) * (v - mean) + mean + rng.uniform(-0.1, 0.1)
    elif kind == "noise":
        v = v + rng.normal(0.0, 0.03, v.shape)
    elif kind == "camera":
        from scipy.ndimage import gaussian_filter

        v = np.clip(v * rng.uniform(0.9, 1.1, size=3), 0, 1) ** rng.uniform(0.8, 1.25)
        v = gaussian_filter(v, sigma=(0.7, 0.7, 0))
    else:
        raise ValueError(f"unknown view kind {kind!r}; expected one of {VIEW_KINDS}")
    return (np.clip(v, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- the crop set


def build_crop_set(sources: list[Source], cfg: CropSetConfig) -> tuple[dict, dict]:
    """Cut crops and view pairs; return ``(arrays, manifest)`` ready for :func:`save_crop_set`."""
    rng = np.random.default_rng(cfg.seed)
    test_groups = split_groups([s.group for s in sources], cfg.test_fraction, cfg.seed)
    parts = {"train": ([], []), "test": ([], [])}
    rows, test_pix = [], []
    for idx, src in enumerate(sources):
        pixels = downscale(src.pixels, cfg.max_side)
        split = "test" if src.group in test_groups else "train"
        crops, _ = random_crops(pixels, cfg.crops_per_source, rng, cfg.min_std)
        parts[split][0].append(crops)
        parts[split][1].append(np.full(len(crops), idx, np.int32))
        if split == "test":
            test_pix.append((idx, pixels))
        rows.append({"name": src.name, "group": src.group, "origin": src.origin, "split": split,
                     "height": pixels.shape[0], "width": pixels.shape[1], "crops": len(crops)})
    arrays = {f"{k}_{n}": np.concatenate(v[i]) for k, v in parts.items()
              for i, n in enumerate(("crops", "source"))}
    arrays.update(_view_pairs(test_pix, cfg, rng))
    manifest = {"config": dataclasses.asdict(cfg), "crop": CROP, "sources": rows,
                "test_groups": sorted(test_groups), "view_kinds": list(VIEW_KINDS),
                "counts": {k: int(len(arrays[f"{k}_crops"])) for k in ("train", "test")}}
    return arrays, manifest


def _view_pairs(test_pix: list[tuple[int, np.ndarray]], cfg: CropSetConfig,
                rng: np.random.Generator) -> dict:
    a, b, kinds, srcs = [], [], [], []
    for i in range(cfg.view_pairs):
        idx, pixels = test_pix[i % len(test_pix)]
        crop, corner = random_crops(pixels, 1, rng, cfg.min_std, margin=4)
        k = i % len(VIEW_KINDS)
        a.append(crop[0])
        b.append(make_view(pixels, tuple(corner[0]), VIEW_KINDS[k], rng))
        kinds.append(k)
        srcs.append(idx)
    empty = np.empty((0, CROP, CROP, 3), np.uint8)
    return {"views_a": np.stack(a) if a else empty, "views_b": np.stack(b) if b else empty,
            "views_kind": np.asarray(kinds, np.int8), "views_source": np.asarray(srcs, np.int32)}


def save_crop_set(out: Path, arrays: dict, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "crops.npz", **arrays)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_crop_set(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays (``train_crops``, ``test_crops``, ``views_a``, ...) and the manifest of a crop set."""
    path = Path(path)
    if not (path / "crops.npz").exists():
        raise FileNotFoundError(f"no crop set at {path}: build one with `tinycompress vae data --out {path}`")
    with np.load(path / "crops.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((path / "manifest.json").read_text())


def gather_sources(use_apt: bool, cache: Path) -> list[Source]:
    """scikit-image photographs, plus the apt packages' when ``use_apt`` (warns and falls back)."""
    sources = skimage_sources()
    if use_apt:
        try:
            sources += apt_sources(fetch_apt_images(cache))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            warnings.warn(f"extra photographs unavailable ({err}); using scikit-image's alone",
                          stacklevel=2)
    return sources
