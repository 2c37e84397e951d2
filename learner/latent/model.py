"""The latent compressor and the reasoner that reads its latents.

Perceiver-style (Jaegle et al., 2021): K learned latent queries cross-attend over features of
the context, then attend to each other; a projection maps them into the reasoner's embedding
space (as Flamingo's and BLIP-2's bridges do, Alayrac et al., 2022; Li et al., 2023). The
features are the token embeddings and the hidden states of every layer of an encoder (the policy architecture,
``learner.policy.build_policy``) mixed by one linear map, plus a turn-recency embedding (how
many turns before the last one a token was said), so that "the latest setting wins" can be
read off. The reasoner is the policy architecture too; it sees ``[latents; question]`` through
``inputs_embeds`` and never the context's token ids.

Training adds one auxiliary loss, localizing the turn that holds the answer through the
latents: the question weighs the K latents, each latent points at the turns its
cross-attention read, and the mixture is scored by cross-entropy against the relevant turn. ``shared`` is the control where
the encoder is the reasoner itself (its own layers' features of the context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learner.policy import build_policy
from learner.presets import PolicyConfig

FEATURES = ("multi", "last")


@dataclass(frozen=True)
class LatentConfig:
    """One latent arm. The defaults are the full model; each ablation turns one part off."""

    k: int = 16
    """Latent vectors handed to the reasoner (the budget)."""
    features: str = "multi"
    """``multi``: the token embeddings and every encoder layer's hidden states, mixed;
    ``last``: the last layer's only."""
    time_embeddings: bool = True
    """Add a learned turn-recency embedding to the features."""
    projection: bool = True
    """Map latents into the reasoner's space with LayerNorm-Linear-GELU-Linear (else identity)."""
    shared: bool = False
    """The control: the encoder is the reasoner (same weights)."""
    question: bool = False
    """A variant, not the design: the latent queries are shifted by the question (its mean token
    embedding, mapped), so the compressor knows what will be asked, as BM25 does."""
    aux_weight: float = 0.5
    """Weight of the relevant-turn pointer loss (0 = answer loss only)."""
    heads: int = 4
    """Attention heads of the latent blocks."""
    max_turns: int = 64
    """Recency embeddings; older turns share the last one."""

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")


class Block(nn.Module):
    """Pre-norm attention of ``x`` over a context (``cross``) or over itself, then an MLP."""

    def __init__(self, d: int, heads: int, cross: bool):
        super().__init__()
        self.norm_q, self.norm_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d) if cross else None
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, context=None, pad=None, need_weights=False):
        q = self.norm_q(x)
        kv = q if context is None else self.norm_kv(context)
        out, weights = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=need_weights)
        x = x + out
        return x + self.mlp(self.norm_mlp(x)), weights


class LatentReader(nn.Module):
    """Encoder + compressor + reasoner. ``latents`` turns a context into (B, K, d_reasoner)
    vectors; ``forward`` runs the reasoner on ``[latents; text]`` through ``inputs_embeds``."""

    def __init__(self, cfg: LatentConfig, policy: PolicyConfig, tokenizer, seed: int):
        super().__init__()
        self.cfg = cfg
        d = policy.hidden_size
        self.reasoner = build_policy(policy, tokenizer, seed=seed)
        self.encoder = None if cfg.shared else build_policy(policy, tokenizer, seed=seed + 1).model
        torch.manual_seed(seed + 2)
        layers = policy.num_layers + 1 if cfg.features == "multi" else 1
        self.mix = nn.Linear(layers * d, d)  # (B, T, L*d) -> (B, T, d)
        self.recency = nn.Embedding(cfg.max_turns, d) if cfg.time_embeddings else None
        self.queries = nn.Parameter(torch.randn(cfg.k, d) * 0.02)  # (K, d)
        self.cross, self.self_attn = Block(d, cfg.heads, cross=True), Block(d, cfg.heads, cross=False)
        self.project = (nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
                        if cfg.projection else nn.Identity())
        self.pointer = nn.Linear(d, d, bias=False)
        self.ask = nn.Linear(d, d) if cfg.question else None

    def features(self, ctx: dict) -> torch.Tensor:
        """(B, T, d) features of the context tokens ``ctx["ids"]`` (B, T)."""
        encoder = self.encoder if self.encoder is not None else self.reasoner.model
        out = encoder(input_ids=ctx["ids"], attention_mask=ctx["mask"], output_hidden_states=True)
        states = out.hidden_states  # (B, T, d) each: the embeddings, then every layer's output
        f = self.mix(torch.cat(states, -1) if self.cfg.features == "multi" else states[-1])
        if self.recency is not None:
            f = f + self.recency(ctx["recency"].clamp(max=self.cfg.max_turns - 1))
        return f

    def latents(self, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents (B, K, d_reasoner), pointer log-probabilities over turns (B, N), -inf on
        absent turns)."""
        f = self.features(ctx)  # (B, T, d)
        pad = ctx["mask"] == 0  # (B, T)
        z = self.queries.expand(f.shape[0], -1, -1)  # (B, K, d)
        if self.ask is not None:
            z = z + self.ask(self.question_embedding(ctx)).unsqueeze(1)
        z, attn = self.cross(z, f, pad, need_weights=True)  # attn (B, K, T), heads averaged
        z, _ = self.self_attn(z)
        z = self.project(z)
        return z, self.turn_pointer(z, attn, ctx)

    def turn_pointer(self, z: torch.Tensor, attn: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Where the latents say the answer is: the question (its mean token embedding) weighs
        the K latents, and each latent points at the turns its cross-attention read. (B, N)."""
        turn = ctx["turn"]  # (B, T), -1 on padding
        onehot = F.one_hot(turn.clamp(min=0), int(turn.max()) + 1).float() * (turn >= 0).unsqueeze(-1)  # (B, T, N)
        per_latent = torch.einsum("bkt,btn->bkn", attn, onehot)  # (B, K, N), rows sum to 1
        q = self.question_embedding(ctx)  # (B, d)
        weight = torch.softmax(torch.einsum("bkd,bd->bk", z, self.pointer(q)) / z.shape[-1] ** 0.5, -1)  # (B, K)
        p = torch.einsum("bk,bkn->bn", weight, per_latent)  # (B, N)
        return torch.log(p.clamp_min(1e-12)).masked_fill(onehot.sum(1) == 0, float("-inf"))

    def question_embedding(self, ctx: dict) -> torch.Tensor:
        """(B, d) mean of the reasoner's token embeddings of the question."""
        mask = ctx["question_mask"].unsqueeze(-1).float()  # (B, Q, 1)
        return (self.reasoner.get_input_embeddings()(ctx["question"]) * mask).sum(1) / mask.sum(1)

    def forward(self, prefix: torch.Tensor, text: dict) -> torch.Tensor:
        """Reasoner logits (B, K + S, V) for ``prefix`` (B, K, d) vectors then ``text`` ids."""
        return read(self.reasoner, prefix, text)


def read(reasoner, prefix: torch.Tensor | None, text: dict) -> torch.Tensor:
    """The reasoner on ``[prefix; embed(text ids)]``, always through ``inputs_embeds``.
    prefix (B, P, d) or None; text["input_ids"], text["attention_mask"] (B, S) right-padded."""
    embeds = reasoner.get_input_embeddings()(text["input_ids"])  # (B, S, d)
    mask = text["attention_mask"]
    if prefix is not None:
        embeds = torch.cat([prefix, embeds], 1)  # (B, P + S, d)
        mask = torch.cat([mask.new_ones(prefix.shape[:2]), mask], 1)
    return reasoner(inputs_embeds=embeds, attention_mask=mask).logits


def mean_pool(embeds: torch.Tensor, k: int) -> torch.Tensor:
    """(k, d) means of ``k`` contiguous, non-empty chunks of ``embeds`` (T, d); with T < k
    some tokens stand alone in several chunks."""
    t = embeds.shape[0]
    starts = [i * t // k for i in range(k)]
    ends = [max(s + 1, (i + 1) * t // k) for i, s in enumerate(starts)]
    return torch.stack([embeds[s:e].mean(0) for s, e in zip(starts, ends)])


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
