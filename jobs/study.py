"""Studies in stages: one file, several sweeps run in order, a later stage built from an earlier one's results.

A study file is a sweep file with ``stages:`` (an ordered mapping stage name → stage). Everything
outside ``stages`` is shared; each stage may set ``description``, ``base`` (merged over the shared
``base``), ``axes`` (replacing the shared ones), ``tune``, ``evaluation``, ``resources``,
``max_failures`` and ``best_of``. Stage ``s`` of study ``name`` is the sweep ``<name>-<s>`` (its own
MLflow experiment and run folder). ``best_of: {stage: tune, by: [train.batch_size], take:
[train.lr, train.warmup_steps]}`` makes a stage wait for ``tune`` to be done (every trial finished,
pruned or given up), then take, for each value of the ``by`` keys, the ``take`` values of the
trial with the lowest best validation BPD (bits/dim) among those that ran to the end (pruned
trials never win); the ``by`` keys must be grid axes of the stage, and each of their settings runs
with its chosen values (a setting with no winner is left out, and said so). Command-line overrides
apply to every stage; ``stages.<stage>.KEY=VALUE`` to one. See sweeps/README.md.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.config import ConfigError, config_keys, show
from jobs.overrides import load_yaml_file
from jobs.sweep_spec import Sweep, load_sweep

STAGE_KEYS = ("description", "base", "axes", "tune", "evaluation", "resources", "max_failures", "best_of")
BEST_OF_KEYS = ("stage", "by", "take")


def is_study_file(raw: Any) -> bool:
    """Whether a loaded YAML document is a study (a sweep file with ``stages``)."""
    return isinstance(raw, dict) and "stages" in raw


@dataclass(frozen=True)
class BestOf:
    """A stage's dependency: ``take`` keys from the best trial of ``stage`` per value of ``by``."""

    stage: str
    by: tuple[str, ...]
    take: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` found in the earlier stage: ``values`` (``by`` values → ``take`` values and
    the winner's best val BPD, bits/dim, and trial id), ``missing`` (``by`` values without a winner)."""

    values: dict[tuple, dict[str, Any]]
    missing: list[tuple]


@dataclass(frozen=True)
class Study:
    """A study file: ``stages`` in order, each a raw sweep mapping (``name`` ``<study>-<stage>``)."""

    name: str
    path: Path
    description: str
    stages: dict[str, dict[str, Any]]
    best_of: dict[str, BestOf]
    overrides: tuple[str, ...]

    def sweep(self, stage: str, choice: Choice | None = None) -> Sweep:
        """Stage ``stage`` as a sweep; a ``best_of`` stage takes ``choice`` (None: its shape only, with
        the shared values where the choice goes: what ``--dry-run`` prices as "up to")."""
        raw = copy.deepcopy(self.stages[stage])
        if stage in self.best_of and choice is not None:
            raw["axes"] = _with_choice(raw.get("axes") or {}, self.best_of[stage], choice, self.path, stage)
        return load_sweep(self.path, self.overrides_of(stage), raw=raw, where=f"in {self.path} stages.{stage}")

    def overrides_of(self, stage: str) -> list[str]:
        """The command-line overrides that apply to ``stage``: every plain one, and those written
        ``stages.<stage>.KEY=VALUE`` (as ``KEY=VALUE``)."""
        out = []
        for text in self.overrides:
            if not text.startswith("stages."):
                out.append(text)
            elif text.startswith(f"stages.{stage}."):
                out.append(text[len(f"stages.{stage}."):])
        return out


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read and check the study at ``path``: every stage loads as a sweep (a ``best_of`` stage in its
    shape only). One-line ConfigError naming the bad key."""
    path = Path(path)
    raw = load_yaml_file(path)
    where = f"in {path}"
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(f"stages={show(stages_raw)}: expected a mapping of stage names to stages [{where}]", "stages")
    shared = {k: v for k, v in raw.items() if k != "stages"}
    name = shared.get("name")
    stages, best_of = {}, {}
    for stage, spec in stages_raw.items():
        origin = f"{where} stages.{stage}"
        if not isinstance(spec, dict):
            raise ConfigError(f"stages.{stage}: expected a mapping with {', '.join(STAGE_KEYS)} [{where}]", "stages")
        for key in spec:
            if key not in STAGE_KEYS:
                raise ConfigError(f"stages.{stage}.{key}: unknown key, expected one of {', '.join(STAGE_KEYS)} "
                                  f"[{where}]", f"stages.{stage}.{key}")
        if "best_of" in spec:
            best_of[stage] = _best_of(spec["best_of"], stage, list(stages), origin)
        merged = {**shared, **{k: v for k, v in spec.items() if k != "best_of"}}
        merged["name"] = f"{name}-{stage}"
        merged["base"] = _deep_merge(shared.get("base") or {}, spec.get("base") or {})
        merged["description"] = spec.get("description") or shared.get("description") or ""
        stages[str(stage)] = merged
    study = Study(str(name), path, str(shared.get("description") or ""), stages, best_of, tuple(overrides))
    for text in overrides:
        head = text.split("=", 1)[0].split(".")
        if head[0] == "stages" and (len(head) < 3 or head[1] not in stages):
            raise ConfigError(f"override {text!r}: a stage override is stages.<stage>.KEY=VALUE with a stage of "
                              f"{', '.join(stages)}", "stages")
    for stage in stages:
        sweep = study.sweep(stage)  # every stage's keys checked now, before anything runs
        if stage in best_of:
            grid = sweep.axes.grid
            for key in best_of[stage].by:
                if key not in grid:
                    raise ConfigError(f"stages.{stage}.best_of.by: {key} must be a grid axis of stage {stage} (its "
                                      f"axes.grid has {', '.join(grid) or 'none'}) [{where}]", "best_of")
    return study


def _best_of(raw: Any, stage: str, earlier: list[str], origin: str) -> BestOf:
    if not isinstance(raw, dict) or set(raw) - set(BEST_OF_KEYS) or not {"stage", "take"} <= set(raw):
        raise ConfigError(f"stages.{stage}.best_of={show(raw)}: expected {{stage: NAME, by: [keys], take: [keys]}} "
                          f"[{origin}]", "best_of")
    if raw["stage"] not in earlier:
        raise ConfigError(f"stages.{stage}.best_of.stage={show(raw['stage'])}: must name an earlier stage "
                          f"({', '.join(earlier) or 'none'}) [{origin}]", "best_of")
    by, take = tuple(raw.get("by") or ()), tuple(raw["take"] or ())
    for key in (*by, *take):
        if key not in config_keys():
            raise ConfigError(f"stages.{stage}.best_of: {key!r} is not a trial config key [{origin}]", "best_of")
    if not take:
        raise ConfigError(f"stages.{stage}.best_of.take: name at least one key to take [{origin}]", "best_of")
    return BestOf(str(raw["stage"]), by, take)


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _with_choice(axes: dict, best_of: BestOf, choice: Choice, path: Path, stage: str) -> dict:
    """``axes`` with the ``by`` grid keys replaced by one zip group: their settings that have a
    winner, each with its ``take`` values."""
    grid = dict(axes.get("grid") or {})
    combos = [c for c in itertools.product(*(grid.pop(k) for k in best_of.by)) if tuple(c) in choice.values]
    if not combos:
        raise ConfigError(f"stage {stage} of {path}: no setting of stage {best_of.stage} has a trial that ran to the "
                          f"end, nothing to take {', '.join(best_of.take)} from", "best_of")
    group = {k: [c[i] for c in combos] for i, k in enumerate(best_of.by)}
    group.update({k: [choice.values[tuple(c)][k] for c in combos] for k in best_of.take})
    return {**axes, "grid": grid, "zip": [*(axes.get("zip") or []), group]}


def choose(earlier: Sweep, runs: dict, best_of: BestOf) -> Choice:
    """The winners of ``earlier`` (its trial runs ``runs``: trial id → RunSummary) per ``by`` value:
    the trial with the lowest best validation BPD among the FINISHED, not pruned ones."""
    from jobs.backends.base import best_val_bpd

    groups: dict[tuple, list] = {}
    for trial in earlier.trials:
        key = tuple(_value(trial, k) for k in best_of.by)
        groups.setdefault(key, [])
        run = runs.get(trial.trial_id)
        bpd = best_val_bpd(run.metrics) if run is not None and run.status == "FINISHED" and run.state != "pruned" else None
        if bpd is not None and bpd == bpd:
            groups[key].append((bpd, trial))
    values, missing = {}, []
    for key, found in groups.items():
        if not found:
            missing.append(key)
            continue
        bpd, trial = min(found, key=lambda f: f[0])
        values[key] = {**{k: _value(trial, k) for k in best_of.take}, "best_val_bpd": bpd, "trial_id": trial.trial_id}
    return Choice(values, missing)


def _value(trial, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(trial.config, section), name)


__all__ = ["BestOf", "Choice", "Study", "choose", "is_study_file", "load_study"]
