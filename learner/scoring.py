"""Scoring sampled completions under a policy: per-token log-probs and entropies.

GRPO re-scores the G completions of each of B prompts under the current weights (and under the
frozen reference when the KL term is on). Two layouts, one contract:

- :func:`full_sequence_logprobs`, the reference: B*G rows of ``prompt + completion``, prompts
  left-padded, completions right-padded to the longest one. Every prompt is computed G times and
  every short completion is padded to the longest of the batch. Kept as the definition the
  tests hold the fast path to.
- :func:`shared_prefix_logprobs`, the learner's path. Each group is laid out once as
  ``[prompt | c_1 | c_2 | ... | c_G]`` with every completion at its own length (no padding
  inside a group); a block mask lets a completion's tokens see their prompt and the earlier
  tokens of their own completion only, and position ids restart after the prompt for each
  completion, so every completion is scored as if it followed its prompt alone. This is
  Prefix Grouper (Liu et al., 2025, "Prefix Grouper: Efficient GRPO Training through Shared-Prefix
  Forward"): the prompt's keys/values are computed once, and the gradients of all G
  completions flow into that one copy. Groups are packed into rows first-fit decreasing
  (no row longer than the longest group), so the only padding is each row's tail. Logits are
  computed only at the positions that predict a completion token.

Both return ``(logp, entropy)``, each (N, T) float32 aligned with ``completion_ids``, zero
where ``mask`` is false; ``logp`` carries the gradient, ``entropy`` does not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PAD_SEGMENT = -1  # segment of padding positions
PROMPT = -1  # member id of prompt positions


@dataclass(frozen=True)
class PackedGroups:
    """GRPO groups laid out for :func:`shared_prefix_logprobs`; K = completion tokens scored."""

    input_ids: torch.Tensor  # (R, L) int64
    position_ids: torch.Tensor  # (R, L) int64: 0..p-1 on a prompt, p..p+len-1 on each completion
    segment: torch.Tensor  # (R, L) int64: the prompt copy a position belongs to, PAD_SEGMENT on padding
    member: torch.Tensor  # (R, L) int64: PROMPT, or the completion's row in the batch (N)
    source: torch.Tensor  # (K,) int64: flat index into (R*L) of the position predicting each token
    target: torch.Tensor  # (K,) int64: the completion token predicted there
    dest: torch.Tensor  # (K,) int64: flat index into (N*T) of that token in completion_ids
    shape: tuple[int, int]  # (N, T) of completion_ids

    @property
    def positions(self) -> int:
        """Positions the model computes (R * L)."""
        return self.input_ids.numel()

    @property
    def padded_share(self) -> float:
        """Share of computed positions that are padding."""
        return float((self.segment == PAD_SEGMENT).sum()) / max(self.positions, 1)

    def attention_mask(self, additive_dtype: torch.dtype | None = None) -> torch.Tensor:
        """(R, 1, L, L): query i sees key j iff both are in one group, j <= i, and j is on the
        prompt or on i's own completion. A padding position sees itself only (no empty rows).
        Boolean (True = attend) by default; with ``additive_dtype``, 0 / dtype-min for
        attention implementations that add the mask to the scores."""
        seg, mem = self.segment, self.member
        _, length = seg.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
        same_group = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != PAD_SEGMENT)
        visible = (mem[:, None, :] == PROMPT) | (mem[:, :, None] == mem[:, None, :])
        allowed = same_group & visible & causal
        allowed |= torch.eye(length, dtype=torch.bool, device=seg.device)
        allowed = allowed[:, None]  # (R, 1, L, L)
        if additive_dtype is None:
            return allowed
        return torch.zeros(allowed.shape, dtype=additive_dtype, device=seg.device).masked_fill(
            ~allowed, torch.finfo(additive_dtype).min)

    def to(self, device) -> PackedGroups:
        moved = {k: getattr(self, k).to(device) for k in
                 ("input_ids", "position_ids", "segment", "member", "source", "target", "dest")}
        return PackedGroups(**moved, shape=self.shape)


def first_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to at most ``capacity`` (items larger than it alone)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        slot = next((b for b, r in enumerate(room) if r >= sizes[i]), None)
        if slot is None:
            bins.append([]), room.append(capacity)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= sizes[i]
    return bins


def completion_lengths(mask: torch.Tensor) -> torch.Tensor:
    """(N,) tokens per completion; ``mask`` (N, T) must be a prefix of each row."""
    lengths = mask.sum(-1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask.bool()):
        raise ValueError("completion masks must be true on a prefix of each row (tokens, then padding)")
    return lengths


def split_group(prompt_len: int, rows: list[int], lengths: list[int], max_row: int | None) -> list[list[int]]:
    """The group's completion rows in runs that each fit ``max_row`` with a copy of the prompt
    (a completion longer than that gets a run of its own); one run when ``max_row`` is None."""
    if max_row is None:
        return [rows]
    runs, size = [[]], prompt_len
    for i in rows:
        if runs[-1] and size + lengths[i] > max_row:
            runs.append([])
            size = prompt_len
        runs[-1].append(i)
        size += lengths[i]
    return runs


def pack_groups(prompt_ids: list[list[int]], completion_ids: torch.Tensor, mask: torch.Tensor,
                group_size: int, pad_id: int, max_row: int | None = None) -> PackedGroups:
    """Lay B groups (prompt ``prompt_ids[b]``, completions rows ``b*G .. b*G+G-1`` of
    ``completion_ids`` (N, T) with ``mask`` (N, T)) out as :class:`PackedGroups`.

    ``max_row``: a group longer than this is split into runs of completions, each after its
    own copy of the prompt (the gradients of the copies add up, so the result is the same).
    Attention is computed densely over a row, so a row of long completions pays for key
    positions its tokens may not see; shorter runs trade that for some prompt recomputation.
    """
    n, t = completion_ids.shape
    if n != len(prompt_ids) * group_size or min(map(len, prompt_ids), default=1) < 1:
        raise ValueError(f"{n} completions do not make {len(prompt_ids)} non-empty prompts x G={group_size}")
    lengths = completion_lengths(mask).tolist()
    items = [(b, run) for b, p in enumerate(prompt_ids)
             for run in split_group(len(p), list(range(b * group_size, (b + 1) * group_size)), lengths, max_row)]
    sizes = [len(prompt_ids[b]) + sum(lengths[i] for i in run) for b, run in items]
    rows = first_fit_decreasing(sizes, max(sizes))
    width = max(sum(sizes[k] for k in row) for row in rows)
    ids, pos, seg, mem = ([[fill] * width for _ in rows] for fill in (pad_id, 0, PAD_SEGMENT, PROMPT))
    source, target, dest = [], [], []
    comp = completion_ids.tolist()
    for r, row in enumerate(rows):
        at = 0
        for item in row:
            b, run = items[item]
            prompt = prompt_ids[b]
            p = len(prompt)
            ids[r][at:at + p], pos[r][at:at + p], seg[r][at:at + p] = prompt, range(p), [item] * p
            last = r * width + at + p - 1  # the prompt's last position predicts each first token
            at += p
            for i in run:
                k = lengths[i]
                ids[r][at:at + k], pos[r][at:at + k] = comp[i][:k], range(p, p + k)
                seg[r][at:at + k], mem[r][at:at + k] = [item] * k, [i] * k
                source += [last] + [r * width + at + j for j in range(k - 1)] if k else []
                target += comp[i][:k]
                dest += range(i * t, i * t + k)
                at += k
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return PackedGroups(as_long(ids), as_long(pos), as_long(seg), as_long(mem),
                        as_long(source), as_long(target), as_long(dest), (n, t))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (CUDA with bf16; a CPU with AVX512-BF16
    or AMX, as oneDNN reports it). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; others unchanged."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision == "bf16"``; weights stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _token_logprobs(logits: torch.Tensor, target: torch.Tensor, temperature: float):
    """(log-prob, entropy) of ``target`` under ``logits / temperature``, in fp32."""
    logp_all = (logits.float() / temperature).log_softmax(-1)
    logp = logp_all.gather(-1, target[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy.detach()


def shared_prefix_logprobs(model, packed: PackedGroups, temperature: float = 1.0,
                           precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy), each (N, T), of the packed completions under a causal LM ``model``
    (a ``transformers`` model with a decoder and an output embedding)."""
    device = next(model.parameters()).device
    packed = packed.to(device)
    eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
    attn = packed.attention_mask(torch.get_default_dtype() if eager else None)
    with autocast(device, precision):
        hidden = model.get_decoder()(input_ids=packed.input_ids, attention_mask=attn,
                                     position_ids=packed.position_ids, use_cache=False).last_hidden_state
        picked = hidden.flatten(0, 1).index_select(0, packed.source)  # (K, C)
        logits = model.get_output_embeddings()(picked)  # (K, V)
    logp, entropy = _token_logprobs(logits, packed.target, temperature)
    n, t = packed.shape
    zeros = logp.new_zeros(n * t)
    return zeros.index_copy(0, packed.dest, logp).view(n, t), zeros.index_copy(0, packed.dest, entropy).view(n, t)


def full_sequence_batch(prompt_ids: list[list[int]], completion_ids: torch.Tensor, mask: torch.Tensor,
                        group_size: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, prompt_width): left-padded prompts + completions, (N, P+T)."""
    width = max(len(p) for p in prompt_ids)
    n, t = completion_ids.shape
    ids = torch.full((n, width + t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width + t), dtype=torch.long)
    for row in range(n):
        prompt = prompt_ids[row // group_size]
        ids[row, width - len(prompt):width] = torch.tensor(prompt)
        attn[row, width - len(prompt):width] = 1
    ids[:, width:] = completion_ids
    attn[:, width:] = mask.long()
    return ids, attn, width


def full_sequence_logprobs(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                           mask: torch.Tensor, group_size: int, pad_id: int, temperature: float = 1.0,
                           precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy), each (N, T): the reference path, one padded row per completion."""
    device = next(model.parameters()).device
    ids, attn, width = full_sequence_batch(prompt_ids, completion_ids, mask, group_size, pad_id)
    ids, attn = ids.to(device), attn.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    with autocast(device, precision):
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False).logits
    logp, entropy = _token_logprobs(logits[:, width - 1:-1], completion_ids.to(device), temperature)
    keep = mask.to(device)
    return logp * keep, entropy * keep


def full_sequence_padded_share(prompt_ids: list[list[int]], mask: torch.Tensor, group_size: int) -> float:
    """Share of the reference layout's (N, P+T) positions that are padding."""
    n, t = mask.shape
    width = max(len(p) for p in prompt_ids)
    real = sum(len(p) for p in prompt_ids) * group_size + int(mask.sum())
    return 1.0 - real / (n * (width + t))
