"""The embedding-compression study: its arms (learner/encoding.py) and its quick run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from learner.encoding import (ARMS, FrozenCodeEmbedding, compress, embedding_table, encoded_policy, fit_autoencoder,
                              parameter_counts, svd_compress)
from learner.policy import FactorizedEmbedding
from learner.presets import PRESETS
from rollout.datagen.dataset import build_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import encoding_study  # noqa: E402
from encoding_report import finite, paired  # noqa: E402

TINY = PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoding_data")
    build_dataset(out, n=300, seed=5, progress=lambda m: None, paraphrases=0)
    return out


@pytest.fixture(scope="module")
def tok(data):
    return AutoTokenizer.from_pretrained(str(data / "tokenizer"))


def test_svd_error_is_the_discarded_energy_and_falls_with_width():
    torch.manual_seed(0)
    table = torch.randn(300, 32) @ torch.diag(torch.linspace(2, 0.1, 32))
    s = torch.linalg.svdvals(table)
    errors = [svd_compress(table, k).rel_error for k in (2, 4, 8, 16, 32)]
    for k, err in zip((2, 4, 8, 16, 32), errors):
        assert err == pytest.approx(float((s[k:] ** 2).sum() / (s**2).sum()), abs=1e-5)  # Eckart-Young
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-10


def test_autoencoder_recovers_a_table_of_its_code_width():
    torch.manual_seed(0)
    table = torch.randn(128, 4) @ torch.randn(4, 32) * 0.05  # rank 4, embedding-sized entries
    ae = fit_autoencoder(table, 4, steps=300, seed=0)
    assert ae.codes.shape == (128, 4)
    assert ae.rel_error < 0.05
    with torch.no_grad():
        assert ae.decoder(ae.codes).shape == table.shape


@pytest.mark.parametrize("arm", ["reference", *ARMS])
def test_one_step_trains_every_parameter_and_never_the_frozen_codes(arm, tok):
    table = torch.randn(len(tok), TINY.hidden_size) * 0.02
    compressed = compress(arm, table, 16, ae_steps=20) if arm in ("autoencoder", "svd") else None
    model = encoded_policy(TINY, tok, arm, None if arm == "reference" else 16, seed=0, compressed=compressed)
    emb = model.get_input_embeddings()
    assert isinstance(emb, {"reference": torch.nn.Embedding, "learned": FactorizedEmbedding}.get(arm, FrozenCodeEmbedding))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    codes = emb.codes.clone() if arm in ("autoencoder", "svd") else None
    ids = torch.randint(0, len(tok), (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert math.isfinite(loss.item())
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    if codes is not None:
        assert torch.equal(emb.codes, codes) and not emb.codes.requires_grad


def test_two_stage_arms_start_from_the_compressed_table_and_learned_from_the_plain_init_scale(tok):
    table = torch.randn(len(tok), TINY.hidden_size) * 0.05
    full = encoded_policy(TINY, tok, "svd", TINY.hidden_size, seed=0, compressed=svd_compress(table, TINY.hidden_size))
    assert torch.allclose(embedding_table(full), table, atol=1e-5)  # 1:1 SVD is the table itself
    half = svd_compress(table, 32)
    model = encoded_policy(TINY, tok, "svd", 32, seed=0, compressed=half)
    assert rel(embedding_table(model), table) == pytest.approx(half.rel_error, rel=1e-4)
    learned = encoded_policy(TINY, tok, "learned", 8, seed=0)
    plain = encoded_policy(TINY, tok, "reference", None, seed=0)
    assert embedding_table(learned).std() == pytest.approx(float(embedding_table(plain).std()), rel=0.15)


def rel(a, b):
    return float(((a - b) ** 2).sum() / (b**2).sum())


def test_parameter_counts_follow_the_shapes(tok):
    v, d, k = len(tok), TINY.hidden_size, 16
    ref = parameter_counts(encoded_policy(TINY, tok, "reference", None, seed=0))
    learned = parameter_counts(encoded_policy(TINY, tok, "learned", k, seed=0))
    svd = parameter_counts(encoded_policy(TINY, tok, "svd", k, seed=0, compressed=svd_compress(torch.randn(v, d), k)))
    assert ref["embedding"] == v * d and learned["embedding"] == v * k + k * d
    assert learned["total"] - ref["total"] == learned["embedding"]  # untied head (v*d) replaces the tied table
    assert svd["embedding"] == learned["embedding"] and svd["embedding_trainable"] == k * d
    assert svd["total"] == learned["total"] and svd["trainable"] == learned["trainable"] - v * k


def test_paired_difference_matches_a_hand_computation():
    a, b = [0.5, 0.7, 0.9], [0.4, 0.5, 0.9]
    t = paired(a, b)
    d = [0.1, 0.2, 0.0]
    sd = (sum((x - 0.1) ** 2 for x in d) / 2) ** 0.5
    assert t["mean_diff"] == pytest.approx(0.1)
    assert t["ci95"][1] - 0.1 == pytest.approx(4.302653 * sd / 3**0.5, rel=1e-5)  # t(0.975, 2)
    assert paired([1.0, 1.0], [1.0, 1.0])["p"] is None


def quick(data, out) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "encoding_study.py"), "--quick", "--data", str(data), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_quick_study_computes_every_cell_and_resumes(data, tmp_path):
    out = tmp_path / "study"
    quick(data, out)
    lines = (out / "cells.jsonl").read_text().splitlines()
    cells = [json.loads(x) for x in lines]
    keys = {(c["task"], c["arm"], c["ratio"]) for c in cells}
    assert keys == {(t, "reference", 1) for t in ("sft", "lm")} | {(t, a, r) for t in ("sft", "lm") for a in ARMS for r in (1, 4)}
    assert len(cells) == len(keys) == 14
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["equal_budget"] and finite(summary)
    for c in cells:
        m = c["metrics"]
        assert math.isfinite(m["val_loss"]) and m["val_loss"] > 0
        if c["task"] == "sft":
            assert 0 <= m["val_pass_rate"] <= 1
        else:
            assert m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]))
        assert c["params"]["embedding"] > 0 and c["tokens"] > 0 and c["picked_step"] in (3, 6)
        assert (c["ae_rel_error"] is None) == (c["arm"] in ("reference", "learned"))
    for row in summary["cells"]:  # one seed: means, no intervals, and a reason for it
        for m in ("val_loss", "val_pass_rate") if row["task"] == "sft" else ("val_ppl",):
            assert row[m]["n"] == 1 and row[m]["ci95"] is None and row[m]["why_no_ci"]
    assert len(summary["paired"]) == 2 * 2 * 3  # (ae, svd) x ratios x (sft loss, sft pass, lm ppl)
    table = (out / "table.md").read_text()
    assert table.count("| learned | 4:1 | 16 | 1 |") == 2 and "nan" not in table.lower()
    for task in ("sft", "lm"):
        assert (out / f"encoding_{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a stopped study resumes: the missing cells (here two-stage ones, whose reference table
    # is gone too) are run again, deterministically
    (out / "cells.jsonl").write_text("\n".join(lines[:12]) + "\n")
    shutil.rmtree(out / "tables")
    encoding_study.run(data, out, encoding_study.QUICK)
    again = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert again[:12] == cells[:12]
    assert [(c["task"], c["arm"], c["ratio"], c["metrics"]) for c in again] == \
        [(c["task"], c["arm"], c["ratio"], c["metrics"]) for c in cells]
