"""The GRPO learner as a plain class: scored rollouts in, one policy update out.

The Ray learner actor is a thin shell over :class:`GRPOLearner` (built by
:meth:`GRPOLearner.from_checkpoint`, saved by :meth:`GRPOLearner.save`). It re-scores the sampled
completions under the current weights (same temperature as the sampler; each group's prompt
computed once, ``learner.scoring.shared_prefix_logprobs``), takes the
sampler's log-probs as the old policy, computes group advantages from the rewards, and
applies :func:`learner.grpo.grpo_loss`. Weights leave as one versioned flat buffer of numpy
arrays (zero-copy through Ray's object store), never one message per parameter.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from learner.grpo import group_advantages, grpo_loss, prefix_advantages
from learner.grpo_config import GRPOConfig  # noqa: F401 (re-exported)
from learner.optim_state import load_optimizer_tensors, optimizer_tensors
from learner.policy import FactorizedEmbedding, init_set_tokens, load_policy, policy_config_from_meta, save_policy
from learner.scoring import full_sequence_logprobs, pack_groups, resolve_precision, shared_prefix_logprobs
from rollout.batch import RolloutBatch, ScoredBatch, WeightsRef

OPTIMIZER_TENSORS, OPTIMIZER_META = "optimizer.safetensors", "optimizer.json"


class GRPOLearner:
    """Holds the policy, its optimizer, and optionally a frozen reference copy."""

    def __init__(self, model, tokenizer, cfg: GRPOConfig, device: str | torch.device = "cpu", reference=None):
        """``reference``: the frozen model of the KL term (default: a copy of ``model``). A resumed
        run passes the run's starting policy, not the checkpoint it resumes from."""
        self.cfg, self.tok, self.device = cfg, tokenizer, torch.device(device)
        self.model = model.to(self.device)
        self.ref = None
        if cfg.beta > 0:
            self.ref = (reference.to(self.device) if reference is not None else copy.deepcopy(model))
            self.ref.eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.precision = resolve_precision(cfg.precision, self.device)
        self.version = 0
        self.meta: dict = {}  # the checkpoint's tinycompress.json, when built from one

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, cfg: GRPOConfig, *, threads: int = 1,
                        set_token_init: float = 0.0, reference: str | Path | None = None,
                        reference_set_token_init: float = 0.0) -> GRPOLearner:
        """The learner of a policy checkpoint, on the GPU when there is one (else ``threads`` CPU
        threads). A learned encoding keeps training as its factors (rollout workers get it folded).
        ``set_token_init``: :func:`learner.policy.init_set_tokens` at that scale. ``reference`` (a
        resumed run's starting checkpoint, its full-set rows initialized with
        ``reference_set_token_init``): the KL term's frozen model; default ``checkpoint`` itself."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(threads)
        model, tok, meta = load_policy(checkpoint, device=device, trainable_encoding=True)
        if set_token_init:
            init_set_tokens(model, tok, set_token_init)
        ref = None
        if reference is not None and cfg.beta > 0:
            ref, _, _ = load_policy(reference, device=device)
            if reference_set_token_init:
                init_set_tokens(ref, tok, reference_set_token_init)
        learner = cls(model, tok, cfg, device=device, reference=ref)
        learner.meta = meta
        return learner

    def completion_logprobs(self, model, rollout: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs, entropy), both (N, T), of the sampled completions under ``model``, by
        ``cfg.scoring`` (``learner.scoring``); zero on padding."""
        cfg, pad = self.cfg, self.tok.pad_token_id
        if cfg.scoring == "full_sequence":
            return full_sequence_logprobs(model, rollout.prompt_ids, rollout.completion_ids, rollout.mask,
                                          rollout.group_size, pad, cfg.temperature, self.precision)
        packed = pack_groups(rollout.prompt_ids, rollout.completion_ids, rollout.mask, rollout.group_size, pad,
                             max_row=cfg.max_row_tokens or None)
        return shared_prefix_logprobs(model, packed, cfg.temperature, self.precision)

    def advantages(self, batch: ScoredBatch) -> torch.Tensor:
        """Group advantages of ``batch``: (N,), or (N, T) with ``credit: prefix``; valid rows
        floored at ``cfg.valid_floor`` if set."""
        ro = batch.rollout
        if self.cfg.credit == "prefix":
            adv = prefix_advantages(batch.rewards.float(), ro.completion_ids, ro.mask, ro.group_size, self.cfg.scale)
        else:
            adv = group_advantages(batch.rewards.float(), ro.group_size, self.cfg.scale)
        if self.cfg.valid_floor is not None:
            valid = batch.valid if adv.dim() == 1 else batch.valid[:, None]
            adv = torch.where(valid, adv.clamp(min=self.cfg.valid_floor), adv)
        return adv

    def unlikelihood(self, negatives: RolloutBatch) -> tuple[torch.Tensor, float]:
        """(mean of -log(1 - p) over the last token of each row, mean p): Welleck et al. 2019's
        unlikelihood loss on each wrong ending, at the sampling temperature."""
        logp, _ = self.completion_logprobs(self.model, negatives)
        last = (negatives.lengths - 1).to(self.device)[:, None]
        p_end = logp.gather(1, last).squeeze(1).exp()
        return -torch.log1p(-p_end.clamp(max=1 - 1e-6)).mean(), float(p_end.detach().mean())

    def loss(self, batch: ScoredBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss with its graph, metrics) of ``batch`` under the current weights: the policy
        scored with grad, the reference (beta > 0) without."""
        ro, cfg = batch.rollout, self.cfg
        logp, entropy = self.completion_logprobs(self.model, ro)
        ref_logp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_logp, _ = self.completion_logprobs(self.ref, ro)
        adv = self.advantages(batch).to(self.device)
        old_logp = ro.logprobs.to(self.device)
        if ro.offpolicy is not None and bool(ro.offpolicy.any()):
            # rows the sampler did not draw (IR rewrites) have no behaviour log-probs: ratio 1
            old_logp = torch.where(ro.offpolicy.to(self.device)[:, None], logp.detach(), old_logp)
        loss, metrics = grpo_loss(
            logp, old_logp, ref_logp, adv, ro.mask.to(self.device),
            cfg.loss_type, cfg.eps_low, cfg.eps_high, cfg.beta, cfg.max_completion_length,
            entropy=entropy,
        )
        if cfg.unlikelihood > 0 and batch.negatives is not None:
            term, p_end = self.unlikelihood(batch.negatives)
            loss = loss + cfg.unlikelihood * term
            metrics.update(unlikelihood=float(term.detach()), early_end_p=p_end)
        imitate = batch.imitate if batch.imitate is not None else (
            ro.mask & ro.offpolicy[:, None] if ro.offpolicy is not None else None)
        if cfg.rewrite_nll > 0 and imitate is not None and bool(imitate.any()):
            imitate = imitate.to(self.device)
            nll = -(logp * imitate).sum() / imitate.sum()
            loss = loss + cfg.rewrite_nll * nll
            metrics["rewrite_nll"] = float(nll.detach())
        return loss, metrics

    def update(self, batch: ScoredBatch) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the loss and its metrics."""
        self.model.train()
        loss, metrics = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.version += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm),
                "reward_mean": float(batch.rewards.mean()), "valid_rate": float(batch.valid.float().mean()),
                "policy_version": self.version, **metrics}

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """AdamW state as named tensors (for safetensors) plus JSON-able hyperparameters."""
        tensors, groups = optimizer_tensors(self.opt, self.model)
        return tensors, {"param_groups": groups, "version": self.version}

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        load_optimizer_tensors(self.opt, self.model, tensors, meta["param_groups"], self.device)
        for group in self.opt.param_groups:  # the config's lr, not the saved one: a resume may lower it
            group["lr"] = self.cfg.lr
        self.version = int(meta["version"])

    def save(self, path: str | Path, meta: dict, with_optimizer: bool = False) -> Path:
        """The policy as a checkpoint folder (``learner.policy.save_policy``, ``meta`` plus the
        policy version) and, with ``with_optimizer``, ``optimizer.safetensors`` + ``optimizer.json``."""
        path = save_policy(self.model, self.tok, policy_config_from_meta(self.meta), path,
                           {**meta, "policy_version": self.version})
        if with_optimizer:
            from safetensors.torch import save_file

            tensors, opt_meta = self.optimizer_state()
            save_file(tensors, str(path / OPTIMIZER_TENSORS))
            (path / OPTIMIZER_META).write_text(json.dumps(opt_meta))
        return path

    def load_optimizer(self, path: str | Path) -> int:
        """Restore the optimizer and policy version :meth:`save` wrote into ``path``."""
        from safetensors.torch import load_file

        path = Path(path)
        self.load_optimizer_state(load_file(str(path / OPTIMIZER_TENSORS)), json.loads((path / OPTIMIZER_META).read_text()))
        return self.version

    def weights(self) -> WeightsRef:
        """The current weights as one versioned flat buffer of numpy arrays.

        A learned encoding (``d_enc``) trains as its two factors here but is published folded,
        as the plain ``embed_tokens.weight`` that a rollout worker's model has: samplers need
        only the product, and it is one array instead of two.
        """
        state = self.model.state_dict()
        emb = self.model.model.embed_tokens
        if isinstance(emb, FactorizedEmbedding):
            state = {k: v for k, v in state.items() if not k.startswith("model.embed_tokens.")}
            with torch.no_grad():
                state["model.embed_tokens.weight"] = emb.folded()
        arrays = {k: v.detach().float().cpu().contiguous().numpy() for k, v in state.items()}
        return WeightsRef(self.version, arrays)
