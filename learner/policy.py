"""The policy: a Llama-style causal LM built from a config and trained from scratch.

Follows LLaMA (Touvron et al., 2023) through ``transformers.LlamaForCausalLM``. The optional
"learned encoding" factorizes the token embedding as vocab -> d_enc -> d_model (ALBERT, Lan
et al., 2020), learned end to end. A checkpoint is an ordinary ``save_pretrained`` folder
(safetensors) that ``AutoModelForCausalLM.from_pretrained`` opens: a factorized embedding is
folded into a plain matrix for it, and its two factors are kept beside it for training.

Sequence layout: ``<|bos|> intent <|sep|> program <|eos|>``; the loss covers the program
and ``<|eos|>`` only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from learner.presets import META_FILE, NOMINAL_PARAMS, PRESETS, PolicyConfig, check_init  # noqa: F401 (re-exported)
from rollout.checkpoint import read_policy

ENCODING_FILE = "learned_encoding.safetensors"




class FactorizedEmbedding(nn.Module):
    """Token embedding E = A @ B with A: (V, d_enc), B: (d_enc, d_model)."""

    def __init__(self, vocab_size: int, d_enc: int, d_model: int):
        super().__init__()
        self.codes = nn.Embedding(vocab_size, d_enc)  # (V, d_enc)
        self.proj = nn.Linear(d_enc, d_model, bias=False)  # (d_enc -> d_model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.codes(input_ids))  # (B, T, d_model)

    def folded(self) -> torch.Tensor:
        return self.proj(self.codes.weight)  # (V, d_model)


def hf_config(cfg: PolicyConfig, vocab_size: int, special: dict[str, int]):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.d_enc is None,
        bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"],
    )


def special_ids(tokenizer) -> dict[str, int]:
    """Ids of the four special tokens the sequence layout needs."""
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
           "pad": tokenizer.pad_token_id, "sep": tokenizer.sep_token_id}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}: train it with rollout.tokenizer")
    return ids


def build_policy(cfg: PolicyConfig, tokenizer, seed: int = 0):
    """A freshly initialized policy for ``tokenizer``'s vocabulary."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(cfg, len(tokenizer), special_ids(tokenizer)))
    if cfg.d_enc is not None:
        model.model.embed_tokens = FactorizedEmbedding(len(tokenizer), cfg.d_enc, cfg.hidden_size)
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def with_prompt_layout(tokenizer):
    """``tokenizer`` with the policy's prompt layout as its post-processor: encoding a text with
    special tokens (the ``transformers`` default, as ``pipeline("text-generation")`` does) gives
    ``<|bos|> text <|sep|>``, the prompt the policy was trained on. Every call inside this
    project encodes with ``add_special_tokens=False`` and builds the prompt itself
    (``rollout.sampler.encode_prompts``), so nothing here changes."""
    from tokenizers.processors import TemplateProcessing

    bos, sep = tokenizer.bos_token, tokenizer.sep_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {sep}", pair=f"{bos} $A {sep} $B",
        special_tokens=[(bos, tokenizer.bos_token_id), (sep, tokenizer.sep_token_id)])
    return tokenizer


def save_policy(model, tokenizer, cfg: PolicyConfig, out: str | Path, meta: dict | None = None) -> Path:
    """Write a checkpoint: HF folder (safetensors), tokenizer (with the prompt layout, so that
    ``pipeline("text-generation", model=out)`` works on a bare intent), config JSON, factors if any."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emb = model.model.embed_tokens
    if isinstance(emb, FactorizedEmbedding):
        save_file({"codes": emb.codes.weight.detach().cpu().contiguous(),
                   "proj": emb.proj.weight.detach().cpu().contiguous()}, str(out / ENCODING_FILE))
        plain = nn.Embedding(*emb.folded().shape)
        plain.weight.data.copy_(emb.folded().detach())
        model.model.embed_tokens = plain
        try:
            model.save_pretrained(str(out), safe_serialization=True)
        finally:
            model.model.embed_tokens = emb
    else:
        model.save_pretrained(str(out), safe_serialization=True)
    with_prompt_layout(copy.deepcopy(tokenizer)).save_pretrained(str(out))
    record = {"policy": asdict(cfg), "params": count_params(model), **(meta or {})}
    (out / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out


def load_policy(path: str | Path, device: str | torch.device = "cpu", trainable_encoding: bool = False):
    """(model, tokenizer, meta) from a checkpoint folder (:func:`rollout.checkpoint.read_policy`);
    with ``trainable_encoding``, a learned encoding comes back as its two trainable factors."""
    model, tokenizer, meta = read_policy(path, device=str(device))
    path = Path(path)
    if trainable_encoding and (path / ENCODING_FILE).exists():
        factors = load_file(str(path / ENCODING_FILE))
        emb = FactorizedEmbedding(factors["codes"].shape[0], factors["codes"].shape[1],
                                  factors["proj"].shape[0])
        emb.codes.weight.data.copy_(factors["codes"])
        emb.proj.weight.data.copy_(factors["proj"])
        model.model.embed_tokens = emb.to(device)
    return model, tokenizer, meta


def policy_config_from_meta(meta: dict) -> PolicyConfig:
    return PolicyConfig(**meta["policy"])


def init_set_tokens(model, tokenizer, scale: float) -> dict[str, int]:
    """Set each full-set token's embedding (``C*``, ``C*?``, ``I*!``, ...) to ``scale`` times the
    mean embedding of its set's members (``C1``..``C13`` with the same operator); returns the
    tokens set, by id.

    A policy warm-started on surface programs has never written a full-set token: its rows only
    ever received the softmax's push-down, and all six point one way (cosine 0.98). Mean-of-members
    is how new tokens are usually initialized; at ``scale`` 2 the 10m warm start's greedy val
    programs stay as they were, while the in-place collapsed form of a full set gains about 20
    nats of log-probability (docs/TRAINING.md). A learned encoding's codes are set (the folded
    embedding is linear in them), and an untied output layer gets the same rows.
    """
    from validator_actors.codebook import load_codebook

    cb, vocab = load_codebook(), tokenizer.get_vocab()
    emb = model.get_input_embeddings()
    tables = [emb.codes.weight if isinstance(emb, FactorizedEmbedding) else emb.weight]
    out = model.get_output_embeddings().weight
    if out.data_ptr() != tables[0].data_ptr():
        tables.append(out)
    done = {}
    with torch.no_grad():
        for radical, entries in cb.entries.items():
            for op in ("", *cb.unary_ops):
                star, members = f"{radical}*{op}", [f"{radical}{n}{op}" for n in sorted(entries)]
                if star not in vocab or any(m not in vocab for m in members):
                    continue
                ids = [vocab[m] for m in members]
                for table in tables:
                    table[vocab[star]] = table[ids].mean(0) * scale
                done[star] = vocab[star]
    return done
