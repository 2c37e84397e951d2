"""``tinycompress ppo``: RLlib's PPO on the token-level environment, from a policy checkpoint.

RLlib does the training (``PPOConfig``: env runners as Ray actors, its learner, GAE, the
clipped surrogate and value losses); this module configures it and keeps a run folder in the
layout ``tinycompress train`` writes:

    RUN/config.yaml        the settings that ran
    RUN/metrics.jsonl      one line per iteration: step, env_steps, episodes, reward_mean,
                           pass_rate, ir_tokens, episode_len, step_time and where it went
                           (t_sample, t_update, env_step_ms, inference_ms); val_pass_rate and
                           val_ir_tokens every eval_every iterations
    RUN/tensorboard/       the same figures
    RUN/rllib/             RLlib's own checkpoint of the algorithm (resume)
    RUN/checkpoints/step_N the policy as a checkpoint folder (tinycompress eval, serve)

Validation is greedy decoding in the environment (the argmax of the masked action logits,
the policy PPO trains), scored by the validator on the first ``eval_samples`` val intents.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ENV_NAME = "tinycompress-token-env"


@dataclass(frozen=True)
class PPOSettings:
    """The ``ppo:`` section of a PPO config (RLlib's names where they exist)."""

    iterations: int = 50
    """PPO iterations (one ``algo.train()`` each)."""
    lr: float = 1e-5
    gamma: float = 1.0
    """Discount: 1, the reward comes once, at the end of the program."""
    lambda_: float = 0.95
    """GAE lambda."""
    clip_param: float = 0.2
    vf_loss_coeff: float = 0.5
    entropy_coeff: float = 0.0
    num_epochs: int = 2
    train_batch_size: int = 512
    """Env steps (program tokens) per iteration."""
    minibatch_size: int = 128
    env_runners: int = 1
    max_program_tokens: int = 96
    split: str = "train"
    """Where the episodes' intents come from: train or rl."""
    eval_every: int = 10
    eval_samples: int = 200
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    """Policy checkpoints kept, the newest (0 = all)."""
    seed: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        counts = {k: getattr(self, k) for k in ("iterations", "num_epochs", "train_batch_size", "minibatch_size",
                                                "max_program_tokens", "eval_every", "eval_samples",
                                                "checkpoint_every")}
        bad = [k for k, v in counts.items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"ppo.{bad[0]} must be an integer >= 1, got {counts[bad[0]]!r}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"ppo.keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if self.env_runners < 0 or self.minibatch_size > self.train_batch_size:
            raise ValueError("ppo.env_runners must be >= 0 and ppo.minibatch_size <= ppo.train_batch_size")
        if not (self.lr > 0 and 0 < self.gamma <= 1 and 0 <= self.lambda_ <= 1 and self.clip_param > 0):
            raise ValueError("ppo.lr and ppo.clip_param must be > 0, ppo.gamma in (0, 1], ppo.lambda_ in [0, 1]")
        if self.split not in ("train", "rl"):
            raise ValueError(f"ppo.split must be train or rl, got {self.split!r}")


def load_config(path: str | Path, overrides=()) -> tuple[str, PPOSettings]:
    """(model preset, settings) of a PPO config file with ``--set`` overrides; ValueError naming
    the key for anything unknown or out of range."""
    from learner.config import apply_overrides, build_section
    from validator_actors.cli_args import yaml_error

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"config {path} not found") from None
    except yaml.YAMLError as e:
        raise ValueError(yaml_error(path, e)) from None
    raw = apply_overrides(raw, overrides)
    unknown = sorted(set(raw) - {"model", "ppo"})
    if unknown:
        raise ValueError(f"{path}: unknown section {unknown[0]}; a PPO config has model and ppo")
    preset = (raw.get("model") or {}).get("preset")
    if not preset:
        raise ValueError(f"{path}: model.preset is missing")
    try:
        return preset, build_section(PPOSettings, raw.get("ppo") or {}, "ppo")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def _episode_figures():
    """An RLlib callback class logging each episode's pass (0/1) and IR tokens."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class EpisodeFigures(RLlibCallback):
        def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
            info = episode.get_infos(-1)
            if metrics_logger is not None and "valid" in info:
                metrics_logger.log_value("pass_rate", float(info["valid"]), reduce="mean")
                metrics_logger.log_value("ir_tokens", float(info["tokens"]), reduce="mean")

    return EpisodeFigures


class PPORun:
    """One PPO run in ``out``: build (or restore) the algorithm, iterate, log, evaluate, save."""

    def __init__(self, settings: PPOSettings, data: str | Path, init: str | Path, out: str | Path,
                 resume: bool = False, log=print):
        import ray
        from ray.rllib.algorithms.ppo import PPOConfig
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec
        from ray.tune.registry import register_env

        from learner.ppo_module import CompressorRLModule
        from rollout.token_env import TokenCompressionEnv

        self.s, self.data, self.init, self.out, self.log = settings, Path(data), Path(init), Path(out), log
        env_config = {"data_dir": str(self.data), "split": settings.split, "tokenizer": str(self.init),
                      "max_program_tokens": settings.max_program_tokens}
        register_env(ENV_NAME, lambda cfg: TokenCompressionEnv(**cfg))
        self.val = TokenCompressionEnv(data_dir=self.data, split="val", tokenizer=self.init,
                                       max_program_tokens=settings.max_program_tokens)
        config = (PPOConfig()
                  .environment(ENV_NAME, env_config=env_config)
                  .env_runners(num_env_runners=settings.env_runners, num_cpus_per_env_runner=0.5,
                               rollout_fragment_length="auto")
                  .learners(num_learners=0)
                  .callbacks(_episode_figures())
                  .debugging(seed=settings.seed)
                  .training(lr=settings.lr, gamma=settings.gamma, lambda_=settings.lambda_,
                            clip_param=settings.clip_param, vf_loss_coeff=settings.vf_loss_coeff,
                            entropy_coeff=settings.entropy_coeff, num_epochs=settings.num_epochs,
                            train_batch_size_per_learner=settings.train_batch_size,
                            minibatch_size=settings.minibatch_size)
                  .rl_module(rl_module_spec=RLModuleSpec(
                      module_class=CompressorRLModule,
                      model_config={"checkpoint": str(self.init), "vocabulary": self.val.vocabulary.tolist()})))
        self.algo = config.build_algo()
        self.step = 0
        if resume:
            from cluster.run_folder import truncate_metrics

            state = json.loads((self.out / "rllib" / "tinycompress_state.json").read_text())
            self.algo.restore_from_path(str(self.out / "rllib"))
            self.step = state["step"]
            truncate_metrics(self.out, self.step, lambda m: log(f"[ppo] {m}"))
            log(f"[ppo] resumed from {self.out / 'rllib'} at iteration {self.step}")
        self.tb = None
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1)
        self._ray = ray

    def module(self):
        return self.algo.get_module()

    def evaluate(self) -> dict:
        """Greedy programs (argmax of the masked action logits) of the first ``eval_samples`` val
        intents, decoded 32 at a time in lockstep, scored by the validator."""
        import numpy as np
        import torch
        from ray.rllib.core.columns import Columns

        from rollout.token_env import END

        env, module = self.val, self.module()
        judged = []
        for start in range(0, min(self.s.eval_samples, len(env.rows)), 32):
            programs = {i: [] for i in range(start, min(start + 32, self.s.eval_samples, len(env.rows)))}
            done = {}
            while len(done) < len(programs):
                live = [i for i in programs if i not in done]
                views = [env.observe(i, programs[i]) for i in live]
                batch = {k: torch.as_tensor(np.stack([v[k] for v in views])) for k in views[0]}
                with torch.no_grad():
                    logits = module.forward_inference({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS]
                for i, action in zip(live, logits.argmax(-1).tolist()):
                    if action == END:
                        done[i] = env.judge(i, programs[i])[1]
                    else:
                        programs[i].append(action)
            judged += done.values()
        tokens = [info["tokens"] for info in judged if info["valid"]]
        return {"val_pass_rate": round(float(np.mean([info["valid"] for info in judged])), 4),
                "val_ir_tokens": round(float(np.mean(tokens)), 3) if tokens else None}

    @functools.cached_property
    def _init_tokenizer_and_policy(self):
        """The warm start's tokenizer and policy config, read once (every checkpoint uses them)."""
        from learner.policy import load_policy, policy_config_from_meta

        _, tok, meta = load_policy(self.init)
        return tok, policy_config_from_meta(meta)

    def save(self) -> None:
        from cluster.run_folder import checkpoint_folder, point_latest
        from learner.policy import save_policy

        self.algo.save_to_path(str(self.out / "rllib"))
        (self.out / "rllib" / "tinycompress_state.json").write_text(json.dumps({"step": self.step}) + "\n")
        tok, policy = self._init_tokenizer_and_policy
        folder = checkpoint_folder(self.out, self.step)
        save_policy(self.module().policy, tok, policy, folder,
                    {"stage": "ppo", "step": self.step, "init": str(self.init)})
        point_latest(folder, self.s.keep_checkpoints)

    def run(self) -> dict:
        s = self.s
        while self.step < s.iterations:
            t0 = time.perf_counter()
            result = self.algo.train()
            self.step += 1
            row = {"step": self.step, **iteration_figures(result), "step_time": round(time.perf_counter() - t0, 3)}
            last = self.step == s.iterations
            if self.step % s.eval_every == 0 or last:
                row.update(self.evaluate())
            if self.step % s.checkpoint_every == 0 or last:
                self.save()
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.tb.add_scalar(key, value, self.step)
            self.log(f"[ppo] iteration {self.step}/{s.iterations}: " + " ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k != "step" and isinstance(v, float)))
        return {"steps": self.step, "last": row if s.iterations else {}}

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        self.algo.stop()


def iteration_figures(result: dict) -> dict:
    """What ``metrics.jsonl`` keeps of one RLlib training result: episode figures (programs),
    lifetime counts, and where the time went (sampling vs learning; per env step, the env and
    the module's forward pass)."""
    runners, timers = result.get("env_runners", {}), result.get("timers", {})

    def ms(value):
        return round(1000 * value, 3) if isinstance(value, (int, float)) else None

    return {"env_steps": int(result.get("num_env_steps_sampled_lifetime", 0)),
            "episodes": int(runners.get("num_episodes_lifetime", 0)),
            "reward_mean": runners.get("episode_return_mean"), "pass_rate": runners.get("pass_rate"),
            "ir_tokens": runners.get("ir_tokens"), "episode_len": runners.get("episode_len_mean"),
            "t_sample": timers.get("env_runner_sampling_timer"), "t_update": timers.get("learner_update_timer"),
            "env_step_ms": ms(runners.get("env_step_timer")), "inference_ms": ms(runners.get("rlmodule_inference_timer"))}


def _ppo(args: argparse.Namespace) -> int:
    from learner.presets import PRESETS, check_init
    from validator_actors.cli_args import UsageError, fresh_run_dir, need_checkpoint, need_data

    sets = list(args.set) + ([f"ppo.iterations={args.max_steps}"] if args.max_steps is not None else [])
    try:
        preset, settings = load_config(args.config, sets)
    except ValueError as e:
        raise UsageError(f"bad config: {e}") from None
    if preset not in PRESETS:
        raise UsageError(f"bad config: model.preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    need_data(args.data, "val.parquet", f"{settings.split}.parquet")
    need_checkpoint(args.init, "--init")
    try:
        check_init(args.init, PRESETS[preset])
    except ValueError as e:
        raise UsageError(str(e)) from None
    fresh_run_dir(args.out, args.resume, args.overwrite, "rllib/tinycompress_state.json")
    import ray

    from cluster.runtime import init_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"model": {"preset": preset},
                                                     "ppo": dataclasses.asdict(settings)}, sort_keys=False))
    init_ray()
    try:
        run = PPORun(settings, args.data, args.init, out, resume=args.resume,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
        try:
            result = run.run()
        finally:
            run.close()
    finally:
        ray.shutdown()
    print(json.dumps({"out": str(out), **result}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from validator_actors.cli_args import run_arguments

    p = sub.add_parser("ppo", help="PPO through RLlib on the token-level environment, from a policy checkpoint")
    run_arguments(p, config="a PPO config, e.g. tune_configs/10m_ppo.yaml", steps="ppo.iterations",
                  example="ppo.lr=3e-6", init="the policy to start from (e.g. serve/assets/compressor_10m)",
                  out="run folder: metrics.jsonl, checkpoints/, rllib/, config.yaml")
    p.set_defaults(func=_ppo)
