"""Our GRPO on Ray against TRL's GRPOTrainer on the same work, CPU only.

Both sides train the shipped 10m policy (serve/assets/compressor_10m, fp32) on the intents of
DATA/train.parquet with the same step: 8 prompts x 8 completions (B*G = 64 samples), at most 96
new tokens, temperature 1.0, KL weight beta 0.04 to the frozen start, loss_type dapo (clip 0.2 /
0.28), AdamW lr 4e-5 (betas 0.9/0.99, weight decay 0.01, constant), grad clip 1.0, one optimizer
step per generation, and the project's reward (``validator_actors.validator.score``: +1 pass,
-1 fail, -0.01 per IR token, against each intent's reference hash).

* TRL 1.16 ``GRPOTrainer``: no vLLM, ``use_cpu``, no bf16, prompts ``<|bos|>intent<|sep|>`` as
  raw text, which TRL's tokenizer call turns into exactly our ``rollout.sampler.encode_prompts``
  ids (asserted). Torch threads 1 and 2 (``--side trl --threads N``).
* Ours: ``cluster.controller.GRPOController`` as in ``benchmarks/bench_grpo.py``'s
  ``bench_variant`` (sync, 2 rollout workers of 1 thread, 1 validator actor, no rewrites), with
  ``train.learner_threads`` 1 and 2 (``--side ours --threads N``).

Each variant runs in a fresh subprocess of this script (no thread setting or memory leaks
between them), ``--steps`` steps, the first dropped (warm-up). Variants run in ``--rounds``
rounds in alternating order (ABCD, DCBA, ...) so machine drift hits them alike; the load
average is printed before and after each. Figures per variant: samples/s (total samples /
total step time over the kept steps), CPU-seconds per sample (user+system CPU of the variant's
process and all its descendants: the Ray actors, GCS and raylet on our side; psutil, summed
over the kept steps), and where a step's time goes. TRL: generate (``_generate``), score
(``_calculate_rewards``), prep (the rest of ``_prepare_inputs``: the reference model's
forward, advantages), update (loss forward, backward, optimizer). TRL's own profiling timers
only reach wandb/mlflow/trackio, never the logs, so the methods are wrapped here. Ours:
generate, score, update (reference forward included), sync. "ours/1" is 1 learner thread, but
its 2 rollout workers generate in parallel (one thread each): compare CPU-seconds per sample
for the cost, samples/s for the wall time.

    .venv/bin/python benchmarks/bench_vs_trl.py --data data/default --out docs/bench/grpo_vs_trl.json
    .venv/bin/python benchmarks/bench_vs_trl.py --data data/default --smoke   # 1 round, 2 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
B, G, MAX_NEW, TEMPERATURE, BETA, LR = 8, 8, 96, 1.0, 0.04, 4e-5
PHASES = {"trl": ("t_generate", "t_score", "t_prep", "t_update"),
          "ours": ("t_generate", "t_score", "t_update", "t_sync")}
CPU_METHOD = ("psutil: user+system CPU seconds of the variant's process and all its descendants "
              "(Ray GCS, raylet and actors on our side), summed over the kept steps")


def tree_cpu_s() -> float:
    """User+system CPU seconds of this process and every descendant alive now."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited between listing and reading
            pass
    return total


# ---- TRL side ---------------------------------------------------------------------------
def trl_dataset(data: str, tok, seed: int = 0):
    """Prompts as raw text: the special tokens written out, nothing added by the tokenizer; in
    the order our controller draws them (``random.Random(seed).shuffle``), which TRL keeps with
    ``shuffle_dataset=False``: both sides train on the same intents, step by step."""
    import random

    import pyarrow.parquet as pq
    from datasets import Dataset

    table = pq.read_table(Path(data) / "train.parquet", columns=["intent", "reference_hash"])
    order = list(range(table.num_rows))
    random.Random(seed).shuffle(order)
    rows = table.take(order).to_pydict()
    prompts = [f"{tok.bos_token}{intent}{tok.sep_token}" for intent in rows["intent"]]
    return Dataset.from_dict({"prompt": prompts, **rows})


class TRLReward:
    """The project's reward against each intent's reference; keeps pass/IR-token figures."""

    __name__ = "validator_reward"

    def __init__(self, data: str):
        from validator_actors.tokens import TokenCounter
        from validator_actors.validator import Validator

        self.validator, self.counter = Validator(), TokenCounter(Path(data) / "tokenizer")
        self.scores: list = []

    def __call__(self, prompts, completions, completion_ids, intent, reference_hash, **_) -> list[float]:
        from validator_actors.validator import score

        scores = score(intent, completions, reference_hash, validator=self.validator, token_counter=self.counter)
        self.scores = scores
        return [s.reward for s in scores]


def timed(fn, store: dict, key: str):
    """``fn`` that adds its wall time to ``store[key]``."""
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            store[key] = store.get(key, 0.0) + time.perf_counter() - t0
    return wrapper


def trl_step_recorder(trainer, reward: TRLReward, rows: list, threads: int):
    """A TrainerCallback that appends one figures dict per optimizer step to ``rows``."""
    import torch
    from transformers import TrainerCallback

    acc: dict = {}
    trainer._generate = timed(trainer._generate, acc, "gen")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, acc, "score")
    trainer._prepare_inputs = timed(trainer._prepare_inputs, acc, "prep")

    class Recorder(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if torch.get_num_threads() != threads:  # in case anything reset it
                torch.set_num_threads(threads)
            acc.clear()
            acc["t0"], acc["cpu0"] = time.perf_counter(), tree_cpu_s()

        def on_step_end(self, args, state, control, **kw):
            step_time = time.perf_counter() - acc["t0"]
            gen, sc, prep = acc.get("gen", 0.0), acc.get("score", 0.0), acc.get("prep", 0.0)
            s = reward.scores
            rows.append({"step": state.global_step, "step_time": step_time, "samples": B * G,
                         "cpu_s": tree_cpu_s() - acc["cpu0"], "t_generate": gen, "t_score": sc,
                         "t_prep": prep - gen - sc, "t_update": step_time - prep,
                         "pass_rate": sum(x.valid for x in s) / len(s), "ir_tokens": sum(x.tokens for x in s) / len(s),
                         "torch_threads": torch.get_num_threads()})

        def on_log(self, args, state, control, logs=None, **kw):
            if rows and logs and "completions/mean_length" in logs:  # TRL's own figures of the step
                rows[-1].update(completion_len=logs["completions/mean_length"], trl_step_time=logs.get("step_time"))

    return Recorder()


def trl_config(steps: int, out: str, checkpointing: bool):
    """TRL's GRPOConfig for our step. GRPOConfig turns activation checkpointing on by default;
    off here unless asked (our learner does not recompute activations)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=B * G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=G, max_completion_length=MAX_NEW, temperature=TEMPERATURE,
        top_p=1.0, top_k=0, beta=BETA, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, adam_beta1=0.9,
        adam_beta2=0.99, max_grad_norm=1.0, use_vllm=False, use_cpu=True, bf16=False, fp16=False,
        logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0,
        disable_tqdm=True, log_completions=False, shuffle_dataset=False, activation_checkpointing=checkpointing)


def check_prompt_ids(trainer, tok, dataset) -> None:
    """TRL's own prompt tokenization (``GRPOTrainer._tokenize_prompts``: ``tokenizer(text=...)``
    for plain-text prompts) must give our sampler's ``<bos> intent <sep>`` ids: the first prompt
    through TRL's method, every prompt through the same tokenizer call."""
    from rollout.sampler import encode_prompts

    trl_ids = trainer._tokenize_prompts([dataset[0]["prompt"]])[0][0]
    ours = encode_prompts(tok, [dataset[0]["intent"]], max_prompt_len=192)[0]
    assert list(trl_ids) == ours, f"TRL prompt ids {list(trl_ids)[:8]}... differ from ours {ours[:8]}..."
    every = tok(text=list(dataset["prompt"]))["input_ids"]  # datasets 5 gives a Column, not a list
    bad = sum(a != b for a, b in zip(every, encode_prompts(tok, list(dataset["intent"]), max_prompt_len=192)))
    assert not bad, f"{bad} of {len(every)} TRL prompts tokenize unlike encode_prompts (intents over 190 tokens?)"


def run_trl(args) -> dict:
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5's gradient_checkpointing renames
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.init)
    model = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    dataset, reward, rows = trl_dataset(args.data, tok), TRLReward(args.data), []
    with tempfile.TemporaryDirectory() as tmp:
        config = trl_config(args.steps, tmp, args.trl_checkpointing)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                              processing_class=tok)
        check_prompt_ids(trainer, tok, dataset)
        trainer.remove_callback(PrinterCallback)  # its per-step log dicts; the recorder keeps the figures
        trainer.add_callback(trl_step_recorder(trainer, reward, rows, args.threads))
        trainer.train()
    return {"rows": rows, "torch_threads": torch.get_num_threads(), "prompt_ids_checked": True,
            "activation_checkpointing": bool(trainer.args.activation_checkpointing)}


# ---- our side ---------------------------------------------------------------------------
def our_config(path: str, steps: int, threads: int):
    """(RunConfig, learner_threads applied?) for ``bench_variant``'s run with TRL's settings."""
    from learner.config import RunConfig

    cfg = RunConfig.from_yaml(path)
    grpo = dataclasses.replace(cfg.grpo, beta=BETA, loss_type="dapo", temperature=TEMPERATURE, lr=LR,
                               max_completion_length=MAX_NEW)
    train = dataclasses.replace(cfg.train, mode="sync", rollout_workers=2, steps=steps, prompts_per_step=B,
                                group_size=G, max_new_tokens=MAX_NEW, eval_every=10**6, checkpoint_every=10**6,
                                tensorboard=False, patience=0, minimal_rewrites=0)
    applied = "learner_threads" in {f.name for f in dataclasses.fields(train)}
    if applied:
        train = dataclasses.replace(train, learner_threads=threads)
    else:
        print(f"[bench] WARNING: TrainConfig has no learner_threads yet; the learner runs with the "
              f"controller's default, not {threads} threads", flush=True)
    return dataclasses.replace(cfg, grpo=grpo, train=train), applied


def run_ours(args) -> dict:
    import ray

    from cluster.controller import GRPOController

    cfg, applied = our_config(args.config, args.steps, args.threads)
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ctl = GRPOController(cfg, args.data, args.init, tmp, log=lambda m: None)
            try:
                learner_threads = ray.get(ctl.learner.__ray_call__.remote(
                    lambda self: __import__("torch").get_num_threads()), timeout=600)
                while ctl.step < args.steps:
                    cpu0 = tree_cpu_s()
                    m = ctl.train_step()
                    rows.append({**{k: m[k] for k in ("step", "step_time", *PHASES["ours"], "pass_rate", "ir_tokens")},
                                 "samples": B * G, "cpu_s": tree_cpu_s() - cpu0})
                procs = len(psutil.Process().children(recursive=True))
            finally:
                ctl.shutdown()
    finally:
        ray.shutdown()
    return {"rows": rows, "learner_threads_field": applied, "learner_torch_threads": learner_threads,
            "processes_measured": procs + 1}


# ---- driver -----------------------------------------------------------------------------
def run_variant(side: str, threads: int, args) -> dict:
    """One variant in a fresh subprocess of this script; its per-step rows, first one dropped."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--threads", str(threads),
               "--steps", str(args.steps), "--json-out", str(out), "--data", args.data, "--init", args.init,
               "--config", args.config, "--ray-cpus", str(args.ray_cpus)]
        cmd += ["--trl-checkpointing"] if args.trl_checkpointing else []
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if side == "trl":
            env["OMP_NUM_THREADS"] = str(threads)
        load0, t0 = os.getloadavg(), time.perf_counter()
        print(f"[bench] {side}/{threads}: load average before {_load(load0)}", flush=True)
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=args.timeout)
        result = json.loads(out.read_text())
    load1 = os.getloadavg()
    print(f"[bench] {side}/{threads}: load average after {_load(load1)} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    result["rows"] = result["rows"][1:]  # the first step pays for warm-up
    result.update(load_before=list(load0), load_after=list(load1), wall_s=round(time.perf_counter() - t0, 1))
    return result


def _load(avg) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


def summarize(side: str, rows: list[dict]) -> dict:
    time_s = sum(r["step_time"] for r in rows)
    samples = sum(r["samples"] for r in rows)
    out = {"samples_per_s": round(samples / time_s, 2),
           "cpu_s_per_sample": round(sum(r["cpu_s"] for r in rows) / samples, 4),
           "step_time": round(statistics.mean(r["step_time"] for r in rows), 3)}
    for k in PHASES[side]:
        out[k] = round(statistics.mean(r[k] for r in rows), 3)
        out[f"{k}_share"] = round(sum(r[k] for r in rows) / time_s, 3)
    out["pass_rate"] = round(statistics.mean(r["pass_rate"] for r in rows), 3)
    out["ir_tokens"] = round(statistics.mean(r["ir_tokens"] for r in rows), 2)
    if all("completion_len" in r for r in rows):
        out["completion_len"] = round(statistics.mean(r["completion_len"] for r in rows), 1)
    out["steps"] = len(rows)
    return out


def ratios(table: dict) -> dict:
    """Ours over TRL at each side's best thread count and at 1 thread each: samples/s ours / TRL
    (> 1: ours faster) and CPU-s per sample TRL / ours (> 1: ours cheaper)."""
    best = {side: max((k for k in table if k.startswith(side + "/")), key=lambda k: table[k]["samples_per_s"],
                      default=None) for side in ("ours", "trl")}
    out = {"best": best}
    pairs = {"best_threads": (best["ours"], best["trl"]), "1_thread": ("ours/1", "trl/1")}
    for name, (a, b) in pairs.items():
        if a in table and b in table:
            out[f"samples_per_s_{name}"] = round(table[a]["samples_per_s"] / table[b]["samples_per_s"], 3)
            out[f"cpu_s_per_sample_trl_over_ours_{name}"] = round(
                table[b]["cpu_s_per_sample"] / table[a]["cpu_s_per_sample"], 3)
    return out


def markdown(table: dict) -> str:
    lines = ["| variant | samples/s | CPU-s/sample | step s | generate | score | prep (TRL) | update | sync |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, v in table.items():
        cells = [v.get(k) for k in ("t_generate", "t_score", "t_prep", "t_update", "t_sync")]
        lines.append(f"| {key} | {v['samples_per_s']} | {v['cpu_s_per_sample']} | {v['step_time']} | "
                     + " | ".join("-" if c is None else f"{c}" for c in cells) + " |")
    return "\n".join(lines)


def run_all(args, variants: list[tuple[str, int]]) -> tuple[dict, dict, dict]:
    runs = {f"{s}/{t}": [] for s, t in variants}
    by_round: dict[str, list[float]] = {k: [] for k in runs}
    meta: dict[str, list[dict]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for side, threads in (variants if r % 2 == 0 else variants[::-1]):
            key = f"{side}/{threads}"
            res = run_variant(side, threads, args)
            runs[key] += res.pop("rows")
            meta[key].append(res)
            this_run = summarize(side, runs[key][-(args.steps - 1):])
            by_round[key].append(this_run["samples_per_s"])
            print(f"[bench] round {r} {key}: {this_run}", flush=True)
    return {k: summarize(k.split("/")[0], v) for k, v in runs.items()}, by_round, meta


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "trl", "accelerate", "ray", "datasets")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/default")
    ap.add_argument("--init", default="serve/assets/compressor_10m")
    ap.add_argument("--config", default="tune_configs/10m.yaml")
    ap.add_argument("--steps", type=int, default=5, help="steps per run (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="trl/1,trl/2,ours/1,ours/2", help="SIDE/THREADS, comma-separated")
    ap.add_argument("--ray-cpus", type=int, default=min(2, os.cpu_count() or 2))
    ap.add_argument("--timeout", type=int, default=3600, help="seconds a variant may take")
    ap.add_argument("--trl-checkpointing", action="store_true",
                    help="keep TRL's default activation checkpointing (recomputes the forward in backward)")
    ap.add_argument("--smoke", action="store_true", help="1 round of 2 steps: checks the script end to end")
    ap.add_argument("--out", help="JSON written here (default docs/bench/grpo_vs_trl.json; "
                    "with --smoke, a file in the temp folder)")
    ap.add_argument("--side", choices=("trl", "ours"), help=argparse.SUPPRESS)  # one variant (subprocess)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        result = (run_trl if args.side == "trl" else run_ours)(args)
        Path(args.json_out).write_text(json.dumps(result))
        return
    if args.smoke:
        args.rounds, args.steps = 1, 2
    args.out = args.out or (str(Path(tempfile.gettempdir()) / "grpo_vs_trl_smoke.json") if args.smoke
                            else "docs/bench/grpo_vs_trl.json")
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is dropped)")
    variants = [(v.split("/")[0], int(v.split("/")[1])) for v in args.variants.split(",")]
    table, by_round, meta = run_all(args, variants)
    result = {"machine": f"{platform.machine()} {os.cpu_count()} logical CPUs, {platform.platform()}",
              "versions": versions(), "data": args.data, "init": args.init, "config": args.config,
              "B": B, "G": G, "max_new_tokens": MAX_NEW, "temperature": TEMPERATURE, "beta": BETA,
              "loss_type": "dapo", "lr": LR, "steps_per_run": args.steps, "rounds": args.rounds,
              "smoke": args.smoke, "trl_activation_checkpointing": args.trl_checkpointing,
              "cpu_method": CPU_METHOD, "variants": table, "ratios_ours_over_trl": ratios(table),
              "samples_per_s_by_round": by_round, "runs": meta}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(table))
    print(json.dumps(result["ratios_ours_over_trl"], indent=2))
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
