"""learner/vae/images.py and sources.py: crops, the splits by source, dedupe, shifted pairs and
views. scikit-image photographs and small synthetic images only (no apt)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.vae import images as im
from learner.vae import sources as srcmod


@pytest.fixture(scope="module")
def sources():
    return im.skimage_sources()


@pytest.fixture(scope="module")
def crop_set(sources):
    return im.build_crop_set(sources, im.CropSetConfig(crops_per_source=6, view_pairs=8, shift_pairs=4, seed=3,
                                                       val_fraction=0.1))


def test_sources_are_rgb_uint8(sources):
    assert len(sources) >= 10
    for s in sources:
        assert s.pixels.ndim == 3 and s.pixels.shape[2] == 3 and s.pixels.dtype == np.uint8


def test_split_is_by_source_never_by_crop(crop_set):
    arrays, manifest = crop_set
    by_split = {k: set(arrays[f"{k}_source"]) for k in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["test"] or by_split["train"] & by_split["val"]
                or by_split["val"] & by_split["test"])
    groups = {k: {r["group"] for r in manifest["sources"] if r["split"] == k} for k in by_split}
    assert not (groups["train"] & groups["test"] or groups["train"] & groups["val"])
    assert groups["test"] == set(manifest["test_groups"]) and groups["val"] == set(manifest["val_groups"])
    assert set(arrays["views_source"]) <= by_split["test"]
    for k in ("val", "test"):
        assert set(arrays[f"{k}_shift_source"]) <= by_split[k]


def test_crops_shape_dtype_and_counts(crop_set):
    arrays, manifest = crop_set
    for key in ("train_crops", "val_crops", "test_crops", "views_a", "views_b", "test_shift_a", "test_shift_b"):
        assert arrays[key].shape[1:] == (64, 64, 3) and arrays[key].dtype == np.uint8
    assert arrays["train_wide"].shape[1:] == (80, 80, 3)
    # the 64x64 training crops are the centres of the stored 80x80 ones
    assert np.array_equal(arrays["train_crops"], arrays["train_wide"][:, 8:72, 8:72])
    assert sum(manifest["counts"].values()) == 6 * len(manifest["sources"])
    assert sorted(set(arrays["test_shift_px"])) == list(im.SHIFTS)
    cells = manifest["by_origin"]["skimage"]
    assert sum(c[0] for c in cells.values()) == len(manifest["sources"])


def _gradient_source(name: str, origin: str, seed: int, size: int = 200) -> im.Source:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    return im.Source(name, name, origin, pixels)


def test_the_heldout_origin_is_held_out_whole_and_never_trained_on():
    sources = [_gradient_source(f"a{i}", "apt:keep", i) for i in range(8)]
    sources += [_gradient_source(f"h{i}", "apt:held", 100 + i) for i in range(3)]
    cfg = im.CropSetConfig(crops_per_source=4, view_pairs=4, shift_pairs=2, heldout_origin="apt:held")
    arrays, manifest = im.build_crop_set(sources, cfg)
    held = {r["name"] for r in manifest["sources"] if r["split"] == "heldout"}
    assert held == {"h0", "h1", "h2"}
    assert manifest["counts"]["heldout"] == 12 and len(arrays["heldout_shift_a"]) == 2 * len(im.SHIFTS)
    held_idx = {i for i, r in enumerate(manifest["sources"]) if r["split"] == "heldout"}
    assert not held_idx & set(arrays["train_source"]) and set(arrays["heldout_source"]) == held_idx


def test_the_val_origin_is_val_whole_and_leaves_the_test_groups_as_they_were():
    sources = [_gradient_source(f"a{i}", "apt:keep", i) for i in range(12)]
    sources += [_gradient_source(f"v{i}", "apt:val", 100 + i) for i in range(4)]
    cfg = im.CropSetConfig(crops_per_source=2, view_pairs=2, shift_pairs=1, heldout_origin="", val_origin="apt:val")
    splits = dict(zip([s.name for s in sources], im.source_splits(sources, cfg)))
    assert {n for n, k in splits.items() if k == "val"} == {f"v{i}" for i in range(4)}
    plain = dict(zip([s.name for s in sources], im.source_splits(sources, im.CropSetConfig(heldout_origin="",
                                                                                           val_origin=""))))
    assert {n for n, k in splits.items() if k == "test"} == {n for n, k in plain.items()
                                                            if k == "test" and not n.startswith("v")}


def test_dedupe_drops_a_resized_copy_and_keeps_the_heldout_one():
    a = _gradient_source("train/a", "apt:keep", 1)
    copy = im.Source("held/a", "held/a", "apt:held", im.downscale(a.pixels, 150))
    other = _gradient_source("train/b", "apt:keep", 2)
    kept, dropped = srcmod.dedupe([a, other, copy], 0.10, first=("apt:held",))
    assert [s.name for s in kept] == ["train/b", "held/a"]
    assert dropped[0]["name"] == "train/a" and dropped[0]["duplicate_of"] == "held/a"


def test_shift_pairs_are_one_scene_moved_by_exactly_the_shift():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:160, 0:160]
    pixels = np.stack([yy, xx, (yy * 7 + xx * 3) % 256], -1).astype(np.uint8)  # position-coded
    for shift in im.SHIFTS:
        a, b = im.shift_pairs(pixels, 5, shift, rng, min_std=0.0)
        moved = np.abs(b[:, 0, 0, :2].astype(int) - a[:, 0, 0, :2].astype(int))  # (dy, dx) per pair
        assert (np.sort(moved, 1) == [0, shift]).all()


def test_wide_training_crops_are_cut_at_scales_up_to_max_scale():
    yy, xx = np.mgrid[0:250, 0:250]
    pixels = np.stack([yy, xx, xx], -1).astype(np.uint8)
    rng = np.random.default_rng(1)
    one = im.wide_crops(pixels, 4, im.CropSetConfig(scale_prob=0.0, min_std=0.0), rng)
    assert one.shape == (4, 80, 80, 3) and (np.diff(one[:, 0, :, 1].astype(int), axis=1) == 1).all()
    zoomed = im.wide_crops(pixels, 20, im.CropSetConfig(scale_prob=1.0, max_scale=2.0, min_std=0.0), rng)
    span = zoomed[:, 40, -1, 1].astype(int) - zoomed[:, 40, 0, 1].astype(int)  # source pixels across
    assert (span >= 78).all() and (span <= 161).all() and span.max() > 100


def test_split_is_deterministic_and_holds_out_at_least_one_group():
    groups = [f"g{i}" for i in range(5)]
    a = im.split_groups(groups, 0.01, seed=1)
    assert a == im.split_groups(groups, 0.01, seed=1) and len(a) == 1
    with pytest.raises(ValueError, match="at least 2"):
        im.split_groups(["only"], 0.5, seed=0)


@pytest.mark.parametrize("stems,same", [(("aloeL", "aloeR"), True), (("graf1", "graf3"), True),
                                        (("left", "right"), True), (("baboon", "orange"), False)])
def test_near_duplicates_share_a_group(stems, same):
    assert (im.group_key(stems[0]) == im.group_key(stems[1])) == same


@pytest.mark.parametrize("kind", im.VIEW_KINDS)
def test_views_are_crops_near_the_original(sources, kind):
    rng = np.random.default_rng(0)
    pixels = sources[0].pixels
    view = im.make_view(pixels, (100, 100), kind, rng)
    orig = pixels[100:164, 100:164].astype(float)
    assert view.shape == (64, 64, 3) and view.dtype == np.uint8
    assert 0 < np.abs(view.astype(float) - orig).mean() < 40


def test_downscale_never_upscales():
    img = np.zeros((300, 900, 3), np.uint8)
    assert im.downscale(img, 100).shape[:2] == (100, 300)
    assert im.downscale(img, 1000).shape == img.shape


def test_config_errors_are_actionable():
    with pytest.raises(ValueError, match="test_fraction"):
        im.CropSetConfig(test_fraction=1.5)
    with pytest.raises(ValueError, match="max_side"):
        im.CropSetConfig(max_side=64)
    with pytest.raises(ValueError, match="val_fraction"):
        im.CropSetConfig(test_fraction=0.5, val_fraction=0.5)
    with pytest.raises(ValueError, match="max_scale"):
        im.CropSetConfig(max_scale=0.5)


def test_save_load_round_trip(tmp_path, crop_set):
    arrays, manifest = crop_set
    im.save_crop_set(tmp_path, arrays, manifest)
    back, man = im.load_crop_set(tmp_path)
    assert man == manifest and set(back) == set(arrays)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(FileNotFoundError, match="vae data"):
        im.load_crop_set(tmp_path / "missing")


def test_without_apt_it_warns_and_falls_back_to_scikit_image(tmp_path, monkeypatch):
    monkeypatch.setattr(srcmod.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="scikit-image"):
        sources = im.gather_sources(use_apt=True, cache=tmp_path)
    assert {s.origin.split(".")[0] for s in sources} == {"skimage"}
