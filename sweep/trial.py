"""One Tune trial: the GRPO controller of ``tinycompress train``, reporting to Tune.

Each evaluation is reported with ``tune.report`` (val pass rate, IR tokens, reward, the
controller's step metrics) together with that step's resumable checkpoint, so ASHA can stop
the trial and a retried or resumed trial continues from its last report. The controller's
actors are created inside the trial, so they land in the trial's placement group
(:func:`trial_resources` sizes one bundle per actor).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from cluster import controller
from learner.config import RunConfig
from rollout.datagen.dataset import read_split
from sweep.space import SweepConfig
from sweep.warm_start import warm_start_name

DRIVER_CPUS = 0.01  # the trial's own process: it waits on its actors and scores val greedily
RESULT_FILE = "trial_result.json"  # written when the controller returns (not when ASHA stops it)
FAULTS_ENV = "TINYCOMPRESS_TUNE_FAULTS"  # test hook, see _inject_fault


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its sampled point (shipped once via tune.with_parameters)."""

    sweep: SweepConfig
    data_dir: str
    warm_starts: dict[str, str]
    """warm_start_name(preset, d_enc) -> checkpoint."""
    val_intent_tokens: dict[int, float]
    """eval_samples -> mean intent tokens of those val rows (for the compression column)."""

    def config(self, trial: dict) -> RunConfig:
        return self.sweep.trial_config(trial["preset"], trial["point"])


def mean_intent_tokens(data_dir: str | Path, samples: set[int]) -> dict[int, float]:
    """Mean intent tokens of the first n val rows, the rows the controller evaluates."""
    tokens = read_split(data_dir, "val").column("intent_tokens").to_pylist()
    return {n: sum(tokens[:n]) / len(tokens[:n]) for n in samples}


def trial_resources(trial: dict, setup: TrialSetup, gpu: bool) -> tune.PlacementGroupFactory:
    """One bundle for the trial process and one per controller actor, each the size it asks for."""
    t = setup.config(trial).train
    learner = {**({"CPU": 0.01, "GPU": 1} if gpu else {"CPU": t.learner_cpus}),
               **({t.learner_resource: 0.01} if t.learner_resource else {})}
    worker = {"CPU": t.worker_cpus, **({t.rollout_resource: 0.01} if t.rollout_resource else {})}
    return tune.PlacementGroupFactory(
        [{"CPU": DRIVER_CPUS}, learner]
        + [worker] * t.rollout_workers
        + [{"CPU": t.validator_cpus}] * t.validator_actors)


def trial_cpus(cfg: RunConfig) -> float:
    """Logical CPUs of one trial's placement group on a CPU-only cluster."""
    return DRIVER_CPUS + cfg.train.actor_cpus()


def run_trial(trial: dict, setup: TrialSetup) -> None:
    """The function trainable: ``trial`` = {"preset": name, "point": {dotted key: value}}."""
    cfg = setup.config(trial)
    # the trial's folder under OUT/trials itself, not Tune's staging copy in the Ray session
    # (which a new session, as after --resume, would not have): OUT is a local or shared path
    trial_dir = Path(tune.get_context().get_storage().trial_fs_path)
    out = trial_dir / "run"
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    resume_from = _last_checkpoint(trial_dir)
    intent_tokens = setup.val_intent_tokens[cfg.train.eval_samples]
    placement: dict = {}

    def on_eval(metrics: dict, saved: Path | None) -> None:
        if not placement:
            placement.update(_placement_census(ctl))
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        report["val_compression"] = 1 - metrics["val_ir_tokens"] / intent_tokens
        report.update(placement)
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(saved)) if saved else None)
        if saved is not None:  # Tune now holds its copy of this checkpoint; keep one, not two
            shutil.rmtree(saved, ignore_errors=True)
        _inject_fault(tune.get_context().get_trial_id(), metrics["step"], first_attempt=resume_from is None)

    init = setup.warm_starts[warm_start_name(cfg.model.preset, cfg.model.d_enc)]
    with open(trial_dir / "controller.log", "a") as log_file:
        ctl = controller.GRPOController(cfg, setup.data_dir, init, out, resume_from=resume_from,
                                        log=lambda m: print(m, file=log_file, flush=True),
                                        on_eval=on_eval, check_cpus=False)
        result = ctl.run()
    (trial_dir / RESULT_FILE).write_text(json.dumps(result))
    shutil.rmtree(trial_dir / "resumed_from", ignore_errors=True)  # Tune keeps its own copy


def _last_checkpoint(trial_dir: Path) -> str | None:
    """A local copy of the trial's last reported checkpoint, when Tune restarts it from one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    local = trial_dir / "resumed_from"
    shutil.rmtree(local, ignore_errors=True)
    return checkpoint.to_directory(str(local))


def _placement_census(ctl) -> dict:
    """How many of the controller's actors run in this trial's placement group."""
    pg = ray.util.get_current_placement_group()
    actors = ctl.actors()
    ids = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id())
                   for a in actors], timeout=60)
    return {"actors": len(actors), "actors_in_trial_pg": sum(i == (pg.id.hex() if pg else None) for i in ids)}


def _inject_fault(trial_id: str, step: int, first_attempt: bool) -> None:
    """Test hook: ``TINYCOMPRESS_TUNE_FAULTS="00000:crash@1,00001:hang@2"`` makes the first attempt
    of the trial whose id ends with 00000 exit hard after reporting step 1, and the first attempt
    of the one ending with 00001 hang after reporting step 2."""
    for spec in filter(None, os.environ.get(FAULTS_ENV, "").split(",")):
        suffix, _, action = spec.partition(":")
        action, _, at = action.partition("@")
        if first_attempt and trial_id.endswith(suffix) and step == int(at):
            if action == "crash":
                os._exit(1)
            time.sleep(3600)
