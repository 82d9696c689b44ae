"""Studies in stages: one file, several sweeps run in order, a later stage built from an earlier one's results.

A study file is a sweep file with ``stages:`` (an ordered mapping stage name → stage). Everything
outside ``stages`` is shared; each stage may set ``description``, ``base`` (merged over the shared
``base``), ``axes`` (replacing the shared ones), ``tune``, ``evaluation``, ``resources``,
``max_failures`` and ``best_of``. Stage ``s`` of study ``name`` is the sweep ``<name>-<s>`` (its own
MLflow experiment and run folder). ``best_of: {stage: tune, by: [train.batch_size], take:
[train.lr, train.warmup_steps]}`` makes a stage wait for ``tune`` to be done (every trial finished,
pruned or given up), then take, for each value of the ``by`` keys, the ``take`` values of the
trial with the lowest best validation BPD (bits/dim) among those that ran to the end (pruned
trials never win); the ``by`` keys must be grid or zip axes of the stage, and each of their
settings runs with its chosen values (a setting with no winner is left out, and said so).
``best_of.controls: [{train.batch_size: 512, train.lr: 1.0e-3, train.warmup_steps: 0}]`` adds fixed
arms that bypass the choice: each control gives every ``take`` key and may fix ``by`` keys (and the
other keys of their zip groups); it runs for every setting of the ``by`` axes it matches, over the
stage's other axes, with ``run.arm: control`` (so the report keeps it apart from the tuned arm).
When the earlier stage has ``axes.lr_grid`` with ``widen: N`` and a group's best ``train.lr`` is at an
edge of the points its trials tried, the next point beyond that edge is recorded for the group
(:func:`widen`, at most N per group) and the earlier stage runs again before this one. Command-line overrides
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
BEST_OF_KEYS = ("stage", "by", "take", "controls")


def is_study_file(raw: Any) -> bool:
    """Whether a loaded YAML document is a study (a sweep file with ``stages``)."""
    return isinstance(raw, dict) and "stages" in raw


@dataclass(frozen=True)
class BestOf:
    """A stage's dependency: ``take`` keys from the best trial of ``stage`` per value of ``by``;
    ``controls``: fixed arms (key → value) that take nothing from ``stage``."""

    stage: str
    by: tuple[str, ...]
    take: tuple[str, ...]
    controls: tuple[dict[str, Any], ...] = ()


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
        where, dep = f"in {self.path} stages.{stage}", self.best_of.get(stage)
        if dep is not None and (choice is not None or dep.controls):
            shared = None
            if choice is None:  # the shape with its control arms: the shared values where the choice goes
                template = load_sweep(self.path, self.overrides_of(stage), raw=raw, where=where).first_config
                shared = {k: _value(template, k) for k in dep.take}
            raw["axes"] = _with_choice(raw.get("axes") or {}, dep, choice, shared, self.path, stage)
        return load_sweep(self.path, self.overrides_of(stage), raw=raw, where=where)

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
    renames = [o for o in overrides if o.split("=", 1)[0].strip() == "name"]
    overrides = [o for o in overrides if o not in renames]
    name = renames[-1].split("=", 1)[1].strip() if renames else shared.get("name")
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
        head = text.split("=", 1)[0].strip().split(".")
        if head[0] == "stages" and (len(head) < 3 or head[1] not in stages):
            raise ConfigError(f"override {text!r}: a stage override is stages.<stage>.KEY=VALUE with a stage of "
                              f"{', '.join(stages)}", "stages")
        if head[0] == "stages" and head[2:] == ["name"]:
            raise ConfigError(f"override {text!r}: a stage's name is <study>-<stage> ({name}-{head[1]}); rename the "
                              "whole study with name=NAME", f"stages.{head[1]}.name")
    for stage in stages:
        sweep = study.sweep(stage)  # every stage's keys checked now, before anything runs
        if stage in best_of:
            axis_keys = set(sweep.axes.grid).union(*sweep.axes.zip)
            for key in best_of[stage].by:
                if key not in axis_keys:
                    raise ConfigError(f"stages.{stage}.best_of.by: {key} must be a grid or zip axis of stage {stage} "
                                      f"(its axes have {', '.join(sorted(axis_keys)) or 'none'}) [{where}]", "best_of")
    return study


def stage_sweep(study, stage: str) -> tuple[Any, str | None]:
    """(the sweep of ``stage``, None) — or, for a ``best_of`` stage whose earlier stage is not done
    yet, (its shape, why it waits). A ready ``best_of`` stage is built from the earlier stage's
    winners (:func:`jobs.study.choose`), read from MLflow."""
    from jobs.sweep import plan, searched_left, tracking_uri_of
    from jobs.tracking import fast_read

    dep = study.best_of.get(stage)
    if dep is None:
        return study.sweep(stage), None
    earlier, waits = stage_sweep(study, dep.stage)
    if waits:
        return study.sweep(stage), f"stage {dep.stage} waits too ({waits})"
    uri = tracking_uri_of(earlier)
    experiment = fast_read.experiment_id(uri, earlier.name)
    runs = fast_read.trial_runs(uri, experiment, trial_ids=[t.trial_id for t in earlier.trials]) if experiment else {}
    todo = plan(earlier, runs, {}, earlier.max_failures, tuple(earlier.evaluation.selected))[1]
    left = len(todo) + searched_left(earlier, todo)
    if not earlier.trials or left:
        return study.sweep(stage), f"{left or 'all'} trial(s) of stage {dep.stage} not done yet"
    choice = choose(earlier, runs, dep, best_in_history(uri))
    added = widen(earlier, dep, choice)
    if added:
        more = len(study.sweep(dep.stage).trials) - len(earlier.trials)
        groups = "; ".join(e["why"] for e in added)
        return study.sweep(stage), (f"stage {dep.stage} widens its LR grid first ({groups}): {more} more trial(s), "
                                    f"recorded in {earlier.axes.lr_grid.record}")
    return study.sweep(stage, choice), None


def load_stage(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """The stage of the study at ``path`` that the override ``stage=NAME`` names, as a sweep (for
    ``jobs.train STUDY.yaml --trial N stage=NAME``, ``--show``, ``sbatch slurm/train.sh``); a
    ``best_of`` stage whose earlier stage is not done is a ConfigError saying so."""
    chosen = [o for o in overrides if o.split("=", 1)[0].strip() == "stage"]
    rest = [o for o in overrides if o not in chosen]
    study = load_study(path, rest)
    if len(chosen) != 1:
        raise ConfigError(f"{path} is a study in stages ({', '.join(study.stages)}): name one with stage=NAME "
                          f"(python -m jobs.sweep {path} runs them all, in order)", "stage")
    stage = chosen[0].split("=", 1)[1].strip()
    if stage not in study.stages:
        raise ConfigError(f"stage={stage}: not a stage of {path} ({', '.join(study.stages)})", "stage")
    sweep, waits = stage_sweep(study, stage)
    if waits:
        raise ConfigError(f"stage {stage} of {path} is not known yet: {waits}", "stage")
    return sweep


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
    controls = raw.get("controls") or []
    if not isinstance(controls, list) or not all(isinstance(c, dict) and c for c in controls):
        raise ConfigError(f"stages.{stage}.best_of.controls={show(controls)}: expected a list of mappings of trial keys to "
                          f"values, e.g. [{{train.batch_size: 512, train.lr: 1.0e-3}}] [{origin}]", "best_of.controls")
    for i, control in enumerate(controls):
        where = f"stages.{stage}.best_of.controls[{i}]"
        for key in control:
            if key not in config_keys() or key == "run.arm":
                raise ConfigError(f"{where}: {key!r} is not a trial config key a control can fix [{origin}]",
                                  "best_of.controls")
        if set(take) - set(control):
            raise ConfigError(f"{where}: give {', '.join(k for k in take if k not in control)} too (a control arm takes "
                              f"nothing from stage {raw['stage']}: every take key is fixed) [{origin}]", "best_of.controls")
    return BestOf(str(raw["stage"]), by, take, tuple(controls))


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _with_choice(axes: dict, best_of: BestOf, choice: Choice | None, shared: dict | None, path: Path,
                 stage: str) -> dict:
    """``axes`` with the axes of the ``by`` keys (grid keys, or the zip groups holding them) replaced
    by one zip group: their settings that have a winner, each with its ``take`` values (``choice``
    None: every setting, with the ``shared`` values), then the ``controls``' settings, each with its
    fixed values and ``run.arm: control`` (the tuned ones ``run.arm: null``)."""
    grid, zips = dict(axes.get("grid") or {}), list(axes.get("zip") or [])
    factors, used = [], set()
    for key in best_of.by:
        if key in grid:
            factors.append([{key: v} for v in grid.pop(key)])
            continue
        i = next(i for i, group in enumerate(zips) if key in group)
        if i not in used:
            used.add(i)
            group = zips[i]
            factors.append([{k: v[j] for k, v in group.items()} for j in range(len(next(iter(group.values()))))])
    settings = [{k: v for part in parts for k, v in part.items()} for parts in itertools.product(*factors)]
    if choice is None:
        rows = [{**r, **shared} for r in settings]
    else:
        rows = [{**r, **{k: choice.values[tuple(r[b] for b in best_of.by)][k] for k in best_of.take}}
                for r in settings if tuple(r[k] for k in best_of.by) in choice.values]
    if not rows:
        raise ConfigError(f"stage {stage} of {path}: no setting of stage {best_of.stage} has a trial that ran to the "
                          f"end, nothing to take {', '.join(best_of.take)} from", "best_of")
    if best_of.controls:
        rows = [{**r, "run.arm": None} for r in rows]
    for i, control in enumerate(best_of.controls):
        fixed = {k: v for k, v in control.items() if k not in best_of.take}
        unknown = [k for k in fixed if k not in settings[0]]
        if unknown:
            raise ConfigError(f"stages.{stage}.best_of.controls[{i}]: {', '.join(unknown)} must be a take key, a by key "
                              f"or a key zipped with one [in {path}]", "best_of.controls")
        matched = [{**r, **control, "run.arm": "control"} for r in settings if all(r[k] == v for k, v in fixed.items())]
        if not matched:
            raise ConfigError(f"stages.{stage}.best_of.controls[{i}]={show(control)}: matches no setting of the stage's "
                              f"by axes [in {path}]", "best_of.controls")
        rows += matched
    chosen = {k: [r[k] for r in rows] for k in rows[0]}
    return {**axes, "grid": grid, "zip": [g for i, g in enumerate(zips) if i not in used] + [chosen]}


def widen(earlier: Sweep, best_of: BestOf, choice: Choice) -> list[dict[str, Any]]:
    """The points to add to ``earlier``'s ``axes.lr_grid`` (``widen: N``) now that it is done, written
    to its record (:data:`jobs.sweep_spec.WIDEN_RECORD`) and returned: for each ``by`` group whose
    winner's grid step is the highest (lowest) step its trials tried, and that has fewer than N added
    points, the next step above (below). [] without a grid to widen or ``train.lr`` to take."""
    grid = earlier.axes.lr_grid
    if grid is None or not grid.widen or "train.lr" not in best_of.take:
        return []
    steps: dict[tuple, set[int]] = {}
    by_id = {}
    for trial in earlier.trials:
        steps.setdefault(tuple(_value(trial, k) for k in best_of.by), set()).add(trial.grid_step)
        by_id[trial.trial_id] = trial
    added = []
    for key, won in sorted(choice.values.items(), key=str):
        group = dict(zip(best_of.by, key))
        step, tried = by_id[won["trial_id"]].grid_step, steps[key]
        if sum(e["group"] == group for e in grid.extra) >= grid.widen or min(tried) < step < max(tried):
            continue
        edge = "high" if step == max(tried) else "low"
        where = ", ".join(f"{k}={v}" for k, v in group.items()) or "all trials"
        added.append({"group": group, "step": step + 1 if edge == "high" else step - 1, "edge": edge,
                      "why": f"{where}: best LR {won['train.lr']:.4g} (trial {won['trial_id']}) at the {edge} edge"})
    if added:
        from rgflow.atomic import write_json_atomic

        grid.record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(grid.record, [*grid.extra, *added])
    return added


def best_in_history(uri: str):
    """``best(run)``: the lowest ``val_bpd`` (bits/dim) of a run's whole history, read from the store."""
    from jobs.tracking import read_metric_history

    def best(run) -> float | None:
        values = [v for _, _, v in read_metric_history(uri, run.run_id, "val_bpd") if v == v]
        return min(values) if values else None

    return best


def choose(earlier: Sweep, runs: dict, best_of: BestOf, best=None) -> Choice:
    """The winners of ``earlier`` (its trial runs ``runs``: trial id → RunSummary) per ``by`` value:
    the trial with the lowest best validation BPD among the FINISHED, not pruned ones. ``best(run)``:
    that BPD (default: the run's ``best_val_bpd`` or latest ``val_bpd`` metric; the launcher passes
    :func:`best_in_history`)."""
    from jobs.backends.base import best_val_bpd

    best = best or (lambda run: best_val_bpd(run.metrics))
    groups: dict[tuple, list] = {}
    for trial in earlier.trials:
        key = tuple(_value(trial, k) for k in best_of.by)
        groups.setdefault(key, [])
        run = runs.get(trial.trial_id)
        bpd = best(run) if run is not None and run.status == "FINISHED" and run.state != "pruned" else None
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
    """``key``'s value in a trial (or a trial config)."""
    section, _, name = key.partition(".")
    return getattr(getattr(getattr(trial, "config", trial), section), name)


__all__ = ["BestOf", "Choice", "Study", "choose", "is_study_file", "load_stage", "load_study", "stage_sweep", "widen"]
