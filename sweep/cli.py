"""``tinycompress tune``: a Ray Tune sweep of GRPO runs, ASHA on the val reward.

Joins the cluster in ``RAY_ADDRESS`` when set (as under ``ray job submit``), else starts an
embedded local Ray instance. ``OUT/`` gets ``trials/`` (Tune's experiment: one folder per trial
with its run, checkpoints and TensorBoard logs), ``warm_start/``, ``results.parquet``,
``results.md`` and ``best/`` (the best trial's best policy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from validator_actors.cli_args import UsageError, need_data, yaml_error

EXPERIMENT = "trials"


def run_sweep(config: str | Path, data_dir: str | Path, out: str | Path, smoke: bool = False,
              resume: bool = False, log=print, overrides: list[str] | tuple = ()) -> dict:
    sweep = _load(config, smoke, overrides)  # every point checked before Ray (or torch) is imported
    need_data(data_dir, "val.parquet")
    import ray
    from ray import tune

    from sweep.trial import TrialSetup, mean_intent_tokens
    from sweep.warm_start import prepare_warm_starts

    out = Path(out).resolve()
    experiment = out / EXPERIMENT
    if resume and not tune.Tuner.can_restore(experiment):
        raise UsageError(f"--resume: no sweep to resume under {experiment}; drop --resume to start one")
    if not resume and experiment.exists():
        raise UsageError(f"--out {out}: {experiment} exists; pass --resume to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir).resolve()
    samples = {sweep.trial_config(p, {}).train.eval_samples for p in sweep.presets}
    setup = TrialSetup(sweep, str(data_dir), prepare_warm_starts(sweep, data_dir, out / "warm_start", log),
                       mean_intent_tokens(data_dir, samples))
    _init_ray(sweep, log)
    try:
        return _fit(setup, out, resume, log)
    finally:
        ray.shutdown()


def _load(config: str | Path, smoke: bool, overrides=()):
    """The sweep file, checked; any error in it is a UsageError naming the file and key."""
    import yaml

    from sweep.space import SweepConfigError, load_sweep

    try:
        return load_sweep(config, smoke=smoke, overrides=overrides)
    except yaml.YAMLError as e:
        raise UsageError(f"bad sweep file: {yaml_error(config, e)}") from None
    except (SweepConfigError, ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(f"bad sweep file: {e}") from None


def _init_ray(sweep, log) -> None:
    """Join RAY_ADDRESS, or start Ray with enough logical CPUs for max_concurrent trials."""
    from cluster.runtime import init_ray
    from sweep.trial import trial_cpus

    per_trial = max(trial_cpus(sweep.trial_config(p, {})) for p in sweep.presets)
    cpus = max(os.cpu_count() or 1, math.ceil(sweep.tune.max_concurrent * per_trial))
    if not init_ray(cpus):
        log(f"[tune] embedded Ray with {cpus} logical CPUs ({os.cpu_count()} cores; a trial's placement "
            f"group takes {per_trial:g}, {sweep.tune.max_concurrent} side by side)")


def _fit(setup, out: Path, resume: bool, log) -> dict:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sweep.results import export_best, results_table, write_tables
    from sweep.trial import run_trial, trial_resources

    sweep = setup.sweep
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    lambda trial: trial_resources(trial, setup, gpu))
    if resume:
        tuner = tune.Tuner.restore(str(out / EXPERIMENT), trainable=trainable, resume_errored=True)
    else:
        t = sweep.tune
        presets = [name for name, entry in sweep.presets.items() for _ in range(entry.trials)]
        scheduler = ASHAScheduler(time_attr="step", max_t=sweep.steps, grace_period=t.grace_period,
                                  reduction_factor=t.reduction_factor, stop_last_trials=False)
        tuner = tune.Tuner(
            trainable,
            param_space={"preset": tune.grid_search(presets),
                         "point": {k: d.to_tune() for k, d in sweep.search.items()}},
            # the generator itself caps running trials (Tune's max_concurrent_trials only wraps a
            # Searcher, and warns and does nothing for a variant generator)
            tune_config=tune.TuneConfig(metric="val_reward", mode="max", scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(random_state=t.seed,
                                                                         max_concurrent=t.max_concurrent)),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=str(out), verbose=1,
                failure_config=tune.FailureConfig(max_failures=t.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=t.keep_checkpoints)))
    grid = tuner.fit()
    table = results_table(grid, list(sweep.search), setup.val_intent_tokens)
    parquet, markdown = write_tables(table, out, f"Sweep {sweep.path.name}")
    best = export_best(table, out)
    log(markdown.read_text())
    return {"out": str(out), "trials": len(table), "results": str(parquet), "summary": str(markdown),
            "best": str(best) if best else None, "errors": int(table.stop_reason.str.startswith("error").sum())}


def _tune(args: argparse.Namespace) -> int:
    out = args.out or f"runs/tune_{Path(args.config).stem}{'_smoke' if args.smoke else ''}"
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # Tune's tables go to stderr: stdout is the JSON
        result = run_sweep(args.config, args.data, out, smoke=args.smoke, resume=args.resume,
                           log=lambda m: print(m, file=sys.stderr, flush=True), overrides=args.set)
    print(json.dumps(result))
    return 0 if result["best"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Ray Tune sweep of GRPO runs (ASHA), results table and best checkpoint")
    p.add_argument("--config", required=True, help="a sweep file such as tune_configs/sweep_10m_50m.yaml")
    p.add_argument("--data", required=True, help="folder written by `tinycompress data`")
    p.add_argument("--out", default=None, help="sweep folder (default runs/tune_<config name>)")
    p.add_argument("--smoke", action="store_true", help="merge the sweep file's smoke: section (a quick check)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override one sweep-file value (repeatable), e.g. --set tune.max_concurrent=1 "
                        "--set fixed.train.steps=4; checked like the file")
    p.set_defaults(func=_tune)
