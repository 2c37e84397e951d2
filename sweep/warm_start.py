"""Warm starts for a sweep, made once before the trials and cached under ``OUT/warm_start/``.

Each (preset, learned-encoding width) a trial can get needs a starting policy of that shape:

* ``init: sft``: a supervised warm start (:class:`learner.sft.SFTTrainer`, the code of
  ``tinycompress sft``) with the trial config's ``model:`` and ``sft:`` sections;
* ``init: CKPT`` with the checkpoint's own width: the checkpoint itself;
* ``init: CKPT`` with another ``model.d_enc``: the checkpoint with its token embedding
  factorized at that width by truncated SVD (E ~= A @ B, A: (V, d_enc), B: (d_enc, d_model),
  the best rank-d_enc approximation, Eckart-Young), the output head kept at full rank.

The GRPO learner trains the factors themselves (``LearnerActor`` loads the checkpoint with
``trainable_encoding``), so a trial's embedding stays rank-d_enc through GRPO; rollout
workers get the folded product.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from learner.config import RunConfig
from learner.policy import (ENCODING_FILE, META_FILE, FactorizedEmbedding, build_policy, load_policy,
                            policy_config_from_meta, save_policy)
from sweep.space import SweepConfig


def warm_start_name(preset: str, d_enc: int | None) -> str:
    return preset if d_enc is None else f"{preset}-d{d_enc}"


def prepare_warm_starts(sweep: SweepConfig, data_dir: str | Path, out: str | Path, log=print) -> dict[str, str]:
    """{warm_start_name: checkpoint path} for every (preset, d_enc) of the sweep."""
    out = Path(out)
    paths = {}
    for preset in sweep.presets:
        for d_enc in sweep.encoding_widths(preset):
            name = warm_start_name(preset, d_enc)
            cfg = sweep.trial_config(preset, {"model.d_enc": d_enc} if "model.d_enc" in sweep.search else {})
            paths[name] = str(_warm_start(cfg, sweep.init_path(preset), Path(data_dir), out / name, log))
    return paths


def _warm_start(cfg: RunConfig, init: Path | None, data_dir: Path, out: Path, log) -> Path:
    if init is None:
        if _cached_sft_matches(out, cfg):
            log(f"[tune] warm start {out.name}: reusing {out}")
            return out
        from learner.sft import SFTTrainer

        log(f"[tune] warm start {out.name}: supervised ({cfg.sft.max_steps or 'all'} steps) into {out}")
        result = SFTTrainer(cfg, data_dir, out, log=log).fit()
        if result.best_step < 0:
            raise RuntimeError(f"warm start {out.name}: SFT saved no checkpoint")
        return out
    width = json.loads((init / META_FILE).read_text())["policy"].get("d_enc")
    if width == cfg.model.d_enc:
        return init
    if (out / META_FILE).exists() and json.loads((out / META_FILE).read_text()).get("factorized_from") == str(init):
        return out
    log(f"[tune] warm start {out.name}: {init} with embeddings factorized at d_enc={cfg.model.d_enc}")
    factorize(init, cfg.model.d_enc, out)
    return out


def _cached_sft_matches(out: Path, cfg: RunConfig) -> bool:
    """True when ``out`` holds an SFT warm start made with the same model and sft sections."""
    meta_file = out / META_FILE
    if not meta_file.exists():
        return False
    meta = json.loads(meta_file.read_text())
    if meta.get("stage") != "sft" or "config" not in meta:
        return False
    made = RunConfig.from_dict(yaml.safe_load(meta["config"]))
    return (made.model, made.sft) == (cfg.model, cfg.sft)


@torch.no_grad()
def factorize(init: Path, d_enc: int, out: Path) -> Path:
    """Save ``init`` with its token embedding replaced by its best rank-``d_enc`` factorization."""
    model, tok, meta = load_policy(init)
    shape = policy_config_from_meta(meta).with_(d_enc=d_enc)
    policy = build_policy(shape, tok)  # untied head, factorized input embedding
    state = {k: v for k, v in model.state_dict().items() if k != "model.embed_tokens.weight"}
    embedding = model.get_input_embeddings().weight  # (V, d_model)
    state["lm_head.weight"] = model.get_output_embeddings().weight.clone()  # full rank, tied or not
    missing, unexpected = policy.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == {"model.embed_tokens.codes.weight", "model.embed_tokens.proj.weight"}
    u, s, vh = torch.linalg.svd(embedding, full_matrices=False)  # (V, r), (r,), (r, d_model)
    emb: FactorizedEmbedding = policy.model.embed_tokens
    emb.codes.weight.copy_(u[:, :d_enc] * s[:d_enc])  # (V, d_enc)
    emb.proj.weight.copy_(vh[:d_enc].T)  # (d_model, d_enc)
    kept = float((s[:d_enc] ** 2).sum() / (s**2).sum())
    save_policy(policy, tok, shape, out,
                {**{k: v for k, v in meta.items() if k not in ("policy", "params")},
                 "factorized_from": str(init), "svd_energy_kept": round(kept, 4)})
    assert (out / ENCODING_FILE).exists()
    return out
