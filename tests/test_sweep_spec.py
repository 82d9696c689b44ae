"""Sweep files: expansion order and counts, overrides, one-line errors, ids, the dry-run table."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from jobs.config import ConfigError, load_trial_config, trial_id
from jobs.dryrun import IMAGES_PER_S, format_trials_table, forward_flops, gpu_hours, images_per_second, training_images
from jobs.sweep_spec import EvaluationSettings, is_sweep_file, load_sweep, load_trial
from rgflow.config import model_preset

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["smoke", "priors", "temperature"]  # sweeps; batchsize and mini-study are studies in stages


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SMALL = """
name: small
base:
  model: {preset: tiny}
  train: {epochs: 2}
axes:
  zip:
    - data.name: [msds1, msds2]
      train.epochs: [3, 4]
  grid:
    train.batch_size: [32, 64]
    prior.kind: [laplace, gaussian]
  seeds: [0, 1]
"""


def error_of(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_sweep(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# Expansion
# ----------------------------------------------------------------------------------------------

def test_order_is_zip_then_grid_then_seeds(tmp_path):
    sweep = load_sweep(write(tmp_path, SMALL))
    got = [(t.varying["data.name"], t.varying["train.epochs"], t.varying["train.batch_size"],
            t.varying["prior.kind"], t.varying["run.seed"]) for t in sweep.trials]
    expected = [(d, e, b, k, s) for d, e in (("msds1", 3), ("msds2", 4)) for b in (32, 64)
                for k in ("laplace", "gaussian") for s in (0, 1)]
    assert got == expected
    assert [t.index for t in sweep.trials] == list(range(16))
    assert sweep.varying_keys == ["data.name", "train.epochs", "train.batch_size", "prior.kind", "run.seed"]
    first = sweep.trials[0].config
    assert (first.model.preset, first.data.name, first.train.epochs, first.run.seed) == ("tiny", "msds1", 3, 0)


def test_a_sweep_trial_is_the_same_trial_as_its_single_config(tmp_path):
    sweep = load_sweep(write(tmp_path, SMALL))
    trial = sweep.trials[13]
    single = load_trial_config(None, ["model.preset=tiny", *(f"{k}={v}" for k, v in trial.varying.items())])
    assert trial.config == single and trial.trial_id == trial_id(single)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sweeps_expand_to_the_product_of_their_axes(name):
    path = REPO / "sweeps" / f"{name}.yaml"
    axes = yaml.safe_load(path.read_text())["axes"]
    expected = math.prod(len(next(iter(group.values()))) for group in axes.get("zip", []))
    expected *= math.prod(len(values) for values in axes.get("grid", {}).values())
    expected *= len(axes.get("seeds", [0]))
    sweep = load_sweep(path)
    assert len(sweep.trials) == expected
    assert len({t.trial_id for t in sweep.trials}) == expected
    assert is_sweep_file(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("name", ["batchsize", "mini-study"])
def test_the_batch_size_studies_tune_the_lr_per_batch_size_then_confirm_it(name):
    from jobs.study import load_study

    study = load_study(REPO / "sweeps" / f"{name}.yaml")
    assert list(study.stages) == ["tune", "confirm"]
    tune, confirm = study.sweep("tune"), study.sweep("confirm")
    batches = sorted({t.config.train.batch_size for t in tune.trials})
    assert len(batches) >= 3 and batches == sorted({t.config.train.batch_size for t in confirm.trials})
    for bs in batches:  # every batch size searches the same LRs, with and without warm-up
        lrs = {t.config.train.lr for t in tune.trials if t.config.train.batch_size == bs}
        assert len(lrs) >= 4 and max(lrs) / min(lrs) > 10
        assert len({t.config.train.warmup_steps for t in tune.trials if t.config.train.batch_size == bs}) == 2
    assert tune.tune.scheduler.kind == "asha" and "train.batch_size" in tune.tune.scheduler.group_by
    assert confirm.tune.scheduler is None  # the arms of the comparison run to their full budget
    assert {t.config.prior.kind for t in confirm.trials} == {"laplace", "gaussian"}
    assert {t.config.run.seed for t in confirm.trials} == {0, 1, 2}
    assert max(t.config.train.epochs for t in tune.trials) < min(t.config.train.epochs for t in confirm.trials)
    assert study.best_of["confirm"].take == ("train.lr", "train.warmup_steps")
    assert not tune.evaluation.selected and "test_bpd" in confirm.evaluation.selected


def test_batchsize_keeps_the_seed_reproductions_recipe_and_budgets():
    from jobs.study import load_study

    confirm = load_study(REPO / "sweeps/batchsize.yaml").sweep("confirm")
    assert len(confirm.trials) == 2 * 4 * 2 * 3 + 2 * 2 * 3  # tuned arms, and the 2025 recipe's control arm
    controls = [t for t in confirm.trials if t.config.run.arm == "control"]
    assert {(t.config.train.batch_size, t.config.train.lr, t.config.train.warmup_steps) for t in controls} == {(512, 1e-3, 0)}
    assert {(t.config.data.name, t.config.train.epochs) for t in controls} == {("msds1", 60), ("celeba", 100)}
    pairs = {(t.config.data.name, t.config.model.preset, t.config.train.epochs) for t in confirm.trials}
    assert pairs == {("msds1", "msds", 60), ("celeba", "celeba32", 100)}
    assert {t.config.train.batch_size for t in confirm.trials} == {64, 128, 256, 512}
    for t in confirm.trials:
        assert t.config.train.weight_decay == 5e-5 and t.config.train.lr_scaling == "none"
        assert t.config.eval.temperatures == (0.5, 0.75, 1.0) == t.config.train.sample_temperatures
    assert confirm.backend == "ray" and confirm.resources.gpus == 1.0
    assert confirm.evaluation.selected == ("test_bpd", "samples", "fid", "receptive_fields")


def test_smoke_is_small():
    sweep = load_sweep(REPO / "sweeps/smoke.yaml")
    assert 4 <= len(sweep.trials) <= 8
    for t in sweep.trials:
        assert t.config.model.preset == "tiny" and t.config.data.train_size <= 3000
        assert t.config.run.device == "cpu" and t.config.data.valid_size <= 500
    assert sweep.resources.gpus == 0 and sweep.ray.max_concurrent_trials == 2
    assert "fid" not in sweep.evaluation.selected


def test_random_samples_are_reproducible_and_in_range(tmp_path):
    path = write(tmp_path, """
name: rnd
axes:
  random:
    samples: 5
    seed: 3
    params:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      prior.temperature: {uniform: [0.5, 1.5]}
      train.batch_size: {choice: [32, 64, 128]}
  seeds: [0, 1]
""")
    first, again = load_sweep(path), load_sweep(path)
    assert [t.trial_id for t in first.trials] == [t.trial_id for t in again.trials]
    assert len(first.trials) == 10
    assert first.varying_keys == ["train.lr", "prior.temperature", "train.batch_size", "run.seed"]
    for t in first.trials:
        assert 1e-4 <= t.config.train.lr <= 1e-2 and 0.5 <= t.config.prior.temperature <= 1.5
        assert t.config.train.batch_size in (32, 64, 128)
    # Seeds are innermost: consecutive pairs share the sampled point.
    assert first.trials[0].varying["train.lr"] == first.trials[1].varying["train.lr"]
    assert len({t.varying["train.lr"] for t in first.trials}) == 5
    other = load_sweep(path, ["random.seed=4", "random.samples=2"])
    assert len(other.trials) == 4 and other.trials[0].varying["train.lr"] != first.trials[0].varying["train.lr"]


SEARCHED = """
name: searched
base:
  model: {preset: tiny}
  run: {out_dir: OUT}
axes:
  grid:
    train.batch_size: [32, 64]
  random:
    params:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  seeds: [0, 1]
tune:
  searcher: {num_samples: 3}
  scheduler: {grace_epochs: 2, group_by: [train.batch_size]}
"""


def test_tune_section_is_typed_and_a_searcher_sweep_has_its_recorded_trials(tmp_path):
    import json

    path = write(tmp_path, SEARCHED.replace("OUT", str(tmp_path / "runs")))
    sweep = load_sweep(path)
    assert (sweep.tune.scheduler.kind, sweep.tune.scheduler.grace_epochs, sweep.tune.scheduler.group_by) == \
        ("asha", 2.0, ("train.batch_size",))
    assert (sweep.tune.searcher.kind, sweep.tune.searcher.num_samples) == ("optuna", 3)
    assert sweep.trials == [] and sweep.search.budget == 4 * 3  # 2 batch sizes × 2 seeds, 3 points each
    assert sweep.search.frames[1] == {"train.batch_size": 32, "run.seed": 1}
    assert sweep.first_config.run.out_dir == str(tmp_path / "runs")
    assert "searcher: optuna samples up to 12 more trials (3 per setting × 4 settings; 0 sampled so far)" in \
        format_trials_table(sweep)
    record = [{"index": 0, "frame": 3, "params": {"train.lr": 0.002}}, {"index": 1, "frame": 0, "params": {"train.lr": 3e-4}}]
    (tmp_path / "runs" / "searched").mkdir(parents=True)
    sweep.search.record.write_text(json.dumps(record))
    again = load_sweep(path)
    assert [(t.index, t.config.train.batch_size, t.config.run.seed, t.config.train.lr) for t in again.trials] == \
        [(0, 64, 1, 0.002), (1, 32, 0, 3e-4)]
    assert again.sweep_id == sweep.sweep_id  # the sweep is what it searches, not how far it got
    assert "up to 10 more trials (3 per setting × 4 settings; 2 sampled so far)" in format_trials_table(again)
    from jobs.sweep import searched_left

    assert searched_left(again, []) == searched_left(again, [again.trials[0].trial_id]) == 10  # resumed ones aside
    assert load_sweep(path, ["tune.scheduler.kind=hyperband"]).tune.scheduler.kind == "hyperband"


@pytest.mark.parametrize("text, overrides, message", [
    (SEARCHED, ["backend=local"], "tune: schedulers and searchers are Ray Tune's: set backend: ray, or remove the tune "
                                  "section (backend=local [override 'backend=local'])"),
    (SEARCHED, ["tune.scheduler.kind=median"], "tune.scheduler.kind='median': must be one of asha, hyperband"),
    (SEARCHED, ["tune.scheduler.reduction_factor=1"], "tune.scheduler.reduction_factor=1.0: must be above 1"),
    (SEARCHED, ["tune.scheduler.group_by=[train.nope]"], "tune.scheduler.group_by='train.nope': must list trial config keys"),
    (SEARCHED, ["tune.searcher.num_samples=0"], "tune.searcher.num_samples=0"),
    (SEARCHED, ["random.samples=2"], "axes.random.samples=2: not used with tune.searcher"),
    ("name: x\ntune: {searcher: {num_samples: 2}}\n", [], "tune.searcher: needs axes.random.params"),
    ("name: x\ntune: {schedule: {}}\n", [], "tune.schedule"),
])
def test_tune_section_errors_are_one_line(tmp_path, text, overrides, message):
    path = write(tmp_path, text.replace("OUT", str(tmp_path)))
    assert message in error_of(path, overrides)


def test_a_sweep_without_axes_is_one_trial(tmp_path):
    sweep = load_sweep(write(tmp_path, "name: one\nbase: {train: {epochs: 2}}\n"))
    assert len(sweep.trials) == 1 and sweep.trials[0].varying == {} and sweep.trials[0].config.train.epochs == 2


def test_base_config_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/base.yaml").write_text("model: {preset: tiny}\ntrain: {epochs: 7, batch_size: 16}\n")
    (tmp_path / "sweeps").mkdir()
    path = write(tmp_path, "name: rel\nbase_config: ../configs/base.yaml\nbase: {train: {epochs: 8}}\n", "sweeps/s.yaml")
    config = load_sweep(path).trials[0].config
    assert (config.model.preset, config.train.epochs, config.train.batch_size) == ("tiny", 8, 16)


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------

def test_override_replaces_a_grid_axis_and_the_seeds(tmp_path):
    path = write(tmp_path, SMALL)
    sweep = load_sweep(path, ["train.batch_size=[16,128,256]", "seeds=[5]"])
    assert len(sweep.trials) == 2 * 3 * 2 * 1
    assert [t.varying["train.batch_size"] for t in sweep.trials[:6:2]] == [16, 128, 256]
    assert {t.config.run.seed for t in sweep.trials} == {5}
    assert len(load_sweep(path, ["seed=[0,1,2]"]).trials) == 24
    assert len(load_sweep(path, ["run.seed=[7,8,9]"]).trials) == 24
    assert len(load_sweep(path, ["train.batch_size=64"]).trials) == 8  # a scalar: one value


def test_override_of_a_zip_key_selects_or_replaces(tmp_path):
    path = write(tmp_path, SMALL)
    msds2 = load_sweep(path, ["data.name=msds2"])
    assert len(msds2.trials) == 8 and {(t.config.data.name, t.config.train.epochs) for t in msds2.trials} == {("msds2", 4)}
    longer = load_sweep(path, ["train.epochs=[5,6]"])
    assert {(t.config.data.name, t.config.train.epochs) for t in longer.trials} == {("msds1", 5), ("msds2", 6)}


def test_other_overrides_set_the_base_or_add_a_grid_axis(tmp_path):
    path = write(tmp_path, SMALL)
    sweep = load_sweep(path, ["train.lr=0.002", "train.betas=[0.8,0.9]", "prior.temperature=[0.5,1.0]"])
    assert len(sweep.trials) == 32 and sweep.varying_keys[-2:] == ["prior.temperature", "run.seed"]
    assert all(t.config.train.lr == 0.002 and t.config.train.betas == (0.8, 0.9) for t in sweep.trials)
    assert [t.config.prior.temperature for t in sweep.trials[:4]] == [0.5, 0.5, 1.0, 1.0]


def test_override_of_a_random_key_fixes_it(tmp_path):
    path = write(tmp_path, "name: r\naxes:\n  random:\n    samples: 3\n    params:\n"
                           "      train.lr: {uniform: [0.001, 0.002]}\n      prior.temperature: {uniform: [0.5, 1.5]}\n")
    sweep = load_sweep(path, ["train.lr=0.005"])
    assert sweep.varying_keys == ["prior.temperature"] and all(t.config.train.lr == 0.005 for t in sweep.trials)
    assert len(sweep.trials) == 3
    assert load_sweep(path, ["train.lr=[0.1,0.2]"]).varying_keys == ["train.lr", "prior.temperature"]


def _ids(sweep) -> list[str]:
    return [t.trial_id for t in sweep.trials]


@pytest.mark.parametrize("multirun, listed", [
    ("train.lr=1e-3,2e-3", "train.lr=[1e-3,2e-3]"),                      # a new grid axis
    ("prior.kind=gaussian,laplace", "prior.kind=[gaussian,laplace]"),    # a grid axis replaced
    ("train.batch_size=16, 128", "train.batch_size=[16,128]"),
    ("train.epochs=5,6", "train.epochs=[5,6]"),                          # a zip key's list replaced
    ("seeds=range(0,3)", "seeds=[0,1,2]"),
    ("seed=range(3)", "seed=[0,1,2]"),
    ("run.seed=4,range(9)", None),                                       # not Hydra: range() alone
    ("train.betas=0.8,0.9", "train.betas=[0.8,0.9]"),                    # a list key: its value
    ("prior.temperature=range(1,7,2)", "prior.temperature=[1,3,5]"),
])
def test_multirun_overrides_mean_the_list(tmp_path, multirun, listed):
    path = write(tmp_path, SMALL)
    if listed is None:
        assert error_of(path, [multirun]) == (
            f"run.seed='range(9)': expected an integer, got a string [override {multirun!r}]")
        return
    assert _ids(load_sweep(path, [multirun])) == _ids(load_sweep(path, [listed]))
    assert load_sweep(path, [multirun]).varying_keys == load_sweep(path, [listed]).varying_keys


def test_multirun_adds_an_axis_in_trial_order(tmp_path):
    sweep = load_sweep(write(tmp_path, SMALL), ["train.lr=1e-3,2e-3"])
    assert len(sweep.trials) == 32 and sweep.varying_keys[-2:] == ["train.lr", "run.seed"]
    assert [t.config.train.lr for t in sweep.trials[:4]] == [1e-3, 1e-3, 2e-3, 2e-3]


def test_commas_in_free_text_and_string_settings_are_text(tmp_path):
    path = write(tmp_path, SMALL)
    sweep = load_sweep(path, ["description=batch size, priors", "data.root=/data/a,b", "tracking.uri=sqlite:///a,b.db",
                              "slurm.partition=gpu,gpu-large", "slurm.extra_sbatch=--exclusive,--nodelist=n1",
                              "eval.temperatures=0.5,1.0"])
    assert len(sweep.trials) == 16 and "data.root" not in sweep.varying_keys
    assert sweep.description == "batch size, priors"
    config = sweep.trials[0].config
    assert (config.data.root, config.tracking.uri, config.eval.temperatures) == ("/data/a,b", "sqlite:///a,b.db", (0.5, 1.0))
    assert (sweep.slurm.partition, sweep.slurm.extra_sbatch) == ("gpu,gpu-large", ("--exclusive", "--nodelist=n1"))
    assert load_sweep(path, ['description="a, b"']).description == "a, b"  # quoted: the same


def test_a_free_text_key_that_is_an_axis_takes_a_multirun_list(tmp_path):
    path = write(tmp_path, "name: z\naxes:\n  zip:\n    - {data.root: [/a, /b], train.epochs: [1, 2]}\n")
    sweep = load_sweep(path, ["data.root=/c,/d"])
    assert [(t.config.data.root, t.config.train.epochs) for t in sweep.trials] == [("/c", 1), ("/d", 2)]


def test_settings_overrides_and_slurm_defaults(tmp_path):
    path = write(tmp_path, SMALL + "resources: {cpus: 4, gpus: 0.5, memory_gb: 16, time_limit_min: 90}\n")
    sweep = load_sweep(path, ["backend=slurm", "slurm.partition=gpu", "slurm.extra_sbatch=[--exclusive]",
                              "ray.max_concurrent_trials=3", "local.parallel=2", "evaluation.fid=false", "name=other"])
    assert (sweep.backend, sweep.name) == ("slurm", "other")
    assert (sweep.slurm.partition, sweep.slurm.extra_sbatch) == ("gpu", ("--exclusive",))
    assert (sweep.slurm.gpus_per_trial, sweep.slurm.cpus_per_trial, sweep.slurm.mem_gb, sweep.slurm.time_min) == (1, 4, 16.0, 90)
    assert sweep.ray.max_concurrent_trials == 3 and sweep.ray.address == "local" and sweep.local.parallel == 2
    assert sweep.evaluation.selected == ("test_bpd", "samples", "receptive_fields")
    assert load_sweep(path, ["evaluation.enabled=false"]).evaluation.selected == ()
    assert sweep.overrides[0] == "backend=slurm"
    assert sweep.report.equivalence_margin == 0.01
    assert load_sweep(path, ["report.equivalence_margin=0.005"]).report.equivalence_margin == 0.005


def test_report_settings_are_typed_from_the_file_and_overrides(tmp_path):
    from jobs.sweep_spec import DEFAULT_SEED_SD

    report = load_sweep(write(tmp_path, SMALL)).report
    assert (report.expected_seed_sd, report.min_gain, report.targets) == (DEFAULT_SEED_SD, 0.001, None)
    path = write(tmp_path, SMALL + "report: {expected_seed_sd: 0.02, min_gain: 0.002, targets: [4.6, 4.5]}\n")
    report = load_sweep(path).report
    assert (report.expected_seed_sd, report.min_gain, report.targets) == (0.02, 0.002, (4.6, 4.5))
    assert load_sweep(path, ["report.targets=4.4,4.3"]).report.targets == (4.4, 4.3)
    assert load_sweep(path, ["report.targets=null"]).report.targets is None
    assert load_sweep(path, ["report.expected_seed_sd=0.03"]).report.expected_seed_sd == 0.03
    assert load_sweep(path, ["report.min_gain=1"]).report.min_gain == 1.0


def test_the_default_seed_sd_is_the_mini_studys():
    import csv

    rows = [r for r in csv.DictReader((REPO / "docs/results/mini-study/trials.csv").open()) if r["state"] == "finished"]
    by_setting: dict[tuple, list[float]] = {}
    for r in rows:
        by_setting.setdefault((r["train.batch_size"], r["prior.kind"]), []).append(float(r["test_bpd"]))
    squares = sum(sum((v - sum(vs) / len(vs)) ** 2 for v in vs) for vs in by_setting.values())
    pooled = math.sqrt(squares / sum(len(vs) - 1 for vs in by_setting.values()))
    from jobs.sweep_spec import DEFAULT_SEED_SD

    assert DEFAULT_SEED_SD == round(pooled, 3)


def test_sweep_id_tracks_what_is_trained(tmp_path):
    path = write(tmp_path, SMALL)
    base = load_sweep(path).sweep_id
    assert load_sweep(path).sweep_id == base and len(base) == 12
    assert load_sweep(path, ["backend=local", "resources.gpus=1", "tracking.uri=sqlite:///x.db"]).sweep_id == base
    assert load_sweep(path, ["seeds=[0,1,2]"]).sweep_id != base
    assert load_sweep(path, ["name=renamed"]).sweep_id != base


def test_trial_index_lookup(tmp_path):
    sweep = load_sweep(write(tmp_path, SMALL))
    assert sweep.trial(15) is sweep.trials[15]
    with pytest.raises(ConfigError) as info:
        sweep.trial(16)
    assert str(info.value) == f"trial index 16 is out of range: sweep 'small' ({sweep.path}) has 16 trials, indexes 0-15"


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["train.batchsize=[64]"], "train.batchsize: unknown key (did you mean 'train.batch_size'?) [override 'train.batchsize=[64]']"),
    (["backend=slrum"], "backend='slrum': must be one of 'ray', 'slurm', 'local' (did you mean 'slurm'?) [override 'backend=slrum']"),
    (["ray.adress=auto"], "ray.adress: unknown key (did you mean 'ray.address'?) [override 'ray.adress=auto']"),
    (["ray.address=somewhere"], "ray.address='somewhere': must be 'local', 'auto', 'ray://HOST:PORT' or 'HOST:PORT' [override 'ray.address=somewhere']"),
    (["slurm.partition=3"], "slurm.partition=3: expected a string or null, got an integer [override 'slurm.partition=3']"),
    (["slurm.extra_sbatch=[exclusive]"],
     "slurm.extra_sbatch='exclusive': each entry must be one long sbatch option such as '--exclusive' or '--nodelist=n1' [override 'slurm.extra_sbatch=[exclusive]']"),
    (["resources.gpus=1.5"], "resources.gpus=1.5: must be a whole number when above 1 [override 'resources.gpus=1.5']"),
    (["resources.cpu=2"], "resources.cpu: unknown key (did you mean 'resources.cpus'?) [override 'resources.cpu=2']"),
    (["evaluation.fid=maybe"], "evaluation.fid='maybe': expected a boolean (true/false), got a string [override 'evaluation.fid=maybe']"),
    (["report.equivalence_margin=0"], "report.equivalence_margin=0.0: must be a positive number [override 'report.equivalence_margin=0']"),
    (["report.expected_seed_sd=-1"], "report.expected_seed_sd=-1.0: must be a positive number [override 'report.expected_seed_sd=-1']"),
    (["report.min_gain=0"], "report.min_gain=0.0: must be a positive number [override 'report.min_gain=0']"),
    (["report.min_gain=0.001,0.002"],
     "'report.min_gain=0.001,0.002' is a multirun list, but report.min_gain is set once for the whole sweep, not per trial: give one value"),
    (["report.targets=[4.5,0]"],
     "report.targets=[4.5, 0.0]: must be a list of positive BPD values (bits/dim), or null for the default quantiles [override 'report.targets=[4.5,0]']"),
    (["report.targets=[]"],
     "report.targets=[]: must be a list of positive BPD values (bits/dim), or null for the default quantiles [override 'report.targets=[]']"),
    (["report.targets=4.5"], "report.targets=4.5: expected a list of numbers or null, got a decimal number [override 'report.targets=4.5']"),
    (["train.batch_size=[32,big]"], "train.batch_size='big': expected an integer, got a string [override 'train.batch_size=[32,big]']"),
    (["prior.kind=[laplace,cauchy]"], "prior.kind='cauchy': must be one of 'laplace', 'gaussian' [override 'prior.kind=[laplace,cauchy]']"),
    (["data.name=celeba"], "data.name='celeba': not among the axes.zip[0] values [\"msds1\", \"msds2\"] [override 'data.name=celeba']"),
    (["train.epochs=[1,2,3]"],
     "train.epochs=[1, 2, 3]: axes.zip[0] has 2 positions; give a list of that length, or one value to keep only its positions [override 'train.epochs=[1,2,3]']"),
    (["seeds=[]"], "seeds=[]: an axis needs at least one value [override 'seeds=[]']"),
    (["base.train.epochs=3"],
     "base.train.epochs: cannot be overridden; override trial keys (train.epochs=5) or axis keys ('train.batch_size=[64,512]') directly [override 'base.train.epochs=3']"),
    (["bakend=ray"], "bakend: unknown key (did you mean 'backend'?) [override 'bakend=ray']"),
    (["name=a b"], "name='a b': must be letters, digits, '_', '.' or '-' (it names folders) [override 'name=a b']"),
    (["random.samples=3"], "random.samples: this sweep has no axes.random [override 'random.samples=3']"),
    (["resources.gpus=0.5,1"],
     "'resources.gpus=0.5,1' is a multirun list, but resources.gpus is set once for the whole sweep, not per trial: give one value"),
    (["local.parallel=range(1,3)"],
     "'local.parallel=range(1,3)' is a multirun list, but local.parallel is set once for the whole sweep, not per trial: give one value"),
    (["backend=ray,local"], "backend='ray,local': must be one of 'ray', 'slurm', 'local' (did you mean 'local'?) [override 'backend=ray,local']"),
    (["train.lr=1e-3,fast"], "train.lr='fast': expected a number, got a string [override 'train.lr=1e-3,fast']"),
    (["train.lr=1e-3,,2e-3"],
     "override 'train.lr=1e-3,,2e-3': an empty value in a comma list (a multirun list is a,b,c): remove the extra comma"),
    (["seeds=range(3,0)"], "override 'seeds=range(3,0)': range(3,0) is empty; Python's rules apply: range(0,3) is 0, 1, 2"),
    (["seeds=range(0,1.5)"], "override 'seeds=range(0,1.5)': range() takes 1 to 3 integers, range(start, stop[, step]), e.g. range(0,3)"),
    (["train.epochs=1,2,3"],
     "train.epochs=[1, 2, 3]: axes.zip[0] has 2 positions; give a list of that length, or one value to keep only its positions [override 'train.epochs=1,2,3']"),
])
def test_override_errors(tmp_path, overrides, message):
    assert error_of(write(tmp_path, SMALL), overrides) == message


def test_duplicate_random_points_suggest_another_draw(tmp_path):
    path = write(tmp_path, "name: d\naxes:\n  random:\n    samples: 8\n    params: {prior.kind: {choice: [laplace, gaussian]}}\n")
    assert error_of(path).endswith("give the same config; remove the duplicate value or change axes.random (seed, samples, params)")


def test_duplicate_trials_name_both_indexes(tmp_path):
    assert error_of(write(tmp_path, "name: d\naxes:\n  grid:\n    train.epochs: [1, 2]\n  seeds: [0, 3, 0]\n")) == (
        'trials 0 and 2 are the same trial (id %s): axis values {"train.epochs": 1, "run.seed": 0} and '
        '{"train.epochs": 1, "run.seed": 0} give the same config; remove the duplicate value'
        % trial_id(load_trial_config(None, ["train.epochs=1"])))
    # Values that differ in spelling only (1 and 1.0 for a float key) are the same trial too.
    assert error_of(write(tmp_path, "name: d\naxes:\n  grid:\n    prior.temperature: [1, 1.0]\n")).startswith(
        "trials 0 and 1 are the same trial")


@pytest.mark.parametrize("text, message", [
    ("base: {}\n", "name: required, a short name for the sweep's MLflow experiment and run folder [in {path}]"),
    ("name: x\ntrain: {epochs: 3}\n", "train: unknown key (trial config keys go under 'base:') [in {path}]"),
    ("name: x\naxis: {}\n", "axis: unknown key (did you mean 'axes'?) [in {path}]"),
    ("name: x\naxes: {grd: {}}\n", "axes.grd: unknown key (did you mean 'axes.grid'?) [in {path}]"),
    ("name: x\naxes: {grid: {train.batchsize: [1]}}\n",
     "train.batchsize: unknown key (did you mean 'train.batch_size'?) [in {path} axes.grid]"),
    ("name: x\naxes: {grid: {train.batch_size: 64}}\n",
     "train.batch_size=64: an axis needs a list of values, e.g. [64, 512] [in {path} axes.grid]"),
    ("name: x\naxes: {grid: {train.batch_size: [64, big]}}\n",
     "train.batch_size='big': expected an integer, got a string [in {path} axes.grid]"),
    ("name: x\naxes: {grid: {prior.kind: [laplace, cauchy]}}\n",
     "prior.kind='cauchy': must be one of 'laplace', 'gaussian' [in {path} axes.grid]"),
    ("name: x\naxes: {seeds: [0, -1]}\n", "run.seed=-1: must be a non-negative integer [in {path} axes.seeds]"),
    ("name: x\naxes: {zip: [{train.lr: [0.1, 0.2], train.batch_size: [1]}]}\n",
     "axes.zip[0]: lists must have equal lengths (train.lr: 2, train.batch_size: 1) [in {path}]"),
    ("name: x\naxes: {zip: [{train.lr: [0.1]}], grid: {train.lr: [0.3]}}\n",
     "train.lr: appears in both axes.zip[0] and axes.grid [in {path}]"),
    ("name: x\naxes: {random: {samples: 2, params: {train.lr: {normal: [0, 1]}}}}\n",
     "train.lr: unknown distribution 'normal', expected one of uniform, loguniform, choice [in {path} axes.random]"),
    ("name: x\naxes: {random: {samples: 2, params: {train.lr: {loguniform: [0, 1]}}}}\n",
     "train.lr=[0.0, 1.0]: loguniform bounds must satisfy 0 < lo < hi [in {path} axes.random]"),
    ("name: x\naxes: {random: {params: {train.lr: {uniform: [0.1, 1]}}}}\n",
     "axes.random.samples=null: must be a positive integer (the number of random draws), or add tune.searcher to "
     "search axes.random.params adaptively [in {path} axes.random]"),
    ("name: x\naxes: {random: {samples: 2, params: {train.batch_size: {uniform: [16, 64]}}}}\n",
     None),  # a float drawn for an integer key: named below
    ("name: x\nbase: {train: {epochs: three}}\n", "train.epochs='three': expected an integer, got a string [in {path} base]"),
    ("name: x\nbackend: kubernetes\n", "backend='kubernetes': must be one of 'ray', 'slurm', 'local' [in {path}]"),
    ("name: x\nresources: {gpus: -1}\n", "resources.gpus=-1.0: must be a non-negative number [in {path}]"),
    ("name: x\nbase_config: nope.yaml\n", "{dir}/nope.yaml: no such file"),
    ("name: x\naxes:\n  grid: [1\n", "{path}:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("- 1\n", "expected a sweep mapping with keys name, description, base_config, base, axes, resources, backend, max_failures, ray, slurm, local, evaluation, report, tune, reuse, got [1] [in {path}]"),
])
def test_file_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    got = error_of(path)
    if message is None:
        assert got.startswith("train.batch_size=") and got.endswith(f"expected an integer, got a decimal number [in {path} axes.random]")
    else:
        assert got == message.format(path=path, dir=tmp_path)


def test_missing_sweep_file(tmp_path):
    assert error_of(tmp_path / "absent.yaml") == f"{tmp_path / 'absent.yaml'}: no such file"


def test_seed_overrides_reach_a_seed_grid_axis(tmp_path):
    path = write(tmp_path, "name: g\naxes:\n  grid:\n    run.seed: [0, 1]\n    train.epochs: [1, 2]\n")
    sweep = load_sweep(path, ["seeds=[4,5,6]"])
    assert len(sweep.trials) == 6 and sweep.varying_keys == ["run.seed", "train.epochs"]
    assert [t.config.run.seed for t in sweep.trials[::2]] == [4, 5, 6]


def test_load_trial_from_a_config_or_a_sweep(tmp_path):
    sweep, config = load_trial(REPO / "sweeps/smoke.yaml", ["train.epochs=1"], 3)
    assert sweep.name == "smoke" and config == sweep.trials[3].config and config.train.epochs == 1
    none, single = load_trial(REPO / "configs/tiny.yaml", ["train.epochs=1"])
    assert none is None and single == load_trial_config(REPO / "configs/tiny.yaml", ["train.epochs=1"])
    with pytest.raises(ConfigError, match=r"smoke.yaml is a sweep with 4 trials: run them all with python -m jobs.sweep "
                                          r"\S+/sweeps/smoke.yaml, or one with --trial N \(0-3\)$"):
        load_trial(REPO / "sweeps/smoke.yaml")
    with pytest.raises(ConfigError, match=r"tiny.yaml is a trial config, not a sweep: --trial applies to sweep files only$"):
        load_trial(REPO / "configs/tiny.yaml", [], 0)
    with pytest.raises(ConfigError, match=r"^trial index 4 is out of range: sweep 'smoke' .* has 4 trials, indexes 0-3$"):
        load_trial(REPO / "sweeps/smoke.yaml", [], 4)


def test_is_sweep_file():
    assert is_sweep_file({"name": "x"}) and is_sweep_file({"base_config": "a.yaml"})
    assert not is_sweep_file({"train": {"epochs": 2}}) and not is_sweep_file(None) and not is_sweep_file([1])


# ----------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------

def test_forward_flops_match_the_spec():
    # spec §4: ≈ 12.6 GFLOP (CelebA) and 6.8 GFLOP (MSDS) per image forward.
    assert forward_flops(model_preset("celeba32")) == pytest.approx(12.6e9, rel=0.02)
    assert forward_flops(model_preset("msds")) == pytest.approx(6.8e9, rel=0.02)
    assert images_per_second(model_preset("msds")) == IMAGES_PER_S["msds"]
    # Twice the coupling layers: half the throughput; bf16 is assumed 3× fp32.
    assert images_per_second(model_preset("msds", nlayers=(8,))) == pytest.approx(IMAGES_PER_S["msds"] / 2)
    assert images_per_second(model_preset("msds", precision="bf16")) == pytest.approx(3 * IMAGES_PER_S["msds"])


def test_gpu_hours_of_one_trial():
    cfg = load_trial_config(None, ["model.preset=msds", "train.epochs=60", "train.val_draws=4", "eval.fid_samples=1000"])
    n_train, n_valid, n_test = 85_000, 5_000, 10_000
    forwards = 60 * n_train * 4 + 60 * n_valid * 4 + n_test * 4 + 1000 * 3
    assert training_images(cfg) == 60 * n_train
    assert gpu_hours(cfg, EvaluationSettings()) == pytest.approx(forwards / 4 / 370 / 3600)
    no_eval = forwards - n_test * 4 - 1000 * 3
    assert gpu_hours(cfg, EvaluationSettings(enabled=False)) == pytest.approx(no_eval / 4 / 370 / 3600)
    capped = load_trial_config(None, ["train.steps=100", "train.batch_size=512"])
    assert training_images(capped) == 51_200


def test_dry_run_table(tmp_path):
    sweep = load_sweep(write(tmp_path, SMALL + "resources: {cpus: 2, gpus: 0.5, memory_gb: 8}\n"))
    table = format_trials_table(sweep)
    lines = table.splitlines()
    assert lines[0] == f"sweep small ({sweep.path}): 16 trials, sweep id {sweep.sweep_id}, backend ray"
    assert lines[1].split() == ["#", "trial", "id", "data.name", "epochs", "batch_size", "prior.kind", "seed",
                                "cpus", "gpus", "mem", "GB", "time", "min", "images", "GPU-h"]
    rows = lines[2:18]
    for trial, row in zip(sweep.trials, rows):
        cells = row.split()
        assert cells[:7] == [str(trial.index), trial.trial_id, trial.config.data.name, str(trial.config.train.epochs),
                             str(trial.config.train.batch_size), trial.config.prior.kind, str(trial.config.run.seed)]
        assert cells[7:11] == ["2", "0.5", "8", "-"]
        assert cells[11] == f"{training_images(trial.config) / 1000:.3g}k"
        assert float(cells[12]) == pytest.approx(gpu_hours(trial.config, sweep.evaluation), rel=1e-2)
    total = sum(gpu_hours(t.config, sweep.evaluation) for t in sweep.trials)
    assert lines[18].startswith("total: 16 trials, ") and lines[18].endswith(f"{total:.3g} GPU-hours (estimated)")
    assert "not measurements" in lines[19] and "tiny 20000" in lines[19]
    assert lines[20].startswith("power: per comparison of two of the 8 settings (data.name/train.epochs × "
                                "train.batch_size × prior.kind) over 2 seeds, paired by seed")
    assert lines[21].startswith("WARNING: equivalence within ±0.01 bits/dim is out of reach at 2 seeds")
    assert len(lines) == 22


def test_dry_run_of_the_study_totals():
    from jobs.study import load_study

    sweep = load_study(REPO / "sweeps/batchsize.yaml").sweep("confirm")
    table = format_trials_table(sweep)
    assert len(table.splitlines()) == 60 + 4 + 2  # and the power line and its warning
    msds = [t for t in sweep.trials if t.config.data.name == "msds1"]
    celeba = [t for t in sweep.trials if t.config.data.name == "celeba"]
    assert len(msds) == len(celeba) == 30  # 24 tuned, 6 control
    # CelebA: 162,770 images × 100 epochs at ≈ 200 img/s is ≈ 22.6 h of training per trial.
    assert gpu_hours(celeba[0].config, sweep.evaluation) == pytest.approx(162_770 * 100 / 200 / 3600, rel=0.15)
    assert gpu_hours(msds[0].config, sweep.evaluation) == pytest.approx(85_000 * 60 / 370 / 3600, rel=0.15)


def test_duplicate_key_in_a_sweep_file_names_the_file_line_and_key(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\naxes:\n  grid: {train.lr: [1.0e-3]}\n  seeds: [0]\n  grid: {train.lr: [2.0e-3]}\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(info.value) == f"{path}:5:3: invalid YAML: duplicate key 'grid' (first on line 3): keep one"


def test_sweep_seeds_beyond_int64_are_refused(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: x\naxes: {{seeds: [0, {2**64}]}}\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(info.value).startswith(f"run.seed={2**64}: must be below 2^63")
    assert str(info.value).endswith(f"[in {path} axes.seeds]")
