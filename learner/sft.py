"""Supervised warm start: next-token loss on the program (and <eos>) given the intent.

Evaluates on val every ``eval_every`` steps (val loss and greedy pass rate through the
validator), keeps the best checkpoint by pass rate (then loss), stops early on a plateau.
Uses the GPU when there is one, every CPU core when not.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from learner.config import RunConfig
from learner.optim_state import load_optimizer_tensors, optimizer_tensors
from learner.policy import build_policy, count_params, load_policy, save_policy
from learner.scoring import resolve_precision
from rollout.datagen.dataset import read_split
from rollout.sampler import Sampler, encode_prompts
from validator_actors.forms import draw_form
from validator_actors.validator import Validator

IGNORE = -100
RESUME_DIR = "resume"
"""Under OUT: the state of the last evaluation, for ``tinycompress sft --resume``."""


def build_examples(tokenizer, rows: list[dict], max_prompt_len: int,
                   target: str = "program") -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per row: ``<bos> intent <sep> program <eos>``.

    ``target`` names the program column: ``program`` (canonical), ``surface`` or ``minimal``.
    """
    prompts = encode_prompts(tokenizer, [r["intent"] for r in rows], max_prompt_len)
    return _with_programs(tokenizer, prompts, [r[target] for r in rows])


def form_examples(tokenizer, prompts: list[list[int]], rows: list[dict], rng: random.Random,
                  shuffle: float) -> list[tuple[list[int], int]]:
    """Like :func:`build_examples` with ``prompts`` already encoded, each program one
    equivalent form of the row's ``surface`` drawn by ``rng`` (``validator_actors.forms``)."""
    texts = [draw_form(r["surface"], rng, "legacy" in r["tags"], shuffle) for r in rows]
    return _with_programs(tokenizer, prompts, texts)


def _with_programs(tokenizer, prompts: list[list[int]], programs: list[str]) -> list[tuple[list[int], int]]:
    """Each prompt's ids followed by its program's and ``<eos>``, with the prompt's length."""
    ids = tokenizer(programs, add_special_tokens=False)["input_ids"]
    return [(p + c + [tokenizer.eos_token_id], len(p)) for p, c in zip(prompts, ids)]


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (IGNORE on prompt and padding)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over completion tokens. logits (B, T, V), labels (B, T) with IGNORE."""
    pred = logits[:, :-1].float()  # position t predicts token t+1
    target = labels[:, 1:]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


def batches(examples, batch_size: int, rng: random.Random):
    """Shuffled batches, sorted by length within windows of 50 batches to cut padding."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i][0]))
        groups = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(groups)
        yield from ([examples[i] for i in g] for g in groups)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for ``bf16``, and for ``auto`` where the device computes bf16 natively
    (``learner.scoring.native_bf16``): faster at equal quality there; on a CPU without
    AVX512-BF16 or AMX a bf16 training step measured 20x slower than fp32."""
    return resolve_precision(precision, device) == "bf16"


@dataclass
class SFTResult:
    best_step: int = -1
    best_pass_rate: float = -1.0
    best_val_loss: float = math.inf
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


class SFTTrainer:
    """Plain-class trainer; ``fit()`` runs the whole warm start and writes ``out``."""

    def __init__(self, cfg: RunConfig, data_dir: str | Path, out: str | Path, device=None, log=print,
                 init: str | Path | None = None, resume: bool = False):
        from transformers import AutoTokenizer

        self.cfg, self.s = cfg, cfg.sft
        self.data_dir, self.out, self.log, self.init = Path(data_dir), Path(out), log, init
        self.resume = resume
        self.device = torch.device(device) if device else pick_device()
        if self.device.type == "cpu":
            torch.set_num_threads(self.s.num_threads or os.cpu_count() or 1)
        self.tok = AutoTokenizer.from_pretrained(str(self.data_dir / "tokenizer"))
        self.model = (self._from_checkpoint(init) if init else
                      build_policy(cfg.model.policy, self.tok, seed=self.s.seed)).to(self.device)
        self.bf16 = use_bf16(self.s.precision, self.device)
        self.train_rows = read_split(self.data_dir, "train").to_pylist()
        if self.s.paraphrases:
            self.train_rows += read_split(self.data_dir, "train_paraphrases").to_pylist()
        self.val_rows = read_split(self.data_dir, "val").to_pylist()
        self.train = self._examples(self.train_rows, random.Random(self.s.seed))
        self.val = self._examples(self.val_rows[: self.s.eval_samples], random.Random(self.s.seed + 1))
        self.total_steps = math.ceil(self.s.epochs * len(self.train) / self.s.batch_size)
        if self.s.max_steps:
            self.total_steps = min(self.total_steps, self.s.max_steps)
        self.opt = self._optimizer()
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.validator = Validator()
        self.nonfinite_in_a_row = 0

    def _from_checkpoint(self, init: str | Path):
        """The policy saved at ``init``, which must be this config's preset and this data's
        tokenizer (fine-tuning continues a warm start; it cannot change either)."""
        from dataclasses import asdict

        model, tok, meta = load_policy(init, trainable_encoding=self.cfg.model.d_enc is not None)
        if meta.get("policy") != asdict(self.cfg.model.policy):
            raise ValueError(f"--init {init}: its policy {meta.get('policy')} is not the config's "
                             f"{asdict(self.cfg.model.policy)}")
        if tok.get_vocab() != self.tok.get_vocab():
            raise ValueError(f"--init {init}: its tokenizer differs from {self.data_dir / 'tokenizer'}")
        return model.train()

    def _examples(self, rows: list[dict], rng: random.Random) -> list[tuple[list[int], int]]:
        """(ids, prompt length) per row for ``sft.target`` (``forms``: one draw by ``rng``)."""
        if self.s.target != "forms":
            column = "program" if self.s.target == "canonical" else self.s.target
            return build_examples(self.tok, rows, self.s.max_prompt_len, column)
        prompts = encode_prompts(self.tok, [r["intent"] for r in rows], self.s.max_prompt_len)
        return form_examples(self.tok, prompts, rows, rng, self.s.forms_shuffle)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.s.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.s.lr, betas=(self.s.adam_beta1, self.s.adam_beta2),
                                 fused=self.device.type == "cuda")

    def _lr_factor(self, step: int) -> float:
        if step < self.s.warmup_steps:
            return (step + 1) / self.s.warmup_steps
        progress = (step - self.s.warmup_steps) / max(1, self.total_steps - self.s.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.s.min_lr_ratio + (1 - self.s.min_lr_ratio) * cosine

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return completion_loss(logits, batch["labels"])

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One update; a non-finite loss skips the update (after 10 in a row, training stops)."""
        self.model.train()
        loss = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= 10:
                raise FloatingPointError("10 non-finite losses in a row: lower sft.lr or use fp32")
            return float("nan")
        self.nonfinite_in_a_row = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        losses = []
        for i in range(0, len(self.val), 64):
            batch = collate(self.val[i : i + 64], self.tok.pad_token_id)
            losses.append(float(self.loss(batch)) * len(batch["input_ids"]))
        rows = self.val_rows[: self.s.eval_samples]
        sampler = Sampler(self.model, self.tok, max_new_tokens=self.s.max_new_tokens,
                          max_prompt_len=self.s.max_prompt_len)
        texts = sampler.greedy([r["intent"] for r in rows])
        passed = sum(self.validator.validate(p, r["reference_hash"]).valid for p, r in zip(texts, rows))
        return {"val_loss": sum(losses) / len(self.val), "val_pass_rate": passed / len(rows)}

    def fit(self) -> SFTResult:
        """Train to ``total_steps`` (or a plateau). With ``resume``, continue from ``OUT/resume/``,
        the state saved at the last evaluation: the same batches, optimizer and schedule follow,
        so the run ends as an uninterrupted one would."""
        from tqdm import tqdm

        res, rng, step = SFTResult(), random.Random(self.s.seed), 0
        bad_evals, epoch, skip, elapsed = 0, 0, 0, 0.0
        if self.resume:
            step, bad_evals, epoch, skip, elapsed = self._restore(res, rng)
        else:
            (self.out / "sft_log.jsonl").unlink(missing_ok=True)  # a new run starts a new log
        t0 = self._t0 = time.perf_counter() - elapsed
        self.log(f"[sft] {self.cfg.model.preset}: {count_params(self.model) / 1e6:.2f}M params, "
                 f"{self.total_steps} steps, device {self.device}, bf16 {self.bf16}"
                 + (f", resumed at step {step}" if self.resume else ""))
        bar = tqdm(total=self.total_steps, initial=step, desc="sft", unit="step", mininterval=5)
        while step < self.total_steps and not res.stopped_early:
            if self.s.target == "forms" and epoch > 0:  # a new form of every program each epoch
                self.train = form_examples(self.tok, self._train_prompts(), self.train_rows,
                                           random.Random(f"{self.s.seed}/{epoch}"), self.s.forms_shuffle)
            epoch += 1
            epoch_rng = rng.getstate()  # the batch order of this epoch, drawn lazily from here
            for k, batch in enumerate(batches(self.train, self.s.batch_size, rng), 1):
                if k <= skip:  # resumed: these batches were trained on before the stop
                    continue
                coll = collate(batch, self.tok.pad_token_id)
                loss = self.step(coll)
                step += 1
                res.tokens += int(coll["attention_mask"].sum())
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{res.tokens / (time.perf_counter() - t0):.0f}", refresh=False)
                if step % self.s.eval_every == 0 or step == self.total_steps:
                    bad_evals = self._checkpoint_if_best(step, loss, res, bad_evals)
                    if self.s.patience and bad_evals >= self.s.patience:
                        res.stopped_early = True
                    self._save_resume(step, bad_evals, epoch, k, epoch_rng, res)
                if step >= self.total_steps or res.stopped_early:
                    break
            skip = 0
        bar.close()
        res.steps, res.seconds = step, time.perf_counter() - t0
        self._write_summary(res)
        shutil.rmtree(self.out / RESUME_DIR, ignore_errors=True)  # finished: nothing to resume
        return res

    def _save_resume(self, step: int, bad_evals: int, epoch: int, batch_in_epoch: int, epoch_rng, res) -> None:
        """Weights, optimizer, schedule and data position: ``OUT/resume/``, replaced atomically."""
        from safetensors.torch import save_file, save_model

        tmp = self.out / f"{RESUME_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(self.model, str(tmp / "model.safetensors"))
        tensors, groups = optimizer_tensors(self.opt, self.model)
        save_file(tensors | {"torch_rng": torch.get_rng_state()}, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "bad_evals": bad_evals, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "epoch_rng": [epoch_rng[0], list(epoch_rng[1]), epoch_rng[2]], "param_groups": groups,
                 "scheduler": self.sched.state_dict(), "seconds": time.perf_counter() - self._t0,
                 "result": {k: getattr(res, k) for k in ("best_step", "best_pass_rate", "best_val_loss",
                                                         "tokens", "stopped_early", "history")}}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(self.out / RESUME_DIR, ignore_errors=True)
        os.replace(tmp, self.out / RESUME_DIR)

    def _restore(self, res: SFTResult, rng: random.Random) -> tuple[int, int, int, int, float]:
        from safetensors.torch import load_file, load_model

        path = self.out / RESUME_DIR
        if not (path / "state.json").exists():
            raise FileNotFoundError(f"--resume: nothing to resume in {self.out} ({RESUME_DIR}/state.json is missing)")
        state = json.loads((path / "state.json").read_text())
        load_model(self.model, str(path / "model.safetensors"), device=str(self.device))
        tensors = load_file(str(path / "optimizer.safetensors"))
        torch.set_rng_state(tensors.pop("torch_rng"))
        load_optimizer_tensors(self.opt, self.model, tensors, state["param_groups"], self.device)
        self.sched.load_state_dict(state["scheduler"])
        version, internal, gauss = state["epoch_rng"]
        rng.setstate((version, tuple(internal), gauss))
        for key, value in state["result"].items():
            setattr(res, key, value)
        log = self.out / "sft_log.jsonl"
        if log.exists():  # evaluations after the saved step are redone
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= state["step"]]
            log.write_text("".join(line + "\n" for line in kept))
        # the saved epoch counter is this epoch's, already counted: the loop counts it again
        return state["step"], state["bad_evals"], state["epoch"] - 1, state["batch_in_epoch"], state["seconds"]

    def _train_prompts(self) -> list[list[int]]:
        """The train rows' prompt ids (``self.train`` starts with them)."""
        return [ids[:n_prompt] for ids, n_prompt in self.train]

    def _checkpoint_if_best(self, step: int, loss: float, res: SFTResult, bad_evals: int) -> int:
        ev = self.evaluate()
        ev.update(step=step, train_loss=loss, seconds=round(time.perf_counter() - self._t0, 1),
                  tokens=res.tokens)
        res.history.append(ev)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "sft_log.jsonl", "a") as fh:
            fh.write(json.dumps(ev) + "\n")
        better = (ev["val_pass_rate"], -ev["val_loss"]) > (res.best_pass_rate, -res.best_val_loss)
        self.log(f"[sft] step {step}: val pass {ev['val_pass_rate']:.3f} loss {ev['val_loss']:.4f}"
                 f"{' (best, saved)' if better else ''}")
        if not better:
            return bad_evals + 1
        res.best_step, res.best_pass_rate, res.best_val_loss = step, ev["val_pass_rate"], ev["val_loss"]
        meta = {"stage": "sft", "step": step, "val_pass_rate": ev["val_pass_rate"],
                "val_loss": ev["val_loss"], "data": self._data_meta(), "config": self.cfg.to_yaml(),
                "policy_version": 0, "init": str(self.init) if self.init else None}
        save_policy(self.model, self.tok, self.cfg.model.policy, self.out, meta)
        return 0

    def _data_meta(self) -> dict:
        stats = json.loads((self.data_dir / "stats.json").read_text())
        return {"dir": str(self.data_dir), "seed": stats["seed"], "n": stats["n"],
                "codebook_version": stats["codebook_version"]}

    def _write_summary(self, res: SFTResult) -> None:
        params = count_params(self.model)
        summary = {
            "preset": self.cfg.model.preset, "params": params, "device": str(self.device),
            "bf16": self.bf16, "steps": res.steps, "seconds": round(res.seconds, 1),
            "tokens": res.tokens, "tokens_per_s": round(res.tokens / res.seconds, 1),
            "model_flops_per_s": round(6 * params * res.tokens / res.seconds, 1),
            "best_step": res.best_step, "best_val_pass_rate": res.best_pass_rate,
            "best_val_loss": res.best_val_loss, "stopped_early": res.stopped_early,
            "target": self.s.target, "init": str(self.init) if self.init else None,
        }
        (self.out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.log(f"[sft] done: {json.dumps(summary)}")
