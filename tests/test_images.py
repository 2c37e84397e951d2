"""learner/vae/images.py: crops, the split by source, views. scikit-image photographs only."""

from __future__ import annotations

import numpy as np
import pytest

from learner.vae import images as im


@pytest.fixture(scope="module")
def sources():
    return im.skimage_sources()


@pytest.fixture(scope="module")
def crop_set(sources):
    return im.build_crop_set(sources, im.CropSetConfig(crops_per_source=6, view_pairs=8, seed=3))


def test_sources_are_rgb_uint8(sources):
    assert len(sources) >= 10
    for s in sources:
        assert s.pixels.ndim == 3 and s.pixels.shape[2] == 3 and s.pixels.dtype == np.uint8


def test_split_is_by_source_never_by_crop(crop_set):
    arrays, manifest = crop_set
    assert not set(arrays["train_source"]) & set(arrays["test_source"])
    test_names = {r["name"] for r in manifest["sources"] if r["split"] == "test"}
    assert test_names and all(r["group"] in manifest["test_groups"]
                              for r in manifest["sources"] if r["name"] in test_names)
    assert set(arrays["views_source"]) <= set(arrays["test_source"])


def test_crops_shape_dtype_and_counts(crop_set):
    arrays, manifest = crop_set
    for key in ("train_crops", "test_crops", "views_a", "views_b"):
        assert arrays[key].shape[1:] == (64, 64, 3) and arrays[key].dtype == np.uint8
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == 6 * len(manifest["sources"])


def test_split_is_deterministic_and_holds_out_at_least_one_group():
    groups = [f"g{i}" for i in range(5)]
    a = im.split_groups(groups, 0.01, seed=1)
    assert a == im.split_groups(groups, 0.01, seed=1) and len(a) == 1
    with pytest.raises(ValueError, match="at least 2"):
        im.split_groups(["only"], 0.5, seed=0)


@pytest.mark.parametrize("stems,same", [(("aloeL", "aloeR"), True), (("graf1", "graf3"), True),
                                        (("left", "right"), True), (("baboon", "orange"), False)])
def test_near_duplicates_share_a_group(stems, same):
    assert (im._group_key(stems[0]) == im._group_key(stems[1])) == same


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


def test_save_load_round_trip(tmp_path, crop_set):
    arrays, manifest = crop_set
    im.save_crop_set(tmp_path, arrays, manifest)
    back, man = im.load_crop_set(tmp_path)
    assert man == manifest and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(FileNotFoundError, match="vae data"):
        im.load_crop_set(tmp_path / "missing")


def test_without_apt_it_warns_and_falls_back_to_scikit_image(tmp_path, monkeypatch):
    monkeypatch.setattr(im.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="scikit-image"):
        sources = im.gather_sources(use_apt=True, cache=tmp_path)
    assert {s.origin.split(".")[0] for s in sources} == {"skimage"}
