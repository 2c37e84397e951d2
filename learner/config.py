"""Run configuration: frozen dataclasses loaded strictly from ``tune_configs/*.yaml``.

An unknown key, a wrong type or an impossible value is an error at start that names the key.
``RunConfig.to_yaml`` writes back a file that loads to the same config (round trip).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from learner.grpo_config import GRPOConfig
from learner.presets import PRESETS, PolicyConfig
from rollout.rewrite_forms import REWRITE_FORMS
from validator_actors.cli_args import yaml_error


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "10m"
    """Policy preset: tiny, 10m or 50m (see learner.policy.PRESETS)."""
    d_enc: int | None = None
    """Learned-encoding width (factorized embeddings), None for plain embeddings."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        self.policy  # validates d_enc against the preset's width

    @property
    def policy(self) -> PolicyConfig:
        return PRESETS[self.preset].with_(d_enc=self.d_enc)


SFT_TARGETS = ("surface", "canonical", "minimal", "forms")


@dataclass(frozen=True)
class SFTConfig:
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor as a fraction of lr."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on norms and biases)."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW's second-moment decay."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    epochs: float = 4.0
    """Passes over the train split (fractional allowed); max_steps caps it."""
    max_steps: int = 0
    """Hard cap on optimizer steps (0 = no cap)."""
    eval_every: int = 250
    """Steps between evaluations on val."""
    eval_samples: int = 300
    """Val intents decoded greedily at each evaluation."""
    patience: int = 4
    """Stop after this many evaluations without a better val pass rate (0 = never)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 autocast where it measured faster with equal quality)."""
    seed: int = 0
    """Seed for init, shuffling and sampling."""
    num_threads: int = 0
    """CPU threads for torch (0 = every core)."""
    max_prompt_len: int = 192
    """Intent tokens kept (longer intents are cut)."""
    max_new_tokens: int = 96
    """Longest generated program at evaluation."""
    target: str = "surface"
    """Program to learn: surface (intent order), canonical, minimal, or forms: for each example
    and epoch one equivalent form drawn at random (``validator_actors.forms``; every complete set
    listed or starred, a default context written or not, output paths full or short, a legacy
    alias or its macro, each by a fair coin). All score alike."""
    forms_shuffle: float = 0.1
    """With ``target: forms``: the chance that a clause's items (and a program's clauses) are
    written in a random order rather than the intent's."""
    paraphrases: bool = True
    """Also train on train_paraphrases.parquet (new wordings of the train requests)."""

    def __post_init__(self):
        checks = [
            (self.lr > 0, "sft.lr must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "sft.min_lr_ratio must be in [0, 1]"),
            (self.warmup_steps >= 0, "sft.warmup_steps must be >= 0"),
            (self.weight_decay >= 0, "sft.weight_decay must be >= 0"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "sft.adam_beta1 and sft.adam_beta2 must be in [0, 1)"),
            (self.batch_size >= 1, "sft.batch_size must be >= 1"),
            (self.max_steps >= 0, "sft.max_steps must be >= 0 (0 = no cap)"),
            (self.patience >= 0, "sft.patience must be >= 0 (0 = never stop early)"),
            (self.grad_clip > 0, "sft.grad_clip must be > 0"),
            (self.num_threads >= 0, "sft.num_threads must be >= 0 (0 = every core)"),
            (self.max_new_tokens >= 1, "sft.max_new_tokens must be >= 1"),
            (self.epochs > 0, "sft.epochs must be > 0"),
            (self.eval_every >= 1, "sft.eval_every must be >= 1"),
            (self.eval_samples >= 1, "sft.eval_samples must be >= 1"),
            (self.precision in ("auto", "bf16", "fp32"), "sft.precision must be auto, bf16 or fp32"),
            (self.max_prompt_len >= 8, "sft.max_prompt_len must be >= 8"),
            (self.target in SFT_TARGETS, f"sft.target must be one of {', '.join(SFT_TARGETS)}"),
            (0 <= self.forms_shuffle <= 1, "sft.forms_shuffle must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class TrainConfig:
    """The distributed GRPO run (``tinycompress train``)."""

    steps: int = 200
    """GRPO steps (one update each)."""
    prompts_per_step: int = 16
    """Intents per step (B); split evenly across the rollout workers."""
    group_size: int = 8
    """Completions per intent (G); GRPO compares them within the group."""
    rollout_workers: int = 2
    """Rollout worker actors."""
    validator_actors: int = 2
    """Validator actors in the scoring pool."""
    max_new_tokens: int = 96
    """Longest sampled program."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    eval_every: int = 25
    """Steps between greedy evaluations on val."""
    eval_samples: int = 200
    """Val intents in each evaluation."""
    checkpoint_every: int = 25
    """Steps between resumable checkpoints (policy, optimizer, RNG, data position, version)."""
    keep_checkpoints: int = 3
    """Resumable checkpoints kept, the newest (0 = every one); ``best/`` is kept apart."""
    seed: int = 0
    """Seed for the data order and sampling."""
    mode: str = "sync"
    """sync: each step samples with the newest weights. async: the next step's rollouts are
    generated while this step trains (one policy version of lag, logged as ``staleness``)."""
    max_staleness: int = 1
    """Async only: the most policy versions a batch's rollouts may lag the learner (>= 1)."""
    patience: int = 0
    """Stop after this many evaluations without a better val reward (0 = never)."""
    minimal_rewrites: int = 0
    """Group members replaced by the IR-minimal rewrite of the group's best valid sample (0 = off)."""
    rewrite_form: str = "shortcut"
    """Which of the equally short rewrites wins (``rollout.rewrite.shortest_rewrite``): ``edit``
    keeps every token of the sample but a default context, ``shortcut`` also drops the default
    output root."""
    oversample: int = 1
    """Dynamic sampling (DAPO): draw ``prompts_per_step * oversample`` intents, sample and score
    every group, and train on at most ``prompts_per_step`` of them: those whose rewards differ
    (after the rewrites). A group that all scores the same has zero advantage, adds no gradient
    and only dilutes the loss's token mean. 1 = off: train on every group drawn."""
    split: str = "train"
    """The dataset file GRPO draws its intents from: ``train`` (what SFT trained on) or ``rl``
    (``tinycompress data --rl N``: intents no supervised step saw)."""
    wrong_steps: bool = False
    """Also give the unlikelihood term (``grpo.unlikelihood``, which must be > 0) the steps the
    validator proves wrong in each group's best sample: a lone set member written as its full
    set, and the clauses' last term left out (``rollout.rewrite.wrong_step_negatives``)."""
    imitate_best: bool = False
    """Also imitate (``grpo.rewrite_nll``, which must be > 0) each group's best valid sample where
    the group also failed: self-imitation of the validator-proven program on exactly the intents
    the policy still gets wrong (``rollout.rewrite.best_sample_imitation``). Rewrites teach only
    groups with two valid samples; a policy that fails an intent greedily seldom has them."""
    set_token_init: float = 0.0
    """At the start of a run (not on ``--resume``), set each full-set token's embedding (``C*``,
    ``I*?``, ...) to this times the mean of its members' (``learner.policy.init_set_tokens``),
    then publish those weights to the rollout workers. 0 = off: the warm start as saved."""
    tensorboard: bool = True
    """Also write every metric to RUN/tensorboard."""
    rollout_resource: str | None = None
    """A custom Ray resource each rollout worker asks for (0.01 of it), to pin the workers to the
    nodes started with it, e.g. ``ray start --resources='{"rollout": 100}'`` (None = anywhere)."""
    learner_resource: str | None = None
    """A custom Ray resource the learner actor asks for (0.01 of it), to pin it to the nodes
    started with it, e.g. a GPU group's ``ray start --resources='{"learner": 1}'`` (None =
    anywhere: on a cluster with a GPU the learner still asks for one)."""
    learner_cpus: float = 0.5
    """Logical CPUs the learner actor reserves on a CPU-only cluster (a GPU learner takes 0.01)."""
    learner_threads: int = 0
    """Torch threads of a CPU learner (0 = its CPU share ``learner_cpus`` rounded up, at least
    one). In sync mode the rollout workers sit idle while the learner updates, so on a machine
    of its own a learner may use more threads than its share (docs/BENCHMARKS.md measures 1
    and 2)."""
    worker_cpus: float = 0.5
    """Logical CPUs each rollout worker actor reserves."""
    validator_cpus: float = 0.25
    """Logical CPUs each validator actor reserves. The defaults fit a run with 2 workers and 1
    validator in 2 CPUs; smaller values pack more onto a node (a Tune trial into 1 CPU), at
    the price of the actors sharing cores."""

    @property
    def learner_torch_threads(self) -> int:
        """Torch threads the CPU learner runs: ``learner_threads``, or its CPU share rounded up."""
        return self.learner_threads or max(1, math.ceil(self.learner_cpus))

    def actor_cpus(self, learner_cpus: float | None = None) -> float:
        """Logical CPUs the run's actors reserve together (``learner_cpus`` overrides the
        learner's share, e.g. 0.01 for a GPU learner)."""
        learner = self.learner_cpus if learner_cpus is None else learner_cpus
        return learner + self.worker_cpus * self.rollout_workers + self.validator_cpus * self.validator_actors

    def __post_init__(self):
        if self.mode not in ("sync", "async"):
            raise ValueError(f"train.mode must be sync or async, got {self.mode!r}")
        if self.max_staleness < 1:
            raise ValueError("train.max_staleness must be >= 1 (for no lag use train.mode: sync)")
        if self.patience < 0:
            raise ValueError("train.patience must be >= 0 (0 = never stop early)")
        if not 0 <= self.minimal_rewrites < self.group_size:
            raise ValueError(f"train.minimal_rewrites must be in [0, group_size) = [0, {self.group_size}), "
                             f"got {self.minimal_rewrites}")
        if self.split not in ("train", "rl"):
            raise ValueError(f"train.split must be train or rl, got {self.split!r}")
        if self.set_token_init < 0:
            raise ValueError(f"train.set_token_init must be >= 0 (0 = off), got {self.set_token_init}")
        if self.oversample < 1:
            raise ValueError(f"train.oversample must be >= 1 (1 = no dynamic sampling), got {self.oversample}")
        if self.rewrite_form not in REWRITE_FORMS:
            raise ValueError(f"train.rewrite_form must be one of {REWRITE_FORMS}, got {self.rewrite_form!r}")
        if self.group_size < 2:
            raise ValueError(f"train.group_size must be >= 2 (got {self.group_size}): GRPO's "
                             "advantage compares completions within a group")
        if self.prompts_per_step < 1 or self.rollout_workers < 1 or self.validator_actors < 1:
            raise ValueError("train.prompts_per_step, train.rollout_workers and train.validator_actors must be >= 1")
        if self.prompts_per_step % self.rollout_workers:
            raise ValueError(f"train.prompts_per_step ({self.prompts_per_step}) must be divisible by "
                             f"train.rollout_workers ({self.rollout_workers})")
        if self.learner_threads < 0:
            raise ValueError(f"train.learner_threads must be >= 0 (0 = follow learner_cpus), got {self.learner_threads}")
        if min(self.learner_cpus, self.worker_cpus, self.validator_cpus) <= 0:
            raise ValueError("train.learner_cpus, worker_cpus and validator_cpus must be > 0 (logical CPUs; "
                             f"got {self.learner_cpus}, {self.worker_cpus}, {self.validator_cpus})")
        for name in ("rollout_resource", "learner_resource"):
            _check_resource_name(f"train.{name}", getattr(self, name))
        if self.keep_checkpoints < 0:
            raise ValueError(f"train.keep_checkpoints must be >= 0 (0 = keep every one), got {self.keep_checkpoints}")
        if min(self.steps, self.eval_every, self.eval_samples, self.checkpoint_every) < 1:
            raise ValueError("train.steps, eval_every, eval_samples and checkpoint_every must be >= 1")


RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _check_resource_name(key: str, name: str | None) -> None:
    """A custom resource must be a non-empty name of its own, not one Ray sizes itself."""
    if name is not None and (not name.strip() or name in RAY_RESOURCES or name.startswith("node:")):
        raise ValueError(f"{key} must name a custom Ray resource (a node's --resources key), not "
                         f"{name!r}: CPU, GPU, memory and node: resources are Ray's own (None = anywhere)")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.wrong_steps and self.grpo.unlikelihood <= 0:
            raise ValueError("train.wrong_steps needs grpo.unlikelihood > 0 (the weight of the term they feed)")
        if self.train.imitate_best and self.grpo.rewrite_nll <= 0:
            raise ValueError("train.imitate_best needs grpo.rewrite_nll > 0 (the weight of the term it feeds)")
        if self.grpo.loss_type == "dr_grpo" and self.train.max_new_tokens > self.grpo.max_completion_length:
            # Dr. GRPO divides by this constant, which must bound every completion (the loss
            # would refuse the first long one mid-run)
            raise ValueError(f"grpo.loss_type dr_grpo needs grpo.max_completion_length >= train.max_new_tokens, got "
                             f"{self.grpo.max_completion_length} < {self.train.max_new_tokens}")

    def shaping(self):
        """The :class:`rollout.shaping.ShapingConfig` of this run (imported here: it needs torch)."""
        from rollout.shaping import ShapingConfig

        t, g = self.train, self.grpo
        return ShapingConfig(keep_groups=t.prompts_per_step, minimal_rewrites=t.minimal_rewrites,
                             rewrite_form=t.rewrite_form, imitate_rewrites=g.rewrite_nll > 0,
                             rewrite_span=g.rewrite_span, imitate_best=t.imitate_best,
                             negatives=g.unlikelihood > 0, wrong_steps=t.wrong_steps)

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        return build_section(cls, raw or {}, "")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Iterable[str] = ()) -> RunConfig:
        """The config in ``path``, with ``overrides`` (``key.sub=value``, the value read as YAML)
        applied before it is checked. Every error is a ValueError naming the file or override."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config {path} not found (presets live in tune_configs/)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(yaml_error(path, e)) from None
        try:
            raw = apply_overrides(raw if raw is not None else {}, overrides)
            return cls.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(asdict(self), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """``raw`` with each ``key.sub=value`` set (the value parsed as YAML: ``2``, ``1e-4``,
    ``true``, ``null``, ``[1, 2]``); the result is checked by the config like the file."""
    if not isinstance(raw, dict):
        raise TypeError(f"config must be a mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {item!r}: expected key.sub=value, e.g. train.steps=2")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; a number is meant
            with contextlib.suppress(ValueError):
                value = float(value)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return raw


def _check_type(value, hint, key: str):
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is not type(None) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise TypeError(f"{key} must be {names}, got {value!r}")


def build_section(cls, raw, prefix: str):
    """The dataclass ``cls`` from the mapping ``raw``: unknown keys and wrong types are errors
    naming the dotted key (``prefix.key``); nested dataclass fields are built the same way."""
    if not isinstance(raw, dict):
        raise TypeError(f"{prefix or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown key {where}{unknown[0]}; known keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_section(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)
