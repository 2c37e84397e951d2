"""Photographs for TinyVAE's crops: where they come from, and near-duplicate removal.

Sources (no hub, no torchvision), each recorded with its origin:

- scikit-image's bundled photographs (``skimage.data``; always available, used by tests);
- Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``, one
  folder per package (:data:`APT_PACKAGES` says what is taken from each): the example
  photographs of ``opencv-doc``, the KDE wallpapers of ``plasma-workspace-wallpapers``, the
  nature photographs of ``mate-backgrounds``, and the photographs of the Ubuntu wallpaper
  contests shipped by ``lomiri-wallpapers-20.04`` and ``lomiri-wallpapers-16.04``.

Near-identical images (the same picture at two sizes, two frames of one sequence) are found
by a difference hash (Krawetz's dHash: the signs of brightness steps between neighbours on a
small grey thumbnail, here horizontal and vertical on 17x17, 512 bits) and all but the first
are dropped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CROP = 64
# package -> photographs taken from it (a glob under the unpacked package, or a list of files)
APT_PACKAGES = {
    "opencv-doc": "usr/share/doc/opencv-doc/examples/**/*",
    "plasma-workspace-wallpapers": "usr/share/wallpapers/*/contents/images",
    "mate-backgrounds": "usr/share/backgrounds/mate/nature/*.jpg",
    # the other two pictures of this package are drawings, not photographs
    "lomiri-wallpapers-20.04": ("usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg",
                                "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
    "lomiri-wallpapers-16.04": "usr/share/backgrounds/*.jpg",
}
HELDOUT_ORIGIN = "apt:lomiri-wallpapers-16.04"
"""The source held out entirely for test: 15 photographs by ten photographers, none trained on."""
VAL_ORIGIN = "apt:mate-backgrounds"
"""The source held out entirely for validation (choosing settings and the model to ship): 12
nature photographs, none trained on."""

# skimage.data photographs (grey ones are replicated to RGB); `cat` duplicates `chelsea`
SKIMAGE_COLOUR = ("astronaut", "chelsea", "coffee", "hubble_deep_field",
                  "immunohistochemistry", "retina", "rocket", "motorcycle")
SKIMAGE_GREY = ("camera", "moon", "coins", "clock", "brick", "grass", "gravel")


@dataclass(frozen=True)
class Source:
    """One photograph: a name, the group it splits with, where it came from, and its pixels."""

    name: str
    group: str
    origin: str
    pixels: np.ndarray  # (H, W, 3) uint8


def skimage_sources() -> list[Source]:
    """scikit-image's bundled photographs, each its own group."""
    import skimage.data as sd

    out = []
    for name in SKIMAGE_COLOUR + SKIMAGE_GREY:
        img = sd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(sd, name)()
        out.append(Source(name, name, f"skimage.data.{name}", as_rgb(img)))
    return out


def fetch_apt_packages(cache: Path, packages=tuple(APT_PACKAGES)) -> dict[str, Path]:
    """Download and unpack each Debian package into ``cache/<package>``; return those unpacked.

    A package already unpacked there is not fetched again. A package that cannot be fetched
    is skipped with a warning naming the failing command; no apt at all raises ``RuntimeError``.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get/dpkg-deb not found: extra photographs need a Debian/Ubuntu host")
    roots = {}
    for pkg in packages:
        root = Path(cache) / pkg
        if not (root / ".unpacked").exists():
            debs = Path(cache) / "debs"
            debs.mkdir(parents=True, exist_ok=True)
            cmd = ["apt-get", "download", pkg]
            res = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if res.returncode != 0 or not found:
                warnings.warn(f"`{' '.join(cmd)}` failed (try `apt-get update`): "
                              f"{res.stderr.strip()[-300:]}", stacklevel=2)
                continue
            subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
            (root / ".unpacked").touch()
        roots[pkg] = root
    return roots


def apt_sources(roots: dict[str, Path]) -> list[Source]:
    """The photographs of each unpacked package (see :data:`APT_PACKAGES`)."""
    out = []
    for pkg, root in roots.items():
        origin = f"apt:{pkg}"
        if pkg == "opencv-doc":
            out += _opencv(root, origin)
        elif pkg == "plasma-workspace-wallpapers":
            for wall in sorted(root.glob(APT_PACKAGES[pkg])):
                biggest = max(wall.iterdir(), key=lambda p: p.stat().st_size)  # one size each
                name = f"wallpaper/{wall.parent.parent.name}"
                out.append(Source(name, name, origin, _read(biggest)))
        else:
            spec = APT_PACKAGES[pkg]
            paths = sorted(root.glob(spec)) if isinstance(spec, str) else [root / p for p in spec]
            for path in paths:
                name = f"{pkg}/{path.stem}"
                out.append(Source(name, name, origin, _read(path)))
    return out


def _opencv(root: Path, origin: str) -> list[Source]:
    from PIL import Image

    out = []
    for path in sorted(root.glob(APT_PACKAGES["opencv-doc"])):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        with Image.open(path) as im:
            if im.mode != "RGB" or min(im.size) < 2 * CROP:  # masks, logos, diagrams, glyphs
                continue
            pixels = np.asarray(im)
        stem = path.stem
        out.append(Source(f"opencv/{path.parent.name}/{stem}", f"opencv/{group_key(stem)}", origin, pixels))
    return out


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the packages' own wallpapers, up to 5640x3172
    with Image.open(path) as im:
        im.draft("RGB", (2048, 2048))  # JPEG: decode at a reduced size where that suffices
        return np.asarray(im.convert("RGB"))


def group_key(stem: str) -> str:
    """Near-duplicates share a key: ``aloeL``/``aloeR``, ``graf1``/``graf3``, ``left``/``right``."""
    key = re.sub(r"(\d+|[LRAB])$", "", stem)
    key = re.sub(r"_(modified|original)$", "", key).rstrip("_")
    return {"right": "left", "": "numbered"}.get(key, key)


def as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)  # (H, W, 3)


# ---------------------------------------------------------------- near-duplicates


def dhash(pixels: np.ndarray, side: int = 16) -> np.ndarray:
    """Difference hash, both directions: the signs of the horizontal and vertical brightness
    steps on a (side+1)x(side+1) grey thumbnail, as ``2 * side**2`` booleans."""
    from PIL import Image

    grey = np.asarray(Image.fromarray(pixels).convert("L").resize((side + 1, side + 1), Image.LANCZOS),
                      np.int16)
    return np.concatenate([(grey[:-1, 1:] > grey[:-1, :-1]).ravel(), (grey[1:, :-1] > grey[:-1, :-1]).ravel()])


def dedupe(sources: list[Source], max_share: float, first: tuple[str, ...] = (HELDOUT_ORIGIN, VAL_ORIGIN)
           ) -> tuple[list[Source], list[dict]]:
    """Drop images whose difference hash differs from an earlier one's in at most ``max_share``
    of its bits.

    Sources of the origins ``first`` are looked at first, in that order, so a held-out
    photograph is never the one dropped for a training copy. Returns the kept sources (in their given order) and one
    ``{name, duplicate_of, share}`` row per dropped image.
    """
    rank = {origin: r for r, origin in enumerate(first)}
    order = sorted(range(len(sources)), key=lambda i: rank.get(sources[i].origin, len(rank)))
    kept: list[tuple[int, np.ndarray]] = []  # (index, hash)
    dropped = []
    for i in order:
        h = dhash(sources[i].pixels)
        share, k = min(((float((h != hk).mean()), k) for k, hk in kept), default=(1.0, -1))
        if share <= max_share:
            dropped.append({"name": sources[i].name, "duplicate_of": sources[k].name, "share": round(share, 4)})
        else:
            kept.append((i, h))
    keep = sorted(i for i, _ in kept)
    return [sources[i] for i in keep], dropped


def gather_sources(use_apt: bool, cache: Path) -> list[Source]:
    """scikit-image photographs, plus the apt packages' when ``use_apt`` (warns and falls back)."""
    sources = skimage_sources()
    if use_apt:
        try:
            sources += apt_sources(fetch_apt_packages(cache))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            warnings.warn(f"extra photographs unavailable ({err}); using scikit-image's alone",
                          stacklevel=2)
    return sources
