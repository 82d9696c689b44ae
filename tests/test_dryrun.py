"""``jobs.dryrun``: throughput measured by ``bench/model_bench.py`` where a measurement exists,
assumed otherwise, and every estimate labelled with where it comes from."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from jobs.config import ConfigError
from jobs.dryrun import (
    ASSUMED_CPU_FLOP_S, NO_RESULTS, RESULTS_ENV, estimates, format_trials_table, forward_flops, images_per_second,
    load_measurements, power_lines, study_total_line, training_passes,
)
from jobs.tracking.env import device_name
from jobs.report.power import min_detectable_difference, seeds_for_tost, tost_power
from jobs.study import load_study
from jobs.sweep import main
from jobs.sweep_spec import DEFAULT_SEED_SD, load_sweep
from rgflow.config import model_preset
from tests.fixtures.sweep import REPO

SWEEP = f"""
name: est
base_config: {REPO / "configs" / "tiny.yaml"}
base: {{run: {{device: cpu}}}}
axes: {{grid: {{train.batch_size: [32, 512]}}}}
resources: {{cpus: 1, gpus: 0}}
evaluation: {{fid: false}}
"""


def _sweep(tmp_path, *overrides: str, text: str = SWEEP):
    path = tmp_path / "est.yaml"
    path.write_text(text)
    return load_sweep(path, [f"run.out_dir={tmp_path / 'runs'}", *overrides])


def _line(lines: list[str], start: str) -> str:
    """The one line of a dry-run that starts with ``start``."""
    found = [line for line in lines if line.startswith(start)]
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture(scope="module")
def bench_results(tmp_path_factory):
    """A results folder written by a real (short) ``bench/model_bench.py`` run of ``tiny`` on the CPU."""
    folder = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "model_bench.py"), "--presets", "tiny",
                           "--batches", "32", "--ckpt", "on", "--steps", "1", "--out", str(folder / "model.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return folder


def test_cpu_estimate_measured_by_the_bench(tmp_path, bench_results):
    row = json.loads((bench_results / "model.json").read_text())["rows"][0]
    sweep = _sweep(tmp_path)
    found = estimates(sweep, bench_results)
    assert [e.device for e in found] == ["cpu", "cpu"]
    threads = f"{row['threads']} thread{'s' * (row['threads'] != 1)}"
    assert row["device_name"] and row["device_name"] == device_name("cpu")
    for est, batch in zip(found, ("batch 32", "batch 32, the nearest measured")):   # the one row: batch 32
        assert est.throughput.images_per_s == pytest.approx(row["img_per_s"])
        assert est.throughput.basis == f"measured on {row['device_name']}, {threads}, {batch} " \
                                       f"({bench_results / 'model.json'})"
    table = format_trials_table(sweep, bench_results).splitlines()
    assert table[1].split()[-1] == "CPU-h" and _line(table, "total: ").endswith("CPU-hours (estimated)")
    assert f"measured on {row['device_name']}" in _line(table, "estimate, ")
    assert "assumed" not in _line(table, "estimate, ")


def test_gpu_trials_stay_assumed_without_a_gpu_measurement(tmp_path, bench_results):
    sweep = _sweep(tmp_path, "resources.gpus=1", "run.device=auto")
    found = estimates(sweep, bench_results)
    assert {e.device for e in found} == {"gpu"}
    assert all(e.throughput.basis == "assumed (guess)" for e in found)
    assert found[0].throughput.images_per_s == images_per_second(sweep.trials[0].config.model)
    table = format_trials_table(sweep, bench_results).splitlines()
    assert table[1].split()[-1] == "GPU-h" and "assumed figures are not measurements" in _line(table, "estimate, ")


def test_cpu_estimate_without_measurements_is_assumed(tmp_path):
    sweep = _sweep(tmp_path, "model.preset=msds")
    est = estimates(sweep, tmp_path / "none")[0]
    model = sweep.trials[0].config.model
    assert est.throughput.basis == "assumed (100 GFLOP/s)"
    step_flops = forward_flops(model) * training_passes(model)
    assert est.throughput.images_per_s == pytest.approx(ASSUMED_CPU_FLOP_S / step_flops)
    rate = f"{est.throughput.images_per_s:.3g}"
    assert f"msds {rate} img/s (fp32 on cpu: assumed (100 GFLOP/s))" in format_trials_table(sweep, tmp_path / "none")


def _row(batch: int, img_per_s: float, **kw) -> dict:
    return {"kind": "train", "preset": "tiny", "batch": batch, "checkpointing": True, "precision": "fp32",
            "device": "cpu", "threads": 2, "img_per_s": img_per_s, **kw}


def test_closest_measurement_is_chosen_and_other_files_are_ignored(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "model-a.json").write_text(json.dumps({"rows": [
        _row(32, 100.0), _row(128, 400.0), _row(512, 900.0, checkpointing=False), _row(512, 1.0, error="OOM"),
        _row(512, 5.0, precision="bf16"), _row(512, 7.0, device="cuda", device_name="NVIDIA H200"),
        {"kind": "sample", "preset": "tiny", "n": 64}]}))
    (results / "model-b.json").write_text("not json")
    (results / "model-ref.json").write_text(json.dumps({"rows": [_row(512, 3.0, impl="ref")]}))
    assert len(load_measurements(results)) == 5
    found = estimates(_sweep(tmp_path), results)
    assert [e.throughput.images_per_s for e in found] == [100.0, 400.0]  # checkpointing matches before batch size
    assert "batch 128" in found[1].throughput.basis
    gpu = estimates(_sweep(tmp_path, "resources.gpus=1", "run.device=auto"), results)
    assert gpu[0].throughput.basis == f"measured on NVIDIA H200, batch 512, the nearest measured ({results / 'model-a.json'})"
    bf16 = estimates(_sweep(tmp_path, "model.precision=tf32"), results)
    assert bf16[0].throughput.basis == "assumed (100 GFLOP/s)"
    one_thread = estimates(_sweep(tmp_path, "run.threads=1"), results)
    assert one_thread[0].throughput.images_per_s == 100.0   # no 1-thread row: the closest other


def test_throughput_is_interpolated_in_log_batch_between_measured_sizes(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "model.json").write_text(json.dumps({"rows": [_row(32, 100.0), _row(128, 400.0), _row(16, 9.0, threads=1)]}))
    text = SWEEP.replace("[32, 512]", "[16, 32, 64, 100, 512]")
    found = estimates(_sweep(tmp_path, "run.threads=2", text=text), results)
    rates = [e.throughput.images_per_s for e in found]
    # 16: below the 2-thread rows (the 1-thread row is a worse match); 64: half-way in log batch
    assert rates[:3] == [100.0, 100.0, pytest.approx(250.0)]
    assert rates[3] == pytest.approx(100.0 + 300.0 * math.log(100 / 32) / math.log(4)) and rates[4] == 400.0
    assert [e.throughput.basis.split(", ", 2)[2] for e in found] == [
        f"batch 32, the nearest measured ({results / 'model.json'})", f"batch 32 ({results / 'model.json'})",
        f"batch 64 interpolated in log batch between 32 and 128 ({results / 'model.json'})",
        f"batch 100 interpolated in log batch between 32 and 128 ({results / 'model.json'})",
        f"batch 128, the nearest measured ({results / 'model.json'})"]
    line = _line(format_trials_table(_sweep(tmp_path, "run.threads=2", text=text), results).splitlines(), "estimate, ")
    assert "tiny 250 img/s (fp32 on cpu: measured on cpu, 2 threads, batch 64 interpolated" in line


def test_a_newer_file_replaces_an_older_ones_row_and_the_results_folder_is_overridable(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    old, new = results / "model-z-old.json", results / "model-a-new.json"
    old.write_text(json.dumps({"rows": [_row(32, 100.0), _row(128, 400.0)]}))
    new.write_text(json.dumps({"rows": [_row(32, 300.0, device_name="AMD EPYC")]}))
    os.utime(old, (1_000_000, 1_000_000))
    monkeypatch.setenv(RESULTS_ENV, str(results))
    found = estimates(_sweep(tmp_path))   # no folder given: $RGFLOW_BENCH_RESULTS
    assert found[0].throughput.images_per_s == 300.0
    assert found[0].throughput.basis == f"measured on AMD EPYC, 2 threads, batch 32 ({new})"


def test_gpu_check_results_price_gpu_trials_and_its_smoke_runs_do_not(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    gpu = dict(device="cuda", device_name="NVIDIA H100 80GB HBM3", threads=16)
    (results / "gpu_check.json").write_text(json.dumps({"smoke": False, "train": [
        _row(512, 5000.0, precision="bf16", impl="ours", model_overrides={"compile": False}, **gpu),
        _row(512, 8000.0, precision="bf16", impl="ours", model_overrides={"compile": True}, **gpu),
        _row(512, 900.0, precision="fp32", impl="ref", **gpu)]}))
    (results / "gpu_check-smoke.json").write_text(json.dumps({"smoke": True, "train": [
        _row(512, 1.0, precision="fp32", impl="ours", **gpu)]}))
    assert len(load_measurements(results)) == 2
    on_gpu = ("resources.gpus=1", "run.device=auto", "train.batch_size=512")
    bf16 = estimates(_sweep(tmp_path, *on_gpu, "model.precision=bf16"), results)[0].throughput
    assert bf16.images_per_s == 5000.0
    assert bf16.basis == f"measured on NVIDIA H100 80GB HBM3, batch 512 ({results / 'gpu_check.json'})"
    compiled = estimates(_sweep(tmp_path, *on_gpu, "model.precision=bf16", "model.compile=true"), results)[0]
    assert compiled.throughput.images_per_s == 8000.0
    fp32 = estimates(_sweep(tmp_path, *on_gpu), results)[0].throughput   # only the smoke and reference rows
    assert fp32.basis == "assumed (guess)"


def test_study_total_adds_up_its_stages():
    study = load_study(REPO / "sweeps" / "batchsize.yaml")
    stages = [study.sweep(stage) for stage in study.stages]
    per_stage = [sum(e.hours for e in estimates(s, NO_RESULTS)) for s in stages]
    line = study_total_line("batchsize", stages, NO_RESULTS)
    assert line == (f"study batchsize: 2 stages, 188 trials, {sum(per_stage):.3g} GPU-hours (estimated): batchsize-tune "
                    f"128 trials {per_stage[0]:.3g} (upper bound: asha stops trials early), batchsize-confirm 60 trials "
                    f"{per_stage[1]:.3g}")


def test_model_overrides_scale_a_measurement_by_flops(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "model.json").write_text(json.dumps({"rows": [_row(32, 100.0)]}))
    sweep = _sweep(tmp_path, "model.nhidden=64")
    ratio = forward_flops(model_preset("tiny")) / forward_flops(sweep.trials[0].config.model)
    assert estimates(sweep, results)[0].throughput.images_per_s == pytest.approx(100.0 * ratio)


# ----------------------------------------------------------------------------------------------
# Power of the report's comparisons
# ----------------------------------------------------------------------------------------------

COMPARED = SWEEP.replace("axes: {grid: {train.batch_size: [32, 512]}}",
                         "axes: {grid: {train.batch_size: [32, 64], prior.kind: [laplace, gaussian]}, seeds: [0, 1, 2]}")


def test_mini_study_dry_run_states_the_power_of_its_confirm_stage():
    study = load_study(REPO / "sweeps" / "mini-study.yaml")
    assert power_lines(study.sweep("tune")) == []  # a search (random LRs, ASHA): nothing compared over seeds
    table = format_trials_table(study.sweep("confirm"), REPO / "no-bench").splitlines()
    sd = 2**0.5 * DEFAULT_SEED_SD
    assert table[-2] == (
        "power: per comparison of two of the 6 settings (train.batch_size × prior.kind) over 3 seeds, paired by seed "
        f"(s.d. of a per-seed difference {sd:.2g} bits/dim = √2 × report.expected_seed_sd {DEFAULT_SEED_SD:g}, seeds "
        "independent; "
        "two-sided α 0.05, power 0.8, before family adjustment): minimum detectable difference "
        f"{min_detectable_difference(3, sd):.2g} bits/dim; equivalence within ±0.01 bits/dim (report.equivalence_margin) "
        f"needs {seeds_for_tost(sd, 0.01)} seeds (TOST power {tost_power(3, sd, 0.01):.2f} at 3 seeds)")
    assert table[-1].startswith("WARNING: equivalence within ±0.01 bits/dim is out of reach at 3 seeds (TOST power 0.00")


def test_power_line_of_a_sweep_follows_its_report_settings(tmp_path):
    few = power_lines(_sweep(tmp_path, text=COMPARED))
    assert few[0].startswith("power: per comparison of two of the 4 settings (train.batch_size × prior.kind) over 3 "
                             "seeds, paired by seed")
    assert few[1].startswith("WARNING: equivalence within ±0.01 bits/dim is out of reach at 3 seeds")
    # A small seed-to-seed spread, or a wide margin: 3 seeds reach equivalence, no warning.
    sd = 2**0.5 * 0.002
    enough = power_lines(_sweep(tmp_path, "report.expected_seed_sd=0.002", text=COMPARED))
    assert len(enough) == 1 and "s.d. of a per-seed difference 0.0028 bits/dim" in enough[0]
    assert enough[0].endswith(f"needs {seeds_for_tost(sd, 0.01)} seeds (TOST power {tost_power(3, sd, 0.01):.2f} at "
                              "3 seeds)")
    assert len(power_lines(_sweep(tmp_path, "report.equivalence_margin=0.2", text=COMPARED))) == 1


def test_one_seed_is_warned_and_sweeps_that_compare_nothing_have_no_power_line(tmp_path):
    one = power_lines(_sweep(tmp_path))  # batch 32 vs 512, one seed
    assert "over 1 seed, paired by seed" in one[0] and "nothing tested (the report needs ≥ 2 seeds" in one[0]
    assert one[1].startswith("WARNING: at 1 seed the report tests no comparison: give ≥ 2 seeds for a test")
    assert power_lines(_sweep(tmp_path, "train.batch_size=32", "seeds=[0,1,2]")) == []  # one setting


def test_settings_on_different_seeds_are_modelled_as_paired(tmp_path):
    text = SWEEP.replace("axes: {grid: {train.batch_size: [32, 512]}}",
                         "axes: {zip: [{train.batch_size: [32, 32, 64, 64], run.seed: [0, 1, 2, 3]}]}")
    line = power_lines(_sweep(tmp_path, text=text))[0]
    assert "two of the 2 settings (train.batch_size) over at least 2 seeds each, unpaired (modelled as paired)" in line


def test_a_bad_expected_seed_sd_is_a_one_line_error_naming_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        _sweep(tmp_path, "report.expected_seed_sd=-1", text=COMPARED)
    assert str(info.value) == ("report.expected_seed_sd=-1.0: must be a positive number "
                               "[override 'report.expected_seed_sd=-1']")
    assert main([str(REPO / "sweeps" / "mini-study.yaml"), "--dry-run", "report.expected_seed_sd=-1"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip().splitlines() == [f"error: {info.value}"]


def test_a_study_dry_run_ends_with_its_total(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    args = [str(REPO / "sweeps" / "mini-study.yaml"), "--dry-run", f"run.out_dir={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}"]
    main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    study = load_study(REPO / "sweeps" / "mini-study.yaml")
    stages = [study.sweep(stage) for stage in study.stages]
    assert lines[-1].startswith("study mini-study: 2 stages, 42 trials, ")
    assert lines[-1] == study_total_line("mini-study", stages)
