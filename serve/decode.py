"""The serving decode: programs for a batch of intents of different lengths, in plain torch.

A Llama-style causal LM (``transformers.LlamaForCausalLM``, Touvron et al., 2023) run with
its own weights but without the ``transformers`` generation machinery, whose per-step Python
overhead (cache objects, mask building, output dataclasses) costs more than the arithmetic of a
10M-parameter model on a CPU:

- one preallocated (static) key/value cache per batch, written in place;
- fused projections: q|k|v in one matmul, gate|up in one matmul;
- RoPE tables computed once by the model's own rotary module;
- prompts left-padded to one width and prefilled in one pass, positions counted from each
  prompt's first real token (as ``rollout.sampler`` does), pad keys masked out;
- each prompt's cache copied to its ``k`` candidate rows after the prefill (prefix sharing):
  a prompt costs one prefill however many candidates it gets;
- per row, greedy (argmax) or sampled: Gumbel-max over ``logits / T`` (top-p filtered) with
  noise from the row's own generator, so that a row's tokens depend only on its seed, never on
  which other intents share the batch.

``rollout.sampler.Sampler`` (GRPO's sampler) stays the reference: the tests check that the
greedy programs here are the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rollout.sampler import encode_prompts, top_p_filter


class Linear:
    """``x @ W.T`` (no bias): fp32, or int8 weights (per output channel) with dynamically
    quantized activations (``torch.ops.quantized.linear_dynamic``, fbgemm/x86 on CPU)."""

    def __init__(self, weight: torch.Tensor, int8: bool = False):
        self.weight, self.packed = weight.detach().float().contiguous(), None
        if int8:
            import warnings

            scales = (self.weight.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
            with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated (still supported)
                warnings.simplefilter("ignore", UserWarning)
                q = torch.quantize_per_channel(self.weight, scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                               torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight)
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)


@dataclass(frozen=True)
class _Layer:
    ln_attn: torch.Tensor  # (C,)
    qkv: Linear  # (C + 2 * C_kv, C)
    out: Linear  # (C, C)
    ln_mlp: torch.Tensor  # (C,)
    gate_up: Linear  # (2 * I, C)
    down: Linear  # (C, I)


@dataclass(frozen=True)
class Row:
    """One candidate to decode: prompt index, and a generator (None = greedy)."""

    prompt: int
    generator: torch.Generator | None = None


class StaticDecoder:
    """Batched greedy/sampled decoding of a ``LlamaForCausalLM`` on the CPU: fp32, or with
    ``int8`` the projections and the output layer in int8 (weights per channel, activations
    quantized per call)."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 96, max_prompt_len: int = 192,
                 int8: bool = False):
        cfg = model.config
        self.tok, self.max_new_tokens, self.max_prompt_len = tokenizer, max_new_tokens, max_prompt_len
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        base = model.model
        with torch.no_grad():
            self.embed = model.get_input_embeddings().weight.detach().float()  # (V, C)
            self.head = Linear(model.get_output_embeddings().weight, int8)  # (V, C)
            self.ln_final = base.norm.weight.detach().float()
            self.layers = [_Layer(
                b.input_layernorm.weight.detach().float(),
                Linear(torch.cat([b.self_attn.q_proj.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight]),
                       int8),
                Linear(b.self_attn.o_proj.weight, int8),
                b.post_attention_layernorm.weight.detach().float(),
                Linear(torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight]), int8),
                Linear(b.mlp.down_proj.weight, int8)) for b in base.layers]
            positions = torch.arange(max_prompt_len + max_new_tokens)[None]
            cos, sin = base.rotary_emb(self.embed[:1], positions)  # (1, P, D) each
        self.cos, self.sin = cos[0].float(), sin[0].float()  # (P, D)

    # ------------------------------------------------------------------ the model

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]],
                 col: int, mask: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """Next-token logits (N, V) after ``ids`` (N, T) at positions ``pos`` (N, T), whose keys and
        values go to cache columns ``col .. col+T``; the queries attend to cache columns
        ``0 .. span`` (default: all), ``mask`` (N, 1, T, span) saying which."""
        n, t = ids.shape
        c, h, hkv, d = self.embed.shape[1], self.heads, self.kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)  # (N, T, C)
        cos, sin = self.cos[pos].unsqueeze(2), self.sin[pos].unsqueeze(2)  # (N, T, 1, D)
        for layer, (keys, values) in zip(self.layers, cache):
            qkv = layer.qkv(self._norm(x, layer.ln_attn)).view(n, t, h + 2 * hkv, d)  # (N, T, H + 2 H_kv, D)
            qk = self._rope(qkv[:, :, :h + hkv], cos, sin).transpose(1, 2)  # (N, H + H_kv, T, D): one RoPE for both
            q = qk[:, :h]
            keys[:, :, col:col + t] = qk[:, h:]
            values[:, :, col:col + t] = qkv[:, :, h + hkv:].transpose(1, 2)
            ks, vs = (keys, values) if span is None else (keys[:, :, :span], values[:, :, :span])
            att = F.scaled_dot_product_attention(q, ks, vs, attn_mask=mask, enable_gqa=hkv != h)  # (N, H, T, D)
            x = x + layer.out(att.transpose(1, 2).reshape(n, t, c))
            gate, up = layer.gate_up(self._norm(x, layer.ln_mlp)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        return self.head(self._norm(x[:, -1], self.ln_final))  # (N, V)

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate(self, intents: list[str], rows: list[Row], *, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[int]]:
        """Token ids (without ``<eos>``) of each row's program; ``rows[i].prompt`` indexes ``intents``.

        The cache holds the prompt columns and a block of ``CHUNK`` generated columns, grown by
        another block when full; attention always spans the whole (contiguous) cache, masked.
        Rows that have finished are dropped from the cache once they are a quarter of those
        still running, so a long sampled candidate does not keep the whole batch computing.
        """
        if not rows:
            return []
        prompts = encode_prompts(self.tok, intents, self.max_prompt_len)
        width = max(len(p) for p in prompts)
        b, n = len(prompts), len(rows)
        ids = torch.full((b, width), self.pad, dtype=torch.long)
        seen = torch.zeros((b, width + self.CHUNK), dtype=torch.bool)  # columns a query may attend to
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], seen[i, width - len(p):width] = torch.tensor(p), True
        pos = (seen[:, :width].long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
        cache = [(torch.zeros(b, self.kv_heads, width + self.CHUNK, self.head_dim),
                  torch.zeros(b, self.kv_heads, width + self.CHUNK, self.head_dim)) for _ in self.layers]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (causal[None] & seen[:, None, :width]) | torch.eye(width, dtype=torch.bool)[None]  # pad queries: self
        logits = self._forward(ids, pos, cache, 0, mask[:, None], span=width)  # (B, V)
        take = torch.tensor([r.prompt for r in rows])
        if n != b or not torch.equal(take, torch.arange(b)):  # each prompt's cache to its candidate rows
            cache = [(k.index_select(0, take), v.index_select(0, take)) for k, v in cache]
            logits, seen, pos = logits[take], seen[take], pos[take]
        steps = min(self.max_new_tokens, self.cos.shape[0] - width)
        next_pos = pos[:, -1:] + 1  # (A, 1)
        tokens = torch.full((n, steps), self.eos, dtype=torch.long)
        active = torch.arange(n)  # rows of the batch still in the cache, in cache order
        done = torch.zeros(n, dtype=torch.bool)  # per cache row
        for t in range(steps):
            chosen = self._choose(logits, [rows[r] for r in active.tolist()], temperature, top_p)
            chosen = chosen.masked_fill(done, self.eos)
            tokens[active, t] = chosen
            done |= chosen == self.eos
            if bool(done.all()) or t + 1 == steps:
                break
            if 4 * int(done.sum()) >= len(active):  # drop the finished rows from the cache
                keep = (~done).nonzero().squeeze(1)
                cache = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in cache]
                active, chosen, next_pos, seen, done = active[keep], chosen[keep], next_pos[keep], seen[keep], done[keep]
            col = width + t
            if col == cache[0][0].shape[2]:  # the generated block is full: add another
                cache = [(self._grow(k), self._grow(v)) for k, v in cache]
                seen = torch.cat([seen, torch.zeros(len(active), self.CHUNK, dtype=torch.bool)], dim=1)
            seen[:, col] = True
            logits = self._forward(chosen[:, None], next_pos, cache, col, seen[:, None, None, :])
            next_pos = next_pos + 1
        out = []
        for row in tokens.tolist():
            out.append(row[:row.index(self.eos)] if self.eos in row else row)
        return out

    CHUNK = 16

    def _grow(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(t.shape[0], t.shape[1], self.CHUNK, t.shape[3])], dim=2)

    def _choose(self, logits: torch.Tensor, rows: list[Row], temperature: float, top_p: float) -> torch.Tensor:
        """The next token of each cache row: argmax for greedy rows, a draw for the others."""
        chosen = logits.argmax(-1)  # (A,)
        sampled = [i for i, r in enumerate(rows) if r.generator is not None]
        if sampled:
            chosen[sampled] = self._sample(logits[sampled], [rows[i].generator for i in sampled], temperature, top_p)
        return chosen

    @staticmethod
    def _sample(logits: torch.Tensor, generators: list[torch.Generator], temperature: float,
                top_p: float) -> torch.Tensor:
        """Gumbel-max draws from softmax(logits / T), top-p filtered; row i uses ``generators[i]``."""
        scaled = logits / temperature
        if top_p < 1:
            scaled = top_p_filter(scaled, top_p)
        noise = torch.stack([torch.rand(scaled.shape[-1], generator=g) for g in generators])  # (R, V)
        gumbel = -torch.log(-torch.log(noise.clamp(1e-10, 1 - 1e-7)))
        return (scaled + gumbel).argmax(-1)

    def texts(self, ids: list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tok.batch_decode(ids, skip_special_tokens=True)]
