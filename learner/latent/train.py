"""Training one arm: a latent reader at one K, or the view-trained reasoner of the baselines.

Every arm of a seed starts from one warm start: the reasoner trained ``warm_steps`` on whole
contexts that fit its window (where the answer is always in view, so it learns to read one).
From there, for ``steps`` more: the baselines share one reasoner, trained on every view in turn
(step s uses view ``VIEWS[s % 5]`` at a budget drawn from ``budgets``), so that each view is
read by a model that has seen it; a latent arm trains its encoder (a copy of the warm reasoner,
or the reasoner itself in the ``shared`` control), compressor and reasoner together on the
answer loss plus ``aux_weight`` times the pointer loss. All see the same batches for the same
number of steps (fixed, so pausing the process changes nothing).

A run folder holds config.json, curve.jsonl (one line per step, and one per validation),
state/ (weights, optimizer, step: written every ``save_every`` steps and at the end; a rerun
continues from it and gives the same weights as an uninterrupted run) and curves.png.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from learner.latent.data import load_split, load_tokenizer
from learner.latent.model import LatentConfig, LatentReader, mean_pool, read
from learner.latent.views import VIEWS, Example, context_batch, examples, text_ids, token_view
from learner.optim_state import load_optimizer_tensors, optimizer_tensors
from learner.policy import build_policy, special_ids
from learner.presets import PRESETS, PolicyConfig
from learner.sft import IGNORE, batches, collate, completion_loss

WARM = "warm"
BASELINE = "views"
ARMS: dict[str, dict] = {"latent": {}, "shared": {"shared": True}, "no_time": {"time_embeddings": False},
                         "single_layer": {"features": "last"}, "no_projection": {"projection": False},
                         "no_aux": {"aux_weight": 0.0}, "query": {"question": True}}
"""Latent arms as changes to :class:`LatentConfig`: the full model, the same-model control and
the four ablations; ``query`` is the variant whose compressor sees the question. ``views`` (:data:`BASELINE`) is the baselines' reasoner; ``warm``
(:data:`WARM`) the reasoner every other arm starts from."""


@dataclass(frozen=True)
class TrainConfig:
    """Model sizes and optimization, the same for every arm."""

    preset: str = "tiny"
    """Policy preset the reasoner and encoder start from (learner.presets.PRESETS)."""
    width: int = 64
    """d_model of reasoner and encoder (and of the latents)."""
    layers: int = 2
    """Transformer blocks of reasoner and encoder."""
    window: int = 96
    """Context tokens the reasoner's window holds (the ``full`` view's limit)."""
    budgets: tuple[int, ...] = (4, 8, 16, 32)
    """K values; the view-trained reasoner draws its budget from these."""
    warm_steps: int = 2500
    """Steps of the warm start: the reasoner on whole contexts that fit the window."""
    steps: int = 400
    """Steps of each arm after the warm start."""
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    """Initialization and batch order (the same order for every arm of a seed)."""
    queries: int = 4
    """Questions about other jobs added after the asked one in training (0 = only the asked one)."""
    val_rows: int = 150
    """Validation histories scored for the curves."""
    eval_every: int = 100
    save_every: int = 100
    max_new_tokens: int = 10
    threads: int = 1

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or not self.budgets or min(self.budgets) < 1:
            raise ValueError("steps, batch_size and every budget must be >= 1")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")

    @property
    def policy(self) -> PolicyConfig:
        """Reasoner and encoder: the preset at ``width`` and ``layers`` (long positions for the
        encoder's contexts)."""
        heads = PRESETS[self.preset].num_heads
        return PRESETS[self.preset].with_(hidden_size=self.width, num_layers=self.layers, num_heads=heads,
                                          intermediate_size=int(self.width * 8 / 3 + 63) // 64 * 64,
                                          max_seq_len=1024)


class ViewReader(nn.Module):
    """The baselines' reasoner: the policy, reading views of the context."""

    def __init__(self, policy: PolicyConfig, tokenizer, seed: int):
        super().__init__()
        self.reasoner = build_policy(policy, tokenizer, seed=seed)


def build_reader(arm: str, k: int, tcfg: TrainConfig, tokenizer) -> nn.Module:
    if arm in (WARM, BASELINE):
        return ViewReader(tcfg.policy, tokenizer, tcfg.seed)
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {[BASELINE, *ARMS]}")
    return LatentReader(LatentConfig(k=k, **ARMS[arm]), tcfg.policy, tokenizer, tcfg.seed)


def reader_inputs(model: nn.Module, batch: list[Example], view: str, k: int, window: int, special: dict,
                  answer: bool = True, queries: int = 0
                  ) -> tuple[torch.Tensor | None, list[tuple[list[int], list[bool]]], torch.Tensor | None]:
    """What the reasoner reads for ``batch``: (prefix vectors (B, P, d) or None, text ids with
    their target flags (:func:`text_ids`), pointer log-probabilities (B, N) or None). ``view`` is
    ``latent`` or one of VIEWS."""
    sep, eos = special["sep"], special["eos"]
    if view == "latent":
        z, scores = model.latents(context_batch(batch))
        return z, [text_ids(e, sep, eos, answer=answer, queries=queries) for e in batch], scores
    if view == "mean":
        emb = model.reasoner.get_input_embeddings()
        prefix = torch.stack([mean_pool(emb(torch.tensor(e.context)), k) for e in batch])  # (B, k, d)
        return prefix, [text_ids(e, sep, eos, answer=answer, queries=queries) for e in batch], None
    cut = [token_view(e, view, k, window) or e.context[-window:] for e in batch]  # full: the window
    return None, [text_ids(e, sep, eos, c, answer, queries) for e, c in zip(batch, cut)], None


def collate_targets(texts: list[tuple[list[int], list[bool]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (IGNORE where not a target)."""
    text = collate([(ids, len(ids)) for ids, _ in texts], pad_id)
    for i, (ids, target) in enumerate(texts):
        text["labels"][i, : len(ids)] = torch.where(torch.tensor(target), torch.tensor(ids), IGNORE)
    return text


def batch_loss(model, batch, view: str, k: int, tcfg: TrainConfig, special: dict,
               queries: int = 0) -> tuple[torch.Tensor, dict]:
    """Answer cross-entropy over every target token (+ aux_weight x pointer cross-entropy for
    latent arms), with ``queries`` extra questions per history."""
    prefix, texts, scores = reader_inputs(model, batch, view, k, tcfg.window, special, queries=queries)
    text = collate_targets(texts, special["pad"])
    labels = text["labels"]
    if prefix is not None:
        labels = torch.cat([labels.new_full(prefix.shape[:2], IGNORE), labels], 1)
    answer = completion_loss(read(model.reasoner, prefix, text), labels)
    parts = {"answer_loss": answer.item()}
    if scores is None:
        return answer, parts
    target = torch.tensor([e.relevant_turn for e in batch])
    aux = F.nll_loss(scores, target)
    parts["aux_loss"] = aux.item()
    return answer + model.cfg.aux_weight * aux, parts


def step_view(arm: str, k: int, step: int, tcfg: TrainConfig) -> tuple[str, int]:
    if arm == WARM:
        return "full", 0
    if arm != BASELINE:
        return "latent", k
    return VIEWS[step % len(VIEWS)], random.Random(f"views/{tcfg.seed}/{step}").choice(tcfg.budgets)


def lr_at(step: int, total: int, tcfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth at ``total`` steps."""
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    done = (step - tcfg.warmup) / max(1, total - tcfg.warmup)
    return tcfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def arm_steps(arm: str, tcfg: TrainConfig) -> int:
    return tcfg.warm_steps if arm == WARM else tcfg.steps


def batch_stream(train: list[Example], tcfg: TrainConfig, start: int):
    """Endless length-sorted shuffled batches from the seed, the first ``start`` skipped."""
    rng = random.Random(f"latent-batches/{tcfg.seed}")

    def endless():
        while True:
            for b in batches([(e.context, e) for e in train], tcfg.batch_size, rng):
                yield [e for _, e in b]

    stream = endless()
    for _ in range(start):
        next(stream)
    return stream


@torch.no_grad()
def val_loss(model, val: list[Example], arm: str, k: int, tcfg: TrainConfig, special: dict) -> float:
    """Mean answer loss on ``val`` (the baselines' reasoner: over every view at the middle budget)."""
    model.eval()
    views = VIEWS if arm == BASELINE else ("full",) if arm == WARM else ("latent",)
    budget = k if arm != BASELINE else sorted(tcfg.budgets)[len(tcfg.budgets) // 2]
    losses = [batch_loss(model, val[i:i + 64], v, budget, tcfg, special)[1]["answer_loss"]
              for v in views for i in range(0, len(val), 64)]
    model.train()
    return sum(losses) / len(losses)


def save_state(run: Path, model, opt, step: int) -> None:
    tmp = run / "state.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    tensors, groups = optimizer_tensors(opt, model)
    save_file(tensors, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "param_groups": groups}))
    shutil.rmtree(run / "state", ignore_errors=True)
    tmp.rename(run / "state")


def load_state(run: Path, model, opt=None) -> int:
    """Load run/state into ``model`` (and ``opt``); the step reached (0 with no state)."""
    if not (run / "state" / "state.json").exists():
        return 0
    load_model(model, str(run / "state" / "model.safetensors"))
    state = json.loads((run / "state" / "state.json").read_text())
    if opt is not None:
        load_optimizer_tensors(opt, model, load_file(str(run / "state" / "optim.safetensors")), state["param_groups"])
    return state["step"]


def warm_start(model: nn.Module, init: Path) -> None:
    """Load a finished warm run's reasoner into ``model``'s reasoner, and into its encoder too
    where it has one of its own (a copy that then trains apart)."""
    warm, _ = load_reader(init)
    model.reasoner.load_state_dict(warm.reasoner.state_dict())
    if getattr(model, "encoder", None) is not None:
        model.encoder.load_state_dict(warm.reasoner.model.state_dict())


def train(run: str | Path, data: str | Path, arm: str, k: int, tcfg: TrainConfig, init: str | Path | None = None,
          log=print) -> nn.Module:
    """Train ``arm`` at budget ``k`` into ``run``, from the warm run ``init`` if given,
    continuing the run's own state if it has one; the model."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tcfg.threads)
    tok = load_tokenizer(data)
    special = special_ids(tok)
    train_ex, val_ex = examples(tok, load_split(data, "train")), examples(tok, load_split(data, "val"))[:tcfg.val_rows]
    if arm == WARM:  # whole contexts only: the answer is always in view
        train_ex, val_ex = ([e for e in rows if e.n_context <= tcfg.window] for rows in (train_ex, val_ex))
    model = build_reader(arm, k, tcfg, tok)
    config = json.loads(json.dumps({"arm": arm, "k": k, "data": str(data), "init": str(init) if init else None,
                                    "train": asdict(tcfg)}))
    if (run / "config.json").exists() and json.loads((run / "config.json").read_text()) != config:
        raise ValueError(f"{run} holds a run with another configuration; choose another folder")
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if init is not None:
        warm_start(model, Path(init))
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    start, total = load_state(run, model, opt), arm_steps(arm, tcfg)
    stream = batch_stream(train_ex, tcfg, start)
    with open(run / "curve.jsonl", "a") as curve:
        for step in range(start, total):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, tcfg)
            view, budget = step_view(arm, k, step, tcfg)
            loss, parts = batch_loss(model, next(stream), view, budget, tcfg, special, tcfg.queries)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip)
            opt.step()
            curve.write(json.dumps({"step": step, "loss": loss.item(), **parts}) + "\n")
            if (step + 1) % tcfg.eval_every == 0 or step + 1 == total:
                v = val_loss(model, val_ex, arm, k, tcfg, special)
                curve.write(json.dumps({"step": step, "val_answer_loss": v}) + "\n")
                log(f"{arm} k={k} seed={tcfg.seed} step {step + 1}/{total} loss {loss.item():.3f} val {v:.3f}")
            if (step + 1) % tcfg.save_every == 0 or step + 1 == total:
                curve.flush()
                save_state(run, model, opt, step + 1)
    model.eval()
    return model


def load_reader(run: str | Path, data: str | Path | None = None) -> tuple[nn.Module, dict]:
    """(trained model, config) of a finished run folder."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    tcfg = TrainConfig(**dict(config["train"], budgets=tuple(config["train"]["budgets"])))
    model = build_reader(config["arm"], config["k"], tcfg, load_tokenizer(data or config["data"]))
    step, total = load_state(run, model), arm_steps(config["arm"], tcfg)
    if step < total:
        raise ValueError(f"{run} stopped at step {step} of {total}: rerun `tinycompress latent train` on it")
    return model.eval(), config


def quick(tcfg: TrainConfig) -> TrainConfig:
    """The smoke configuration: tiny widths, a few steps."""
    return replace(tcfg, width=32, layers=2, warm_steps=6, steps=6, batch_size=8, warmup=2, val_rows=16, eval_every=3,
                   save_every=3, max_new_tokens=6)
