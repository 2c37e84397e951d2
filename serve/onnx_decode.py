"""The serving decode on ONNX Runtime: the same programs as :class:`serve.decode.StaticDecoder`,
without a Python-level torch op per layer per token.

At batch 1 a decode step of the 10M policy is about 170 small torch ops, and on this CPU each
costs 5-80 microseconds of dispatch (the arithmetic is a fraction of that): a 5-token program
spent more time in op overhead than in the prefill. Here the whole forward pass (every layer,
prefill or one step) is one ``InferenceSession.run`` call, which also releases the GIL while it
computes, so the replica's event loop keeps taking requests (and filling the next batch).

The graph is the policy's own forward, written out functionally by :class:`StepGraph` and
exported with ``torch.onnx.export``: inputs ``ids``/``pos`` (N, T), an additive ``mask``
(N, 1, T, P + T) and the cache so far ``past_k``/``past_v`` (L, N, H_kv, P, D); outputs the
next-token ``logits`` of each row's last position (N, V) and ``present_k``/``present_v``
(L, N, H_kv, P + T, D). ``int8`` quantizes every MatMul's weights per output channel with
``onnxruntime.quantization.quantize_dynamic`` (activations quantized per call, as
``serve.decode.Linear`` does in torch). The exported file is cached by the checkpoint's weights
digest, so a restart does not export again.

Decoding (prompts left-padded, positions from each prompt's first real token, a prompt's cache
copied to its ``k`` candidate rows, greedy or Gumbel-max rows with their own generators,
finished rows dropped) follows :meth:`serve.decode.StaticDecoder.generate`; the tests check that
the greedy programs are the same.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rollout.sampler import encode_prompts
from serve.decode import Row, StaticDecoder

NEG = -1e9  # additive mask of a column a query may not see
OPSET = 17
GRAPH_VERSION = 3  # part of the cached file's name: bump when StepGraph or the export changes


class StepGraph(torch.nn.Module):
    """One forward pass of a ``LlamaForCausalLM`` with an explicit key/value cache, in ops the
    ONNX exporter writes out (no cache objects, no in-place writes), arranged for few graph nodes
    (at batch 1 a node costs more than its arithmetic): one cache input and output per layer,
    RoPE's rotate-half as one matmul by a constant, q and k roped together, the attention scale
    folded into the query weights."""

    def __init__(self, model, positions: int):
        super().__init__()
        cfg, base = model.config, model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps

        def param(t: torch.Tensor) -> torch.nn.Parameter:
            return torch.nn.Parameter(t.detach().float().contiguous().clone(), requires_grad=False)

        self.embed = param(model.get_input_embeddings().weight)
        self.head = param(model.get_output_embeddings().weight.t())  # (C, V)
        self.ln_final = param(base.norm.weight)
        self.layers = torch.nn.ModuleList()
        for b in base.layers:
            layer, a = torch.nn.Module(), b.self_attn
            q = a.q_proj.weight * d ** -0.5  # softmax(q k / sqrt(d)): the scale is linear, so in q
            layer.qkv = param(torch.cat([q, a.k_proj.weight, a.v_proj.weight]).t())  # (C, (H + 2 H_kv) D)
            layer.out = param(a.o_proj.weight.t())
            layer.gate_up = param(torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight]).t())
            layer.down = param(b.mlp.down_proj.weight.t())
            layer.ln_attn, layer.ln_mlp = param(b.input_layernorm.weight), param(b.post_attention_layernorm.weight)
            self.layers.append(layer)
        half = d // 2
        rotate = torch.zeros(d, d)  # x @ rotate == cat(-x[half:], x[:half])
        rotate[torch.arange(half) + half, torch.arange(half)] = -1.0
        rotate[torch.arange(half), torch.arange(half) + half] = 1.0
        self.register_buffer("rotate", rotate)
        with torch.no_grad():  # RoPE tables for every position a prompt and its program can reach
            cos, sin = base.rotary_emb(self.embed[:1], torch.arange(positions)[None])
        self.register_buffer("cos", cos[0].float().contiguous())
        self.register_buffer("sin", sin[0].float().contiguous())

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def forward(self, ids, pos, mask, *past):
        """``past``: each layer's keys then values so far, (N, H_kv, P, D) each; returns the last
        position's logits (N, V) and each layer's keys then values through the T new columns."""
        n, t = ids.shape
        h, hkv, d = self.heads, self.kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)  # (N, T, C)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # (N, 1, T, D)
        present = []
        for i, layer in enumerate(self.layers):
            qkv = (self._norm(x, layer.ln_attn) @ layer.qkv).view(n, t, h + 2 * hkv, d).transpose(1, 2)
            qk, v = qkv.split([h + hkv, hkv], dim=1)  # (N, H + H_kv, T, D), (N, H_kv, T, D)
            qk = qk * cos + (qk @ self.rotate) * sin
            q, k = qk.split([h, hkv], dim=1)
            k, v = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)  # (N, H_kv, S, D)
            present += [k, v]
            if hkv != h:
                k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
            att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v  # (N, H, T, D)
            x = x + att.transpose(1, 2).reshape(n, t, h * d) @ layer.out
            gate, up = (self._norm(x, layer.ln_mlp) @ layer.gate_up).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer.down
        return (self._norm(x[:, -1], self.ln_final) @ self.head, *present)


def cache_names(n_layers: int, prefix: str) -> list[str]:
    """``{prefix}_k0, {prefix}_v0, {prefix}_k1, ...``: the graph's cache inputs or outputs."""
    return [f"{prefix}_{kv}{i}" for i in range(n_layers) for kv in "kv"]


def export(model, path: Path, int8: bool, positions: int) -> Path:
    """Write the policy's :class:`StepGraph` to ``path`` (int8 MatMul weights with ``int8``)."""
    import warnings

    graph = StepGraph(model, positions).eval()
    n_layers, hkv, d = len(graph.layers), graph.kv_heads, graph.head_dim
    past, present = cache_names(n_layers, "past"), cache_names(n_layers, "present")
    example = (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1, 3, 7),
               *[torch.zeros(2, hkv, 4, d) for _ in past])
    axes = {"ids": {0: "n", 1: "t"}, "pos": {0: "n", 1: "t"}, "mask": {0: "n", 2: "t", 3: "s"}, "logits": {0: "n"},
            **{name: {0: "n", 2: "p"} for name in past}, **{name: {0: "n", 2: "s"} for name in present}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = path.with_suffix(".fp32.onnx") if int8 else path
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(fp32), input_names=["ids", "pos", "mask", *past],
                          output_names=["logits", *present], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(path), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
        fp32.unlink()
    return path


def cached_export(model, weights: Path, int8: bool, positions: int, folder: Path | None = None) -> Path:
    """The exported graph of these weights, exported once: the file is named by the weights'
    digest (and the exporter's settings), in ``folder`` (default: the user's temp folder)."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    folder = Path(folder or os.environ.get("TINYCOMPRESS_ONNX_CACHE") or Path(tempfile.gettempdir()) / "tinycompress-onnx")
    path = folder / f"policy-{digest}-{'int8' if int8 else 'fp32'}-p{positions}-v{GRAPH_VERSION}.onnx"
    if not path.exists():
        tmp = folder / f".{path.name}.{os.getpid()}.onnx"
        export(model, tmp, int8, positions)
        tmp.replace(path)  # atomic: two replicas exporting at once both end with a whole file
    return path


class OnnxDecoder(StaticDecoder):
    """:class:`serve.decode.StaticDecoder`'s decoding with the forward pass on ONNX Runtime (one
    intra-op thread unless ``threads`` says otherwise)."""

    def __init__(self, model, tokenizer, weights: Path, *, max_new_tokens: int = 96, max_prompt_len: int = 192,
                 int8: bool = False, threads: int = 1, cache_folder: Path | None = None):
        import onnxruntime as ort

        self.tok, self.max_new_tokens, self.max_prompt_len = tokenizer, max_new_tokens, max_prompt_len
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        cfg = model.config
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.n_layers = cfg.num_hidden_layers
        self.past_names = cache_names(self.n_layers, "past")
        self.path = cached_export(model, weights, int8, max_prompt_len + max_new_tokens, cache_folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sleep, not spin, on a shared CPU
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def _run(self, ids: np.ndarray, pos: np.ndarray, mask: np.ndarray, cache: list[np.ndarray]):
        """(logits, cache through the new columns): one forward pass of the exported graph."""
        logits, *present = self.session.run(None, {"ids": ids, "pos": pos, "mask": mask,
                                                   **dict(zip(self.past_names, cache))})
        return logits, present

    @torch.no_grad()
    def generate(self, intents: list[str], rows: list[Row], *, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[int]]:
        """Token ids (without ``<eos>``) of each row's program; ``rows[i].prompt`` indexes ``intents``."""
        if not rows:
            return []
        prompts = encode_prompts(self.tok, intents, self.max_prompt_len)
        width = max(len(p) for p in prompts)
        b, n = len(prompts), len(rows)
        ids = np.full((b, width), self.pad, dtype=np.int64)
        real = np.zeros((b, width), dtype=bool)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], real[i, width - len(p):] = p, True
        pos = np.clip(real.cumsum(-1) - 1, 0, None)  # (B, P)
        causal = np.tril(np.ones((width, width), dtype=bool))
        sees = (causal[None] & real[:, None, :]) | np.eye(width, dtype=bool)[None]  # pad queries see themselves
        mask = np.where(sees, 0.0, NEG).astype(np.float32)[:, None]  # (B, 1, P, P)
        empty = np.zeros((b, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        logits, cache = self._run(ids, pos, mask, [empty] * len(self.past_names))
        take = np.array([r.prompt for r in rows])
        if n != b or not np.array_equal(take, np.arange(b)):  # each prompt's cache to its candidate rows
            cache, logits, real, pos = [c[take] for c in cache], logits[take], real[take], pos[take]
        steps = min(self.max_new_tokens, self.max_prompt_len + self.max_new_tokens - width)
        next_pos = pos[:, -1:] + 1  # (A, 1)
        seen = np.concatenate([real, np.ones((n, 0), dtype=bool)], axis=1)  # (A, columns so far)
        tokens = torch.full((n, steps), self.eos, dtype=torch.long)
        active = torch.arange(n)
        done = torch.zeros(n, dtype=torch.bool)
        for t in range(steps):
            chosen = self._choose(torch.from_numpy(logits), [rows[r] for r in active.tolist()], temperature, top_p)
            chosen = chosen.masked_fill(done, self.eos)
            tokens[active, t] = chosen
            done |= chosen == self.eos
            if bool(done.all()) or t + 1 == steps:
                break
            if 4 * int(done.sum()) >= len(active):  # drop the finished rows
                keep = (~done).nonzero().squeeze(1)
                k_np = keep.numpy()
                cache, seen, next_pos = [c[k_np] for c in cache], seen[k_np], next_pos[k_np]
                active, chosen, done = active[keep], chosen[keep], done[keep]
            seen = np.concatenate([seen, np.ones((len(active), 1), dtype=bool)], axis=1)
            step_mask = np.where(seen, 0.0, NEG).astype(np.float32)[:, None, None, :]  # (A, 1, 1, S)
            logits, cache = self._run(chosen.numpy()[:, None], next_pos, step_mask, cache)
            next_pos = next_pos + 1
        out = []
        for row in tokens.tolist():
            out.append(row[:row.index(self.eos)] if self.eos in row else row)
        return out
