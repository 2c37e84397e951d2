"""The GRPO loss settings (the ``grpo:`` section of a run config) and their allowed values:
plain dataclasses, no torch, so a config is checked before anything heavy is imported.
``learner.grpo`` and ``learner.grpo_learner`` implement what they name."""

from __future__ import annotations

from dataclasses import dataclass

from rollout.rewrite_forms import IMITATION_SPANS

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")
CREDITS = ("sequence", "prefix")
SCORINGS = ("shared_prefix", "full_sequence")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class GRPOConfig:
    lr: float = 1e-5
    """AdamW learning rate for the policy."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay."""
    adam_beta2: float = 0.99
    """AdamW's second-moment decay (0.99: steadier than SFT's 0.95 for the noisier policy
    gradient)."""
    beta: float = 0.0
    """Weight of the k3 KL to the frozen reference (0 = no reference model kept)."""
    eps_low: float = 0.2
    """Lower clip range of the importance ratio."""
    eps_high: float = 0.28
    """Upper clip range ("clip-higher", DAPO)."""
    loss_type: str = "dapo"
    """Aggregation: grpo, bnpo, dr_grpo or dapo (as TRL's loss_type)."""
    scale: str = "group"
    """Advantage scaling: group, batch or none."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are taken at the same temperature."""
    max_completion_length: int = 96
    """Longest completion; dr_grpo's normalizer."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    credit: str = "sequence"
    """``sequence``: every token of a completion gets its group advantage (GRPO). ``prefix``:
    per-token advantages from the group's prefix tree (``learner.grpo.prefix_advantages``),
    only the tokens where the group's completions differ are credited."""
    unlikelihood: float = 0.0
    """Weight of the unlikelihood term -log(1 - p(<eos>)) on the validator-proven wrong endings
    of ``ScoredBatch.negatives`` (``rollout.rewrite.early_end_negatives``; 0 = off, and the
    controller builds none). Its gradient is p(<eos>) itself: nothing while the policy does not
    end there, a growing push back as soon as it starts to."""
    rewrite_nll: float = 0.0
    """Weight of an imitation term on the off-policy rewrite rows (``train.minimal_rewrites``):
    the mean negative log-likelihood of their tokens (at the sampling temperature), added to the
    loss (0 = off). The policy-gradient term credits a rewrite only where it parts from its group
    (with ``credit: prefix``, the collapsed set's first token); what follows a token the policy
    has never written (``C*!`` then ``&S?:audit``) gets no credit and stays improbable. This term
    teaches the validator-proven program as SFT on it would: one mean over the tokens of
    ``ScoredBatch.imitate`` (which ``rewrite_span`` picks; ``rollout.rewrite.rewrite_imitation``)."""
    rewrite_span: str = "all"
    """What ``rewrite_nll`` imitates: ``all`` (every rewrite token, plus the written-out sample's
    tokens after the point where the rewrite parts from it) or ``to_part`` (the rewrite's tokens
    up to and including that point: the shorter choice only, what follows left to the policy)."""
    scoring: str = "shared_prefix"
    """How the learner scores completions (``learner.scoring``): ``shared_prefix`` computes each
    group's prompt once and packs completions at their own lengths; ``full_sequence`` is the
    plain padded prompt + completion per row, the reference kept for debugging (same figures,
    slower)."""
    max_row_tokens: int = 256
    """``shared_prefix`` only: a group longer than this many tokens is split into runs of
    completions, each after its own copy of the prompt (same result; attention is dense within
    a row, so rows of long completions cost less split). 0 = every group whole in one row."""
    precision: str = "auto"
    """``bf16``: autocast the forward and backward (fp32 master weights, optimizer and
    log-prob/loss math); ``fp32``; ``auto``: bf16 where the device computes it natively (a GPU
    with bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere (``learner.scoring.native_bf16``)."""
    valid_floor: float | None = None
    """Raise a valid program's advantage to at least this (0: only failures are ever pushed down;
    None: off, plain group advantages). Pushing a valid sample's token down hands its
    probability to the runner-up, which for a peaked policy is often an early end of sequence."""

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"grpo.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.rewrite_span not in IMITATION_SPANS:
            raise ValueError(f"grpo.rewrite_span must be all or to_part, got {self.rewrite_span!r}")
        if self.credit not in CREDITS:
            raise ValueError(f"grpo.credit must be one of {CREDITS}, got {self.credit!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"grpo.scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.max_row_tokens < 0:
            raise ValueError(f"grpo.max_row_tokens must be >= 0 (0 = whole groups), got {self.max_row_tokens}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"grpo.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.scale not in SCALES:
            raise ValueError(f"grpo.scale must be one of {SCALES}, got {self.scale!r}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError(f"grpo.adam_beta1 and grpo.adam_beta2 must be in [0, 1), got {self.adam_beta1}, "
                             f"{self.adam_beta2}")
        if self.lr <= 0 or self.temperature <= 0 or min(self.beta, self.unlikelihood, self.rewrite_nll) < 0:
            raise ValueError("grpo.lr and grpo.temperature must be > 0; grpo.beta, grpo.unlikelihood and "
                             "grpo.rewrite_nll >= 0")

