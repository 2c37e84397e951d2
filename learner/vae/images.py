"""Image data for TinyVAE: 64x64 RGB crops cut from real photographs that install offline.

Where the photographs come from, and how near-duplicates are dropped, is
``learner/vae/sources.py``. Here they are split and cut:

- **splits by source, never by crop**: one origin (``HELDOUT_ORIGIN``, a whole Debian
  package) is held out entirely for test (``heldout``) and another (``VAL_ORIGIN``) entirely
  for validation (``val``, for choosing settings); the other sources are split by *source
  group* (a photograph together with its near-duplicates, e.g. a stereo pair) into
  ``train``, ``test`` and, with ``val_fraction > 0``, more ``val``, so no evaluated crop
  shares pixels with a training crop;
- **training crops are augmented at cut time**: each is cut at a random scale (a window of
  up to ``max_scale`` times the side, resized down) and stored with ``context`` pixels of
  margin on each side (80x80), so training can take two shifted 64x64 views of one scene;
  flips and colour jitter are applied per batch by the trainer;
- **evaluated crops** are 64x64 at the photographs' own scale, plus, per split, pairs of
  crops shifted by 2, 4, 8 and 16 pixels (:data:`SHIFTS`) and, on ``test``, pairs of views
  (:data:`VIEW_KINDS`) for the cross-view agreement test.

A crop set is one ``crops.npz`` (uint8 arrays) plus ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learner.vae.sources import (  # noqa: F401  (re-exported: the crop set's one import point)
    CROP, HELDOUT_ORIGIN, VAL_ORIGIN, Source, apt_sources, dedupe, fetch_apt_packages, gather_sources,
    group_key, skimage_sources)

VIEW_KINDS = ("shift", "photometric", "noise", "camera")
SHIFTS = (2, 4, 8, 16)
EVAL_SPLITS = ("val", "test", "heldout")
DERIVED = ("train_crops",)  # recomputed from train_wide on load, not stored


@dataclass(frozen=True)
class CropSetConfig:
    """How a crop set is cut. Every field is recorded in the manifest."""

    crops_per_source: int = 300
    """Crops cut at random positions from each source photograph (every split)."""
    test_fraction: float = 0.15
    """Share of source groups (outside the held-out origin) kept for test (at least one group)."""
    val_fraction: float = 0.0
    """Share of source groups kept for validation besides ``val_origin`` (0 = none)."""
    heldout_origin: str = HELDOUT_ORIGIN
    """Origin whose every photograph is held out for test ("" = none)."""
    val_origin: str = VAL_ORIGIN
    """Origin whose every photograph is held out for validation ("" = none). Its groups still
    take part in the seeded group order, so the per-group test split is the one a crop set
    without it would have, less this origin's photographs."""
    max_side: int = 512
    """Sources are downscaled so that their shorter side is at most this many pixels."""
    min_std: float = 0.02
    """Crops whose pixel standard deviation (in [0, 1]) is below this are re-drawn."""
    context: int = 8
    """Margin around each training crop, in pixels: stored crops are 64 + 2 * context wide, so
    two 64x64 views of one stored crop are up to 2 * context pixels apart."""
    scale_prob: float = 0.5
    """Share of training crops cut at a random scale instead of the photograph's own."""
    max_scale: float = 2.0
    """Largest scale: a window up to this many times the stored side, resized down (log-uniform)."""
    dedupe_share: float = 0.10
    """Images whose difference hashes differ in at most this share of bits are near-duplicates
    (-1 = keep all). Measured on these sources: a true duplicate pair differs in 2% of bits,
    the closest distinct photographs in 22%."""
    view_pairs: int = 512
    """Pairs of views of the same test crop for the cross-view agreement test."""
    shift_pairs: int = 256
    """Pairs of shifted crops per shift in SHIFTS, per evaluated split."""
    seed: int = 0
    """Seed for crop positions, scales, the split and the view transforms."""

    def __post_init__(self) -> None:
        if self.crops_per_source < 1:
            raise ValueError(f"crops_per_source must be >= 1, got {self.crops_per_source}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0 or self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1) and leave groups for training, got "
                             f"{self.val_fraction} with test_fraction {self.test_fraction}")
        if self.max_side < CROP + 2 * max(SHIFTS):
            raise ValueError(f"max_side must be >= {CROP + 2 * max(SHIFTS)} to leave room for shifted "
                             f"crops, got {self.max_side}")
        if not 0.0 <= self.min_std < 0.5:
            raise ValueError(f"min_std must be in [0, 0.5), got {self.min_std}")
        if self.context < 0 or not 0.0 <= self.scale_prob <= 1.0 or self.max_scale < 1.0:
            raise ValueError(f"context must be >= 0, scale_prob in [0, 1] and max_scale >= 1, got "
                             f"{self.context}, {self.scale_prob}, {self.max_scale}")
        if self.view_pairs < 0 or self.shift_pairs < 0:
            raise ValueError(f"view_pairs and shift_pairs must be >= 0, got {self.view_pairs}, "
                             f"{self.shift_pairs}")

    @property
    def wide(self) -> int:
        """Side of a stored training crop."""
        return CROP + 2 * self.context


def downscale(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the shorter side is at most ``max_side`` (Lanczos); never upscale."""
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = max_side / min(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(CROP, round(w * scale)), max(CROP, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS))


# ---------------------------------------------------------------- splitting


def split_groups(groups: list[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out test groups: a seeded hash order, ``ceil(fraction * n)`` of them, at least 1."""
    return {g for g, s in assign_splits(groups, test_fraction, 0.0, seed).items() if s == "test"}


def assign_splits(groups: list[str], test_fraction: float, val_fraction: float, seed: int) -> dict[str, str]:
    """``group -> train | val | test``: in a seeded hash order, the first ``ceil(test_fraction * n)``
    groups (at least 1) are test, the next ``ceil(val_fraction * n)`` val, the rest train."""
    uniq = sorted(set(groups))
    order = sorted(uniq, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_test = max(1, int(np.ceil(test_fraction * len(uniq))))
    n_val = int(np.ceil(val_fraction * len(uniq)))
    if n_test + n_val >= len(uniq):
        raise ValueError(f"need at least {n_test + n_val + 1} source groups to split train/val/test, "
                         f"got {len(uniq)}" if n_val else
                         f"need at least 2 source groups to split train/test, got {len(uniq)}")
    return {g: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, g in enumerate(order)}


# ---------------------------------------------------------------- cutting


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


def wide_crops(pixels: np.ndarray, n: int, cfg: CropSetConfig, rng: np.random.Generator) -> np.ndarray:
    """``n`` training crops ``(n, wide, wide, 3)`` uint8: with probability ``scale_prob`` a window of
    ``wide * s`` pixels (s log-uniform in [1, max_scale]) resized to ``wide``, else ``wide`` as is.
    A crop whose central 64x64 is flatter than ``min_std`` is re-drawn (up to 20 times)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    side, c = cfg.wide, cfg.context
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        for _ in range(20):
            s = float(np.exp(rng.uniform(0, np.log(cfg.max_scale)))) if rng.random() < cfg.scale_prob else 1.0
            win = min(round(side * s), h, w)
            y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
            crop = pixels[y:y + win, x:x + win]
            if win != side:
                crop = np.asarray(Image.fromarray(crop).resize((side, side), Image.LANCZOS))
            if crop[c:c + CROP, c:c + CROP].std() / 255.0 >= cfg.min_std:
                break
        out[i] = crop
    return out


def shift_pairs(pixels: np.ndarray, n: int, shift: int, rng: np.random.Generator,
                min_std: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of 64x64 crops of one scene, the second moved ``shift`` pixels left, right, up
    or down. Returns two ``(n, 64, 64, 3)`` uint8 arrays."""
    a, corners = random_crops(pixels, n, rng, min_std, margin=max(SHIFTS))
    steps = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)]) * shift
    b = np.empty_like(a)
    for i, (y, x) in enumerate(corners):
        dy, dx = steps[rng.integers(4)]
        b[i] = pixels[y + dy:y + dy + CROP, x + dx:x + dx + CROP]
    return a, b


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


def source_splits(sources: list[Source], cfg: CropSetConfig) -> list[str]:
    """The split of each source: ``heldout`` / ``val`` for the held-out / validation origin,
    else by its group."""
    rest = [s.group for s in sources if s.origin != cfg.heldout_origin]
    by_group = assign_splits(rest, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    whole = {cfg.heldout_origin: "heldout", cfg.val_origin: "val"}
    whole.pop("", None)
    return [whole.get(s.origin) or by_group[s.group] for s in sources]


def build_crop_set(sources: list[Source], cfg: CropSetConfig) -> tuple[dict, dict]:
    """Dedupe, split and cut; return ``(arrays, manifest)`` ready for :func:`save_crop_set`."""
    rng = np.random.default_rng(cfg.seed)
    first = (cfg.heldout_origin, cfg.val_origin)
    sources, dropped = (dedupe(sources, cfg.dedupe_share, first) if cfg.dedupe_share >= 0
                        else (sources, []))
    splits = source_splits(sources, cfg)
    parts: dict[str, tuple[list, list]] = {k: ([], []) for k in ("train",) + EVAL_SPLITS}
    rows, pix = [], {k: [] for k in EVAL_SPLITS}
    for idx, (src, split) in enumerate(zip(sources, splits)):
        pixels = downscale(src.pixels, cfg.max_side)
        if split == "train":
            crops = wide_crops(pixels, cfg.crops_per_source, cfg, rng)
        else:
            crops = random_crops(pixels, cfg.crops_per_source, rng, cfg.min_std)[0]
            pix[split].append((idx, pixels))
        parts[split][0].append(crops)
        parts[split][1].append(np.full(len(crops), idx, np.int32))
        rows.append({"name": src.name, "group": src.group, "origin": src.origin, "split": split,
                     "height": pixels.shape[0], "width": pixels.shape[1], "crops": len(crops)})
    shapes = {"train": (cfg.wide, cfg.wide, 3)}
    arrays = {}
    for k, (crops, idx) in parts.items():
        name = "train_wide" if k == "train" else f"{k}_crops"
        arrays[name] = np.concatenate(crops) if crops else np.empty((0, *shapes.get(k, (CROP, CROP, 3))), np.uint8)
        arrays[f"{k}_source"] = np.concatenate(idx) if idx else np.empty(0, np.int32)
        if k in EVAL_SPLITS:
            arrays.update(_shift_set(k, pix[k], cfg, rng))
    arrays.update(_view_pairs(pix["test"], cfg, rng))
    add_derived(arrays, cfg.context)
    manifest = {"config": dataclasses.asdict(cfg), "crop": CROP, "sources": rows, "duplicates": dropped,
                "test_groups": sorted({s.group for s, k in zip(sources, splits) if k == "test"}),
                "val_groups": sorted({s.group for s, k in zip(sources, splits) if k == "val"}),
                "view_kinds": list(VIEW_KINDS), "shifts": list(SHIFTS),
                "counts": {k: int(len(arrays[f"{k}_source"])) for k in parts},
                "by_origin": counts_by_origin(rows)}
    return arrays, manifest


def counts_by_origin(rows: list[dict]) -> dict[str, dict[str, list[int]]]:
    """``origin -> split -> [photographs, crops]`` from the manifest's source rows."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        cell = out.setdefault(r["origin"].split(".")[0] if r["origin"].startswith("skimage") else r["origin"],
                              {}).setdefault(r["split"], [0, 0])
        cell[0] += 1
        cell[1] += r["crops"]
    return out


def add_derived(arrays: dict, context: int) -> None:
    """``train_crops``: the central 64x64 of every stored training crop (a view, no copy)."""
    c = context
    arrays["train_crops"] = arrays["train_wide"][:, c:c + CROP, c:c + CROP]


def _shift_set(split: str, pix: list[tuple[int, np.ndarray]], cfg: CropSetConfig,
               rng: np.random.Generator) -> dict:
    a, b, px, srcs = [], [], [], []
    for shift in SHIFTS:
        for i in range(cfg.shift_pairs if pix else 0):
            idx, pixels = pix[i % len(pix)]
            pa, pb = shift_pairs(pixels, 1, shift, rng, cfg.min_std)
            a.append(pa[0]), b.append(pb[0]), px.append(shift), srcs.append(idx)
    empty = np.empty((0, CROP, CROP, 3), np.uint8)
    return {f"{split}_shift_a": np.stack(a) if a else empty, f"{split}_shift_b": np.stack(b) if b else empty,
            f"{split}_shift_px": np.asarray(px, np.int16), f"{split}_shift_source": np.asarray(srcs, np.int32)}


def _view_pairs(test_pix: list[tuple[int, np.ndarray]], cfg: CropSetConfig,
                rng: np.random.Generator) -> dict:
    a, b, kinds, srcs = [], [], [], []
    for i in range(cfg.view_pairs if test_pix else 0):
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
    np.savez_compressed(out / "crops.npz", **{k: v for k, v in arrays.items() if k not in DERIVED})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_crop_set(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays (``train_wide``, ``train_crops``, ``test_crops``, ``heldout_shift_a``, ...) and the
    manifest of a crop set."""
    path = Path(path)
    if not (path / "crops.npz").exists():
        raise FileNotFoundError(f"no crop set at {path}: build one with `tinycompress vae data --out {path}`")
    manifest = json.loads((path / "manifest.json").read_text())
    if "train_wide" not in np.load(path / "crops.npz").files:
        raise ValueError(f"{path} is a crop set of an older layout (no train_wide): rebuild it with "
                         f"`tinycompress vae data --out {path}`")
    with np.load(path / "crops.npz") as z:
        arrays = {k: z[k] for k in z.files}
    add_derived(arrays, manifest["config"]["context"])
    return arrays, manifest
