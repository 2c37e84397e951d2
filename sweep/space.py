"""Sweep files (``tune_configs/sweep_*.yaml``): presets, fixed values and a search space.

A sweep file is loaded strictly, like a preset: an unknown key, a malformed dimension or a
point of the space that :class:`learner.config.RunConfig` rejects is an error at start that
names the key. Every trial's config is a preset file, then ``fixed``, then the sampled point,
then the preset's own ``overrides``, checked by the same ``RunConfig`` as ``tinycompress train``.

    presets:                 # model.preset -> base file, warm start, trial count
      10m: {config: 10m.yaml, init: ../serve/assets/compressor_10m, trials: 8}
      50m: {config: 50m.yaml, init: sft, trials: 2, overrides: {sft: {max_steps: 60}}}
    fixed:                   # RunConfig sections, set for every trial
      train: {steps: 16, eval_every: 4}
    search:                  # dotted RunConfig key -> one of grid / choice / uniform / loguniform
      grpo.lr: {loguniform: [1.0e-5, 1.0e-4]}
      train.group_size: {choice: [4, 8]}
    tune: {max_concurrent: 2, grace_period: 4}
    smoke: {...}             # merged over the rest by ``--smoke``
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from collections.abc import Iterable
from pathlib import Path

import yaml

from learner.config import RunConfig, build_section

SFT_INIT = "sft"
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
TOP_KEYS = ("presets", "fixed", "search", "tune", "smoke")
SWEEP_OWNED = ("model.preset", "train.checkpoint_every")


class SweepConfigError(ValueError):
    """A sweep file that cannot run; the message names the key."""


@dataclass(frozen=True)
class TuneSettings:
    """How Tune runs the trials (section ``tune:``)."""

    max_concurrent: int = 2
    """Trials running side by side."""
    grace_period: int = 4
    """GRPO steps every trial runs before ASHA may stop it."""
    reduction_factor: int = 2
    """ASHA keeps the top 1/reduction_factor of the trials at each rung."""
    max_failures: int = 1
    """Retries of a failed trial, each from its last reported checkpoint."""
    keep_checkpoints: int = 2
    """Checkpoints Tune keeps per trial (the newest)."""
    seed: int = 0
    """Seed of the search (which values each trial samples)."""

    def __post_init__(self):
        if min(self.max_concurrent, self.grace_period, self.keep_checkpoints) < 1:
            raise ValueError("tune.max_concurrent, tune.grace_period and tune.keep_checkpoints must be >= 1")
        if self.reduction_factor < 2:
            raise ValueError("tune.reduction_factor must be >= 2")
        if self.max_failures < 0:
            raise ValueError("tune.max_failures must be >= 0")


@dataclass(frozen=True)
class PresetEntry:
    """One value of ``model.preset``: its base file, its warm start and its number of trials."""

    config: str
    """Preset YAML (relative to the sweep file), e.g. 10m.yaml."""
    init: str
    """Warm-start checkpoint (relative to the sweep file), or ``sft`` for a supervised warm
    start with the preset's ``sft:`` section before the sweep starts."""
    trials: int = 1
    """Trials of this preset; each samples the search space anew."""
    overrides: dict = field(default_factory=dict)
    """RunConfig sections this preset always uses, applied over the sampled point."""

    def __post_init__(self):
        if self.trials < 1:
            raise ValueError("trials must be >= 1")


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` in DISTRIBUTIONS and its values (or [low, high])."""

    key: str
    kind: str
    values: tuple

    def to_tune(self):
        from ray import tune

        make = {"grid": tune.grid_search, "choice": tune.choice}
        if self.kind in make:
            return make[self.kind](list(self.values))
        return getattr(tune, self.kind)(*self.values)


@dataclass(frozen=True)
class SweepConfig:
    path: Path
    presets: dict[str, PresetEntry]
    bases: dict[str, dict]
    """Per preset: its file merged with ``fixed`` (everything but the point and the overrides)."""
    search: dict[str, Dimension]
    tune: TuneSettings

    @property
    def steps(self) -> int:
        """ASHA's max_t: the GRPO steps of a full trial."""
        return max(self.trial_config(name, {}).train.steps for name in self.presets)

    def trial_config(self, preset: str, point: dict) -> RunConfig:
        """The RunConfig of one trial: base, then the point (dotted keys), then the overrides."""
        overrides = self.presets[preset].overrides
        raw = deep_merge(deep_merge(self.bases[preset], nest(point)), overrides)
        raw.setdefault("model", {})["preset"] = preset
        train = raw.setdefault("train", {})
        # a trial checkpoints at every evaluation, so that each report carries its checkpoint
        train["checkpoint_every"] = train.get("eval_every", RunConfig().train.eval_every)
        return RunConfig.from_dict(raw)

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()

    def init_path(self, preset: str) -> Path | None:
        init = self.presets[preset].init
        return None if init == SFT_INIT else self.resolve(init)

    def encoding_widths(self, preset: str) -> list[int | None]:
        """Every model.d_enc a trial of ``preset`` can get (each needs its own warm start)."""
        dim = self.search.get("model.d_enc")
        points = [{}] if dim is None else [{"model.d_enc": v} for v in dim.values]
        return sorted({self.trial_config(preset, p).model.d_enc for p in points}, key=lambda d: d or 0)


def load_sweep(path: str | Path, smoke: bool = False, overrides: Iterable[str] = ()) -> SweepConfig:
    """Read and check a sweep file; ``smoke`` merges its ``smoke:`` section over the rest;
    ``overrides`` (``key.sub=value``, as ``tinycompress tune --set``) are applied first."""
    from learner.config import apply_overrides

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep file {path} not found (sweeps live in tune_configs/)")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return _parse(path, apply_overrides(raw, overrides), smoke)
    except (TypeError, ValueError) as e:
        raise SweepConfigError(f"{path}: {e}") from None


def _parse(path: Path, raw: dict, smoke: bool) -> SweepConfig:
    if not isinstance(raw, dict):
        raise TypeError("a sweep file must be a mapping")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]}; known keys: {', '.join(TOP_KEYS)}")
    smoke_raw = raw.pop("smoke", None)
    if smoke:
        if not smoke_raw:
            raise ValueError("--smoke: this sweep file has no smoke: section")
        raw = deep_merge(raw, smoke_raw)
    if not raw.get("presets"):
        raise ValueError("presets: name at least one preset (e.g. 10m: {config: 10m.yaml, init: ...})")
    presets = {name: build_section(PresetEntry, entry, f"presets.{name}") for name, entry in raw["presets"].items()}
    for where, section in [("fixed", raw.get("fixed") or {})] + [
            (f"presets.{n}.overrides", e.overrides) for n, e in presets.items()]:
        _check_not_owned(where, section)
    bases = {name: deep_merge(_preset_file(path, name, entry), raw.get("fixed") or {})
             for name, entry in presets.items()}
    sweep = SweepConfig(path=path.resolve(), presets=presets, bases=bases,
                        search={k: _dimension(k, v) for k, v in (raw.get("search") or {}).items()},
                        tune=build_section(TuneSettings, raw.get("tune") or {}, "tune"))
    for name in presets:
        _check_init(sweep, name)
    _check_every_point(sweep)
    return sweep


def _dimension(key: str, spec) -> Dimension:
    where = f"search.{key}"
    section, _, name = key.partition(".")
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    names = {f.name for f in dataclasses.fields(getattr(RunConfig(), section))} if section in sections else set()
    if name not in names:
        raise ValueError(f"unknown key {where}: search keys are dotted RunConfig keys such as grpo.lr")
    if key in (*SWEEP_OWNED, "train.steps"):
        raise ValueError(f"{where} cannot be searched: model.preset comes from presets:, train.steps is "
                         "ASHA's max_t (set it under fixed:), train.checkpoint_every follows train.eval_every")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"{where} must be one of {{grid: [...]}}, {{choice: [...]}}, "
                         f"{{uniform: [low, high]}}, {{loguniform: [low, high]}}; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}.{kind} must be a non-empty list")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
            raise ValueError(f"{where}.{kind} must be [low, high] with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"{where}.loguniform needs low > 0, got {values[0]}")
        if key == "model.d_enc":
            raise ValueError(f"{where}: use grid or choice (each width needs its own warm start)")
    return Dimension(key, kind, tuple(values))


def _preset_file(sweep_path: Path, name: str, entry: PresetEntry) -> dict:
    where = f"presets.{name}.config"
    base_file = sweep_path.parent / entry.config
    if not base_file.exists():
        raise FileNotFoundError(f"{where}: {base_file} not found")
    raw = yaml.safe_load(base_file.read_text()) or {}
    declared = raw.get("model", {}).get("preset", name)
    if declared != name:
        raise ValueError(f"{where}: {entry.config} is a {declared} preset, not {name}")
    return raw


def _check_not_owned(where: str, raw: dict) -> None:
    for key in SWEEP_OWNED:
        section, _, name = key.partition(".")
        if name in (raw.get(section) or {}):
            raise ValueError(f"{where}.{key} is set by the sweep: model.preset by presets:, "
                             "train.checkpoint_every equal to train.eval_every")


def _check_init(sweep: SweepConfig, name: str) -> None:
    where = f"presets.{name}"
    init = sweep.init_path(name)
    if init is not None:
        meta_file = init / "tinycompress.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{where}.init: {init} is not a policy checkpoint "
                                    f"(no tinycompress.json); give a checkpoint or `init: {SFT_INIT}`")
        policy = json.loads(meta_file.read_text()).get("policy", {}).get("name")
        if policy != name:
            raise ValueError(f"{where}.init: {init} holds a {policy} policy, not {name}")


def _check_every_point(sweep: SweepConfig) -> None:
    """Build the RunConfig of every point (ranges at both ends) of every preset."""
    keys = list(sweep.search)
    for preset in sweep.presets:
        # every listed value, and both ends of every range
        for values in itertools.product(*(sweep.search[k].values for k in keys)):
            point = dict(zip(keys, values))
            try:
                sweep.trial_config(preset, point)
            except (TypeError, ValueError) as e:
                raise ValueError(_blame(sweep, preset, point, e)) from None


def _blame(sweep: SweepConfig, preset: str, point: dict, error: Exception) -> str:
    """Name the searched key (or the smallest set of keys) that makes ``point`` impossible."""
    for size in range(1, len(point) + 1):
        for keys in itertools.combinations(point, size):
            try:
                sweep.trial_config(preset, {k: point[k] for k in keys})
            except (TypeError, ValueError):
                named = ", ".join(f"{k}={point[k]!r}" for k in keys)
                return f"search point impossible for preset {preset} ({named}): {error}"
    return f"preset {preset} is impossible before any search value: {error}"


def nest(dotted: dict) -> dict:
    """{"grpo.lr": 1e-5} -> {"grpo": {"lr": 1e-5}}."""
    out: dict = {}
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of ``base`` with ``over`` merged in, mapping by mapping."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
