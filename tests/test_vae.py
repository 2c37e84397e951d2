"""TinyVAE: model shapes, training, trust, VQ dictionary, int8 export, metrics and the CLI.

Properties, not recorded numbers; tiny data from scikit-image; CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.vae import quality as ev
from learner.vae.model import TinyVAE, VAEConfig, num_params, shift_disagreement, vae_loss
from learner.vae.int8 import dynamic_int8, export_int8, load_int8, quantize_per_channel
from learner.vae.train import (VAETrainConfig, grow_from, jitter, load_checkpoint, sample_views, save_checkpoint,
                               to_tensor, train, train_step)
from learner.vae.trust import TrustCalibration, TrustedLatent, trust_score, wrap
from learner.vae.vq import VectorQuantizer, VQConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    from learner.vae.images import CropSetConfig, build_crop_set, skimage_sources

    arrays, _ = build_crop_set(skimage_sources(), CropSetConfig(crops_per_source=4, view_pairs=0))
    return arrays["train_crops"]  # (N, 64, 64, 3) uint8


@pytest.fixture(scope="module")
def model() -> TinyVAE:
    torch.manual_seed(0)
    return TinyVAE().eval()


def test_shapes_and_parameter_count(model):
    x = torch.rand(5, 3, 64, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 64)
    assert model.decode(mu).shape == (5, 3, 64, 64)
    n = num_params(model)
    print(f"TinyVAE parameters: {n:,}")
    assert 0.6e6 < n < 1.0e6  # "about 0.8M"
    assert model.cfg.input_dim / model.cfg.latent_dim == 192


def test_round_trip_shape_and_range(model, crops):
    x = to_tensor(crops[:8])
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()


def test_batch_one_agrees_with_batched(model, crops):
    x = to_tensor(crops[:6])
    with torch.no_grad():
        batched = model.encode(x)[0]
        single = torch.cat([model.encode(x[i:i + 1])[0] for i in range(len(x))])
    torch.testing.assert_close(single, batched, atol=1e-5, rtol=1e-4)


def test_one_step_lowers_loss_on_a_repeated_batch(crops):
    torch.manual_seed(1)
    m = TinyVAE()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = to_tensor(crops[:16])
    before = {n: p.detach().clone() for n, p in m.named_parameters()}

    def eval_loss():
        m.eval()
        with torch.no_grad():
            return float(vae_loss(m.cfg, x, *m(x))["loss"])

    start = eval_loss()
    terms = train_step(m, opt, x)
    assert np.isfinite(terms["loss"]) and eval_loss() < start
    changed = [n for n, p in m.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # every trainable tensor moved


def test_ssim_term_and_beta_enter_the_loss(crops):
    x = to_tensor(crops[:4])
    m = TinyVAE().eval()
    recon, mu, logvar = m(x)
    plain = vae_loss(VAEConfig(beta=0.0), x, recon, mu, logvar)["loss"]
    with_kl = vae_loss(VAEConfig(beta=0.1), x, recon, mu, logvar)["loss"]
    with_ssim = vae_loss(VAEConfig(beta=0.0, ssim_weight=1.0), x, recon, mu, logvar)["loss"]
    assert with_kl > plain and with_ssim > plain
    sigma = VAEConfig(recon="sigma_vae")
    assert vae_loss(sigma, x, x, mu, logvar)["loss"] < vae_loss(sigma, x, recon, mu, logvar)["loss"]


def test_one_step_with_the_shift_term_moves_every_parameter_and_raises_agreement(crops):
    torch.manual_seed(2)
    m = TinyVAE(VAEConfig(shift_weight=1.0, ssim_weight=1.0, upsample="bilinear"))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    wide = np.pad(crops[:16], ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")  # (16, 80, 80, 3)
    data = torch.from_numpy(wide).permute(0, 3, 1, 2)
    xa, xb = sample_views(data, VAETrainConfig(batch_size=16), gen)  # views up to 16 px apart
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    first = train_step(m, opt, xa, xb)
    for _ in range(5):
        last = train_step(m, opt, xa, xb)
    assert np.isfinite(first["loss"]) and last["shift_cos"] > first["shift_cos"]
    assert all(not torch.equal(p, before[n]) for n, p in m.named_parameters())


def test_shift_disagreement_is_zero_for_equal_views_and_blind_to_a_shared_offset():
    torch.manual_seed(0)
    a, b = torch.randn(8, 64), torch.randn(8, 64)
    assert torch.allclose(shift_disagreement(a, a), torch.zeros(8), atol=1e-6)
    offset = 50 * torch.randn(64)  # a constant shared by every latent cannot fake agreement
    torch.testing.assert_close(shift_disagreement(a + offset, b + offset), shift_disagreement(a, b))
    with pytest.raises(ValueError, match="mu_shifted"):
        vae_loss(VAEConfig(shift_weight=1.0), torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), a[:2], b[:2])


def test_views_are_windows_of_one_stored_crop_with_one_flip_and_jitter():
    yy, xx = torch.meshgrid(torch.arange(80), torch.arange(80), indexing="ij")
    coded = torch.stack([yy, xx, yy * 0 + 128]).to(torch.uint8)  # (3, 80, 80): position-coded
    data = coded.expand(4, 3, 80, 80).clone()
    a, b = sample_views(data, VAETrainConfig(batch_size=32, jitter=0.0), torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (32, 3, 64, 64)
    step = lambda v: (v[:, 1, 0, 1:] - v[:, 1, 0, :-1]) * 255  # noqa: E731  x steps of +-1
    assert torch.allclose(step(a).abs(), torch.ones(32, 63)) and torch.equal(step(a).sign(), step(b).sign())
    assert ((a[:, 0, 0, 0] - b[:, 0, 0, 0]).abs() * 255 <= 16.001).all()  # at most 16 px apart
    x = torch.rand(64, 3, 8, 8)
    j = jitter(x.clone(), 0.1, torch.Generator().manual_seed(0))
    assert j.min() >= 0 and j.max() <= 1 and not torch.equal(j, x)
    assert torch.equal(jitter(x.clone(), 0.0, torch.Generator()), x)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, crops):
    tcfg = VAETrainConfig(steps=6, batch_size=8, warmup=2, log_every=1, save_every=3, threads=1)
    cfg = VAEConfig(shift_weight=0.5)
    whole, _ = train(cfg, tcfg, crops, log=lambda s: None, out=tmp_path)  # leaves the step-3 state
    assert (tmp_path / "train_state.pt").exists()
    lines = []
    resumed, rows = train(cfg, tcfg, crops, log=lines.append, out=tmp_path)
    assert lines[0].startswith("resumed") and [r["step"] for r in rows] == list(range(6))
    for (n, p), q in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)


def test_decoder_blocks_grow_a_model_that_starts_as_its_source_then_learn(model, crops):
    grown = TinyVAE(VAEConfig(decoder_blocks=2)).eval()
    grow_from(grown, model)
    x = to_tensor(crops[:4])
    with torch.no_grad():
        torch.testing.assert_close(grown.decode(model.encode(x)[0]), model.decode(model.encode(x)[0]))
    last = grown.decoder.refine[2][1].branch[-1].weight
    assert last.abs().sum() == 0
    train_step(grown, torch.optim.Adam(grown.parameters(), lr=1e-3), x)
    assert last.abs().sum() > 0  # the zeroed conv gets a gradient, so the block comes alive
    with pytest.raises(ValueError, match="does not fit"):
        grow_from(TinyVAE(VAEConfig(widths=(8, 16, 32))), model)


@pytest.mark.parametrize("kwargs,match", [({"widths": (16, 30, 64)}, "groups"),
                                          ({"image_size": 60}, "divisible"),
                                          ({"beta": -1.0}, "beta"), ({"recon": "l1"}, "recon"),
                                          ({"shift_weight": -1.0}, "shift_weight"),
                                          ({"upsample": "cubic"}, "upsample"),
                                          ({"decoder_blocks": -1}, "decoder_blocks")])
def test_config_errors_are_actionable(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_train_config_errors():
    with pytest.raises(ValueError, match="lr"):
        VAETrainConfig(lr=0)


def test_checkpoint_round_trip(tmp_path, model):
    save_checkpoint(tmp_path, model, VAETrainConfig())
    back, config = load_checkpoint(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x)[0], model.encode(x)[0])
    assert config["model"] == "tinyvae" and len(config["version"]) == 12


# ---------------------------------------------------------------- trust


def test_trust_is_one_for_a_perfect_reconstruction_and_falls_with_error():
    calib = TrustCalibration(mse_ref=0.01, kl_ref=1.0)
    assert float(trust_score(torch.tensor(0.0), torch.tensor(0.0), calib)) == 1.0
    assert float(trust_score(torch.tensor(0.01), torch.tensor(1.0), calib)) == pytest.approx(0.5)
    errors = torch.linspace(0, 0.2, 50)
    t = trust_score(errors, torch.zeros(50), calib)
    assert (t.diff() < 0).all() and (t >= 0).all() and (t <= 1).all()


@settings(max_examples=50, deadline=None)
@given(e=st.floats(0, 10), k=st.floats(0, 100), de=st.floats(1e-3, 1), dk=st.floats(1e-3, 1))
def test_trust_is_in_unit_interval_and_monotone(e, k, de, dk):
    calib = TrustCalibration(mse_ref=0.02, kl_ref=2.0)
    t = float(trust_score(torch.tensor(e), torch.tensor(k), calib))
    assert 0.0 <= t <= 1.0
    assert float(trust_score(torch.tensor(e + de), torch.tensor(k), calib)) <= t
    assert float(trust_score(torch.tensor(e), torch.tensor(k + dk), calib)) <= t


def test_wrapped_latents_carry_metadata_and_round_trip_json(model, crops):
    x = to_tensor(crops[:3])
    vq = VectorQuantizer(VQConfig(num_codes=8, group_dim=8), 64)
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    out = wrap(model, x, ["a", "b", "c"], TrustCalibration(0.01, 1.0), "abc123", quantizer=vq, now=now)
    assert [w.entity_id for w in out] == ["a", "b", "c"]
    for w in out:
        assert len(w.latent) == 64 and len(w.tokens) == 8 and 0 <= w.trust <= 1
        assert w.timestamp.startswith("2026-01-02") and w.model_version == "abc123"
        assert TrustedLatent.from_json(w.to_json()) == w
    with pytest.raises(ValueError, match="entity id"):
        wrap(model, x, ["a"], TrustCalibration(0.01, 1.0), "v")


# ---------------------------------------------------------------- VQ dictionary


@pytest.mark.parametrize("group_dim", [8, 64])
def test_vq_maps_every_code_back_to_itself(group_dim):
    torch.manual_seed(0)
    z = torch.randn(2000, 64)
    vq = VectorQuantizer(VQConfig(num_codes=512, group_dim=group_dim), 64).fit_kmeans(z, iters=5)
    codes = vq.codebook.detach().reshape(-1, 64)  # every code, packed into latents
    tokens = vq.quantize(codes)
    assert torch.equal(tokens.flatten(), torch.arange(512))
    torch.testing.assert_close(vq.dequantize(tokens), codes)
    zq = vq.dequantize(vq.quantize(z))
    assert torch.equal(vq.quantize(zq), vq.quantize(z))  # quantizing twice changes nothing


def test_vq_kmeans_beats_random_codebook_and_straight_through_passes_gradients():
    torch.manual_seed(0)
    z = torch.randn(1000, 64)
    rand = VectorQuantizer(VQConfig(num_codes=64), 64)
    fit = VectorQuantizer(VQConfig(num_codes=64), 64).fit_kmeans(z, iters=10)
    err = {k: (v.dequantize(v.quantize(z)) - z).pow(2).mean() for k, v in (("rand", rand), ("fit", fit))}
    assert err["fit"] < err["rand"]
    zz = z[:4].clone().requires_grad_()
    zq, tokens, loss = fit(zz)
    (zq.sum() + loss).backward()
    assert tokens.shape == (4, 8) and torch.isfinite(loss) and zz.grad.abs().sum() > 0


# ---------------------------------------------------------------- int8


def test_int8_per_channel_error_is_within_half_a_step():
    w = torch.randn(16, 8, 3, 3)
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    err = (q.float() * scale.view(-1, 1, 1, 1) - w).abs().amax(dim=(1, 2, 3))
    assert (err <= scale / 2 + 1e-7).all()


def test_int8_encoder_export_round_trip(tmp_path, model, crops):
    path = export_int8(model.encoder, tmp_path / "enc.safetensors")
    enc = load_int8(path, model.cfg)
    x = to_tensor(crops[:8])
    with torch.no_grad():
        mu = model.encode(x)[0]
        assert ev.cosine(mu, enc(x)[0]).min() > 0.99
        assert ev.cosine(mu, dynamic_int8(model.encoder)(x)[0]).min() > 0.99
    assert path.stat().st_size < 0.4 * 4 * num_params(model.encoder)


# ---------------------------------------------------------------- metrics


def test_auc_equals_a_pairwise_reference_loop():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # with ties
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert ev.auc(pos, neg) == pytest.approx(ref)


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10):
        p = ev.derangement(n, rng)
        assert sorted(p) == list(range(n)) and (p != np.arange(n)).all()


def test_pca_error_falls_with_components_and_psnr_is_finite():
    x = torch.rand(40, 3, 16, 16)
    errs = [(ev.PCA(x, k).reconstruct(x) - x).pow(2).mean() for k in (2, 8, 39)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8
    p, s = ev.psnr_ssim(x[:, :, :, :], x)
    assert np.isfinite(p).all() and np.allclose(s, 1.0, atol=1e-4)


def test_jpeg_round_trip_reports_sizes(crops):
    rec, sizes = ev.jpeg_roundtrip(crops[:3], quality=1)
    assert rec.shape == (3, 3, 64, 64) and (sizes > 0).all()


def test_shift_agreement_pairs_different_scenes_only_and_separates_them(model, crops):
    sources = np.repeat(np.arange(4), 3)
    partner = ev.different_scene(sources, np.random.default_rng(0))
    assert (sources[partner] != sources).all()
    x = to_tensor(crops[:12])
    res = ev.shift_agreement(lambda v: model.encode(v)[0], x, x.clone(), np.full(12, 8), sources)
    assert res[8]["same_mean"] == pytest.approx(1.0, abs=1e-5) and res[8]["auc"] == 1.0


def test_cross_view_identical_views_agree_perfectly(model, crops):
    x = to_tensor(crops[:6])
    res = ev.cross_view(model.encoder, x, x.clone(), np.zeros(6, int), ["same"])
    assert np.allclose(res["same"], 1.0, atol=1e-5) and res["auc"] >= 0.99


def test_short_training_reduces_the_loss(crops):
    _, rows = train(VAEConfig(), VAETrainConfig(steps=12, batch_size=16, warmup=2, log_every=11),
                    crops, log=lambda s: None)
    assert rows[-1]["loss"] < rows[0]["loss"]


# ---------------------------------------------------------------- CLI smoke


def test_cli_smoke_data_train_eval(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*args):
        res = subprocess.run([sys.executable, "-m", "cluster.cli", "vae", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout), res.stderr  # stdout is one JSON line; tables and progress on stderr

    data, ckpt = tmp_path / "crops", tmp_path / "ckpt"
    assert run("data", "--out", str(data), "--smoke")[0]["out"] == str(data)
    trained, progress = run("train", "--data", str(data), "--out", str(ckpt), "--smoke")
    assert trained["params"] > 0 and trained["steps"] == 20 and "parameters" in progress
    assert run("eval", "--checkpoint", str(ckpt), "--data", str(data), "--smoke")[0]["report"] == str(ckpt / "eval.json")
    report = json.loads((ckpt / "eval.json").read_text())
    test = report["splits"]["test"]  # scikit-image only: no held-out origin, so no heldout split
    methods = {r["method"] for r in test["table"]}
    assert set(report["splits"]) == {"test"} and any("PCA" in m for m in methods) and any("JPEG" in m for m in methods)
    assert 0 <= test["beats_pca"]["psnr"] <= 1 and set(test["shift"]["TinyVAE"]) == {"2", "4", "8", "16"}
    assert 0 <= report["cross_view"]["auc"] <= 1 and "int8 weights" in report["int8"]
    for name in ("model.safetensors", "config.json", "vq.safetensors", "encoder_int8.safetensors",
                 "grid.png", "cross_view.png"):
        assert (ckpt / name).exists(), name


def test_spearman_is_one_for_monotone_pairs_and_minus_one_reversed():
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.9])
    assert ev.spearman(a, a ** 3) == pytest.approx(1.0)
    assert ev.spearman(a, -a) == pytest.approx(-1.0)
