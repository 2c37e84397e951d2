"""Batched sampling of GRPO groups with a KV cache: G completions for each of B prompts.

Each prompt is prefilled once and its cache repeated G times (``model.generate`` with
``num_return_sequences`` prefills every copy), then one token per step for all B*G rows,
dropping rows from the cache as they finish. Per-token log-probs are log-softmax(logits / T)
of the unfiltered distribution, which a fresh forward pass reproduces (GRPO's old log-probs);
top-p only narrows what is drawn.
"""

from __future__ import annotations

import torch

from rollout.batch import RolloutBatch


def encode_prompts(tokenizer, intents: list[str], max_prompt_len: int) -> list[list[int]]:
    """``<bos> intent <sep>``, the intent cut to ``max_prompt_len - 2`` tokens."""
    body = tokenizer(intents, add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id] + ids[: max_prompt_len - 2] + [tokenizer.sep_token_id] for ids in body]


def encode_completions(tokenizer, texts: list[str], eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (N, T): each program's tokens then ``<eos>`` (unless ``eos=False``: a
    partial program), padded on the right, as the sampler's completions are (for rows the
    sampler did not draw: rewrites, wrong endings)."""
    end = [tokenizer.eos_token_id] if eos else []
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] + end for t in texts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), True
    return ids, mask


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (N, max_len), padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


class Sampler:
    """Samples programs from a causal LM policy. Plain class: no Ray needed to test it."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 96, temperature: float = 1.0,
                 top_p: float = 1.0, max_prompt_len: int = 192):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.model, self.tok = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.max_prompt_len = max_prompt_len
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def sample(self, intents: list[str], group_size: int = 1, *, greedy: bool = False,
               policy_version: int = 0, generator: torch.Generator | None = None) -> RolloutBatch:
        from transformers import DynamicCache

        prompt_ids = encode_prompts(self.tok, intents, self.max_prompt_len)
        ids, attn = left_pad(prompt_ids, self.pad, self.device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions,
                         past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :].float().repeat_interleave(group_size, 0)  # (N, V)
        cache.batch_repeat_interleave(group_size)
        attn = attn.repeat_interleave(group_size, 0)
        next_pos = positions[:, -1:].repeat_interleave(group_size, 0) + 1  # (N, 1)
        n = len(intents) * group_size
        tokens = torch.full((n, self.max_new_tokens), self.pad, dtype=torch.long)
        logps = torch.zeros((n, self.max_new_tokens))
        lengths = torch.zeros(n, dtype=torch.long)
        active = torch.arange(n)  # rows of the full batch still generating, in cache order
        for t in range(self.max_new_tokens):
            scaled = logits / self.temperature
            logp_all = scaled.log_softmax(-1)
            if greedy:
                chosen = scaled.argmax(-1)
            else:
                probs = (top_p_filter(scaled, self.top_p) if self.top_p < 1 else scaled).softmax(-1)
                chosen = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(scaled.device)
            tokens[active, t] = chosen.cpu()
            logps[active, t] = logp_all.gather(-1, chosen[:, None]).squeeze(1).cpu()
            lengths[active] += 1
            done = (chosen == self.eos).cpu()
            if t + 1 == self.max_new_tokens or bool(done.all()):
                break
            if done.any():
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep.to(self.device))
                active, chosen = active[keep], chosen[keep.to(chosen.device)]
                attn, next_pos = attn[keep.to(attn.device)], next_pos[keep.to(next_pos.device)]
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            out = self.model(input_ids=chosen[:, None], attention_mask=attn, position_ids=next_pos,
                             past_key_values=cache, use_cache=True)
            logits, next_pos = out.logits[:, -1, :].float(), next_pos + 1
        width = int(lengths.max()) if n else 0
        mask = torch.arange(width)[None, :] < lengths[:, None]
        tokens, logps = tokens[:, :width], logps[:, :width] * mask
        texts = self.tok.batch_decode(tokens.masked_fill(~mask, self.pad), skip_special_tokens=True)
        return RolloutBatch(list(intents), prompt_ids, tokens, logps, mask, lengths,
                            [t.strip() for t in texts], group_size, policy_version)

    def greedy(self, intents: list[str], batch: int = 64) -> list[str]:
        """The greedy program of each intent, decoded ``batch`` intents at a time: the one
        evaluation decode of the project (SFT's val pass rate, GRPO's val pass, the report)."""
        texts: list[str] = []
        for i in range(0, len(intents), batch):
            texts += self.sample(intents[i : i + batch], 1, greedy=True).texts
        return texts


@torch.no_grad()
def sequence_logprobs(model, prompt_ids: list[int], completion: list[int], temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of ``completion`` after ``prompt_ids`` from one fresh forward pass (T,)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion, device=device)[:, None]).squeeze(1).cpu()
