"""Token encodings at a compressed width: the arms of the embedding-compression study.

Each arm feeds the transformer a token embedding of width ``d_model`` made from a code of
width ``d_enc`` per token (compression ratio ``d_model / d_enc``):

- ``learned``: :class:`learner.policy.FactorizedEmbedding`, codes (V, d_enc) and projection
  (d_enc -> d_model) both trained end to end with the model (ALBERT, Lan et al., 2020).
- ``autoencoder``: two-stage. An MLP autoencoder is fit, for reconstruction only, to the
  embedding table of a trained full-width model; its encoder's codes are frozen and its
  decoder becomes the trainable projection of a freshly initialized model.
- ``svd``: the linear two-stage baseline. The best rank-``d_enc`` approximation of the same
  table (Eckart and Young, 1936): codes U_k S_k frozen, projection V_k^T trainable.

Every arm keeps the policy's untied output head (V, d_model), as ``model.d_enc`` does, so they
differ only in the input embedding. Pure torch; nothing here reads data or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from learner.policy import FactorizedEmbedding, build_policy
from learner.presets import PolicyConfig

ARMS = ("learned", "autoencoder", "svd")
"""The compressed arms; ``reference`` (the plain full-width policy) is the fourth."""


class FrozenCodeEmbedding(nn.Module):
    """Token embedding ``decoder(codes[ids])`` with the codes (V, d_enc) fixed (a buffer)."""

    def __init__(self, codes: torch.Tensor, decoder: nn.Module):
        super().__init__()
        self.register_buffer("codes", codes.detach().clone())  # (V, d_enc), not trained
        self.decoder = decoder  # (.., d_enc) -> (.., d_model), trained

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.codes[input_ids])  # (B, T, d_model)

    def folded(self) -> torch.Tensor:
        return self.decoder(self.codes)  # (V, d_model)


class Standardize(nn.Module):
    """Fixed affine ``x * scale + shift`` (the autoencoder works on a standardized table)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Autoencoder(nn.Module):
    """d_model -> hidden -> d_enc -> hidden -> d_model, GELU between (one hidden layer each)."""

    def __init__(self, d_model: int, d_enc: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_enc))
        self.decoder = nn.Sequential(nn.Linear(d_enc, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass(frozen=True)
class Compressed:
    """A compressed table: frozen codes (V, d_enc), the decoder to d_model, and how well
    ``decoder(codes)`` reconstructs the table (``rel_error`` = ||E - E'||^2 / ||E||^2)."""

    codes: torch.Tensor
    decoder: nn.Module
    rel_error: float


def rel_error(table: torch.Tensor, approx: torch.Tensor) -> float:
    return float(((table - approx) ** 2).sum() / (table**2).sum())


@torch.no_grad()
def svd_compress(table: torch.Tensor, d_enc: int) -> Compressed:
    """Codes U_k S_k (V, k) and a linear decoder V_k^T: the best rank-k approximation."""
    u, s, vh = torch.linalg.svd(table.float(), full_matrices=False)  # (V, r), (r,), (r, d_model)
    proj = nn.Linear(d_enc, table.shape[1], bias=False)
    proj.weight.copy_(vh[:d_enc].T)  # (d_model, d_enc)
    codes = u[:, :d_enc] * s[:d_enc]
    return Compressed(codes, proj, rel_error(table, proj(codes)))


def fit_autoencoder(table: torch.Tensor, d_enc: int, *, hidden: int | None = None, steps: int = 3000,
                    lr: float = 3e-3, seed: int = 0) -> Compressed:
    """Fit an :class:`Autoencoder` to the rows of ``table`` (V, d_model) by full-batch MSE on
    the standardized table (Adam, cosine-decayed ``lr``); return its codes and its decoder
    (followed by the fixed un-standardization)."""
    table = table.detach().float()
    shift, scale = table.mean(0), table.std()
    x = (table - shift) / scale  # (V, d_model)
    torch.manual_seed(seed)
    ae = Autoencoder(table.shape[1], d_enc, hidden or 2 * table.shape[1])
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
    for _ in range(steps):
        loss = ((ae(x) - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        codes = ae.encoder(x)  # (V, d_enc)
        decoder = nn.Sequential(ae.decoder, Standardize(scale, shift))
        return Compressed(codes, decoder, rel_error(table, decoder(codes)))


def compress(arm: str, table: torch.Tensor, d_enc: int, seed: int = 0, ae_steps: int = 3000) -> Compressed:
    """The two-stage arms' compression of a trained table."""
    if arm == "svd":
        return svd_compress(table, d_enc)
    if arm == "autoencoder":
        return fit_autoencoder(table, d_enc, steps=ae_steps, seed=seed)
    raise ValueError(f"arm {arm!r} has no two-stage compression; choose svd or autoencoder")


def encoded_policy(cfg: PolicyConfig, tokenizer, arm: str, d_enc: int | None, seed: int,
                   compressed: Compressed | None = None):
    """A freshly initialized policy whose input embedding is ``arm``'s at width ``d_enc``.

    ``reference``: the plain policy (tied head). ``learned``: ``model.d_enc``. ``autoencoder``
    and ``svd``: ``model.d_enc``'s shape (untied head) with the embedding replaced by the
    frozen codes of ``compressed`` and its trainable decoder (a copy: cells do not share it).
    """
    if arm == "reference":
        return build_policy(cfg.with_(d_enc=None), tokenizer, seed=seed)
    model = build_policy(cfg.with_(d_enc=d_enc), tokenizer, seed=seed)
    if arm == "learned":
        match_init(model.model.embed_tokens, model.config.initializer_range)
        return model
    if arm not in ARMS or compressed is None:
        raise ValueError(f"arm {arm!r} needs a Compressed table (arms: reference, {', '.join(ARMS)})")
    if compressed.codes.shape != (len(tokenizer), d_enc):
        raise ValueError(f"codes {tuple(compressed.codes.shape)} do not fit ({len(tokenizer)}, {d_enc})")
    import copy

    model.model.embed_tokens = FrozenCodeEmbedding(compressed.codes, copy.deepcopy(compressed.decoder))
    return model


@torch.no_grad()
def match_init(emb: FactorizedEmbedding, std: float) -> None:
    """Draw both factors from N(0, sqrt(std / sqrt(d_enc))) so that the folded table's entries
    have standard deviation ``std``, the plain embedding's initialization (``build_policy``
    leaves PyTorch's defaults: N(0, 1) codes, uniform projection, folded std about 0.58)."""
    sigma = (std / emb.codes.weight.shape[1] ** 0.5) ** 0.5
    emb.codes.weight.normal_(0.0, sigma)
    emb.proj.weight.normal_(0.0, sigma)


def embedding_table(model) -> torch.Tensor:
    """The (V, d_model) input embedding a model uses, folded if factorized."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        return (emb.folded() if isinstance(emb, FactorizedEmbedding | FrozenCodeEmbedding)
                else emb.weight).detach().clone()


def parameter_counts(model) -> dict[str, int]:
    """Stored numbers of the input embedding (codes + projection/decoder, or the table),
    how many of those train, and the whole model's stored and trainable totals (buffers
    such as frozen codes count as stored). A tied output head is counted once."""
    emb = model.get_input_embeddings()
    emb_params = sum(p.numel() for p in emb.parameters())
    emb_frozen = sum(b.numel() for n, b in emb.named_buffers() if n == "codes")
    params = sum(p.numel() for p in model.parameters())
    return {"embedding": emb_params + emb_frozen, "embedding_trainable": emb_params,
            "total": params + emb_frozen, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
