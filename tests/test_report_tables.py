"""jobs.report's tables, header, figures and HTML as pure functions of fabricated runs and frames."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.axes
import numpy as np
import pandas as pd
import pytest

from jobs.config import flatten, load_trial_config
from jobs.report import figures, stats
from jobs.report.header import header, parameter_count
from jobs.report.query import SweepRuns
from jobs.report.reference_values import REPRODUCTION_2025_TABLE_1
from jobs.report.render import inline
from jobs.report.tables import (NOISE_EXTRAS, curves, reproduction_table, settings_shown, settings_table,
                                trial_table)
from jobs.tracking.store import REASON_TAG, RunSummary
from rgflow.model import RGFlowModel

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def history(steps, values) -> pd.DataFrame:
    return pd.DataFrame({"step": np.asarray(steps, dtype=int), "value": np.asarray(values, dtype=float)})


def run(index: int, overrides: list[str], *, state: str = "finished", tags: dict | None = None,
        metrics: dict | None = None) -> RunSummary:
    params = flatten(load_trial_config(TINY, overrides))
    return RunSummary(run_id=f"run{index}", trial_id=f"trial{index:07d}", status="FINISHED" if state == "finished"
                      else "FAILED", state=state, attempt=0, start_time=0, end_time=None,
                      tags={"rgflow.trial_index": str(index), **(tags or {})}, params=params, metrics=metrics or {})


def sweep(runs: list[RunSummary], histories: dict | None = None) -> SweepRuns:
    return SweepRuns("sqlite:///unused.db", "0", "fabricated", None, {}, runs, histories or {})


# ----------------------------------------------------------------------------------------------
# Trial table and curves
# ----------------------------------------------------------------------------------------------

def test_trial_table_failure_reason_learning_rates_and_draw_se():
    runs = [run(0, ["train.batch_size=256", "train.lr_scaling=sqrt", "train.lr=0.001"],
                metrics={"test_bpd": 3.2, "test_bpd_se": 0.01, "test_bpd_se_draws": 0.0002}),
            run(1, ["train.batch_size=64"], state="failed", tags={REASON_TAG: "non-finite values at step 812"})]
    data = sweep(runs, {"run0": {"lr": history([10, 20], [1e-4, 0.002])}})
    table = trial_table(data)
    assert table.at["run0", "effective_lr"] == pytest.approx(1e-3 * math.sqrt(256 / 64))
    assert table.at["run0", "final_lr"] == pytest.approx(0.002)
    assert table.at["run0", "test_bpd_se_draws"] == pytest.approx(0.0002)
    assert table.at["run0", "failure_reason"] == ""
    assert table.at["run1", "failure_reason"] == "non-finite values at step 812"
    assert table.at["run1", "effective_lr"] == pytest.approx(1e-3)
    assert math.isnan(table.at["run1", "final_lr"]) and math.isnan(table.at["run1", "test_bpd_se_draws"])
    assert set(table["dataset"]) == {"msds1"} and set(table["preset"]) == {"tiny"}


def test_noise_frame_holds_the_raw_estimates_aligned_by_step():
    data = sweep([run(0, [])], {"run0": {"noise_scale": history([10, 20], [100, 110]),
                                         "noise_grad_sq": history([10, 20, 30], [0.1, 0.2, -0.05]),
                                         "noise_trace": history([20, 30], [22.0, 3.0])}})
    _, noise = curves(data, trial_table(data))
    assert list(noise.columns) == ["run_id", "step", "samples_seen", "noise_scale", *NOISE_EXTRAS]
    assert noise["step"].tolist() == [10, 20, 30]
    assert noise["samples_seen"].tolist() == [640, 1280, 1920]  # step × batch 64 without a samples_seen history
    np.testing.assert_allclose(noise["noise_scale"], [100, 110, np.nan])
    np.testing.assert_allclose(noise["noise_grad_sq"], [0.1, 0.2, -0.05])
    np.testing.assert_allclose(noise["noise_trace"], [np.nan, 22.0, 3.0])
    assert noise["noise_scale_adam"].isna().all() and noise["noise_trace_adam"].isna().all()


# ----------------------------------------------------------------------------------------------
# Header
# ----------------------------------------------------------------------------------------------

def test_header_shares_common_settings_and_tables_the_differing_ones():
    protocol = {f"rgflow.eval.{k}": str(v) for k, v in {
        "checkpoint": "last", "test_images": 10000, "test_draws": 4, "temperatures": "0.5,1",
        "fid_images": 5000, "fid_network": "inception-v3-fid"}.items()}
    runs = [run(i, [f"train.batch_size={b}", f"train.lr_scaling={s}", f"run.seed={seed}", "data.train_size=null"],
                tags=protocol)
            for i, (b, s, seed) in enumerate([(64, "none", 0), (64, "none", 1), (512, "sqrt", 0), (512, "sqrt", 1)])]
    data = sweep(runs)
    head = header(data, trial_table(data))
    config = load_trial_config(TINY)
    count = sum(p.numel() for p in RGFlowModel(config.model, config.prior).parameters())
    assert parameter_count(config.model, config.prior) == count
    assert "dataset: `msds1`" in head.lines
    assert "split sizes (images): train all, validation 200, test 200" in head.lines
    assert f"model: preset `tiny`, {count:,} parameters" in head.lines
    assert "seeds: 0, 1 (every setting)" in head.lines
    assert "weight decay: 5e-05" in head.lines and "epochs: 2" in head.lines
    assert "evaluated checkpoint: last" in head.lines
    assert "test BPD protocol: 10,000 test images × 4 dequantisation draws" in head.lines
    assert ("FID protocol: 5,000 samples per temperature (T = 0.5, 1) vs real images: first 5,000 test images, "
            "features `inception-v3-fid`") in head.lines  # a protocol without fid_reference (older evaluations)
    assert not any(line.startswith("receptive fields") for line in head.lines)  # not in that protocol
    assert "batch size (images): 64, 512 (per setting)" in head.lines
    assert not any(line.startswith("effective LR") for line in head.lines)
    groups = head.groups.set_index("setting")
    assert "batch size (images)" not in groups  # the setting label names it
    assert groups.at["batch 64, LR scaling none, laplace", "effective LR"] == "0.001"
    assert groups.at["batch 512, LR scaling sqrt, laplace", "effective LR"] == f"{1e-3 * math.sqrt(8):.3g}"


def test_header_says_when_nothing_was_evaluated():
    data = sweep([run(0, [])])
    head = header(data, trial_table(data))
    assert "evaluation: not evaluated (no `rgflow.eval.*` tags: `jobs.evaluate` not run)" in head.lines
    assert head.groups.empty


# ----------------------------------------------------------------------------------------------
# Per setting
# ----------------------------------------------------------------------------------------------

def trials_frame(rows: list[dict]) -> pd.DataFrame:
    """A trial table as trial_table builds it, from the fields that matter here."""
    base = dict(context="", lr_scaling="none", prior="laplace", dataset="msds1", preset="msds", state="finished",
                failure_reason="", final_val_bpd=math.nan, best_val_bpd=math.nan, test_bpd=math.nan,
                gpu_hours=math.nan, cpu_hours=math.nan, effective_lr=1e-3, epochs=100.0)
    frame = pd.DataFrame([{**base, **r} for r in rows])
    frame.index = [f"r{i}" for i in range(len(frame))]
    return frame


def test_settings_table_mean_ci_cost_and_failures():
    table = trials_frame(
        [dict(batch_size=64, seed=s, final_val_bpd=v, best_val_bpd=v - 0.01, test_bpd=v + 0.02, gpu_hours=0.5,
              fid_T1=40.0 + s) for s, v in enumerate([3.0, 3.1, 3.3])]
        + [dict(batch_size=512, seed=0, final_val_bpd=3.5, best_val_bpd=3.4, gpu_hours=0.25, fid_T1=60.0),
           dict(batch_size=512, seed=1, state="failed", failure_reason="non-finite values at step 812",
                final_val_bpd=9.0, gpu_hours=0.1),
           dict(batch_size=512, seed=2, state="failed", failure_reason="non-finite values at step 812",
                gpu_hours=0.1)])
    settings = settings_table(table).set_index("batch_size")
    est = stats.mean_ci([3.0, 3.1, 3.3])
    assert settings.at[64, "final_val_bpd_mean"] == pytest.approx(est.mean)
    assert (settings.at[64, "final_val_bpd_lo"], settings.at[64, "final_val_bpd_hi"]) == pytest.approx((est.lo, est.hi))
    assert settings.at[64, "test_bpd_mean"] == pytest.approx(est.mean + 0.02)
    assert settings.at[64, "fid_T1_n"] == 3 and settings.at[64, "failures"] == ""
    assert settings.at[64, "gpu_hours"] == pytest.approx(1.5)
    # the failed seeds' values stay out of the statistics; their GPU-hours count
    assert settings.at[512, "final_val_bpd_mean"] == pytest.approx(3.5) and settings.at[512, "final_val_bpd_n"] == 1
    assert math.isnan(settings.at[512, "final_val_bpd_lo"])
    assert settings.at[512, "gpu_hours"] == pytest.approx(0.45)
    assert settings.at[512, "failures"] == "2 of 3 failed: non-finite values at step 812"
    assert settings.at[512, "seeds"] == "0 1 2" and settings.at[512, "finished"] == 1
    shown = settings_shown(settings.reset_index()).set_index("batch (images)")
    assert shown.at["64", "final val BPD (bits/dim), mean ± 95% t CI"] == f"{est.mean:.4f} ± {est.half_width:.4f}"
    assert shown.at["512", "final val BPD (bits/dim), mean ± 95% t CI"] == "3.5000, n=1 (no CI)"
    assert shown.at["512", "test BPD (bits/dim), mean ± 95% t CI"] == ""
    assert shown.at["512", "GPU-h (sum)"] == "0.45"
    assert "± 0.0000" not in shown.to_string()


def test_a_pruned_trial_is_named_but_kept_out_of_the_statistics():
    reason = "pruned by asha at epoch 1 of 3 (val_bpd 3.9000 behind its rung)"
    table = trials_frame([dict(batch_size=64, seed=s, final_val_bpd=v) for s, v in enumerate([3.0, 3.2])]
                         + [dict(batch_size=64, seed=2, state="pruned", failure_reason=reason, final_val_bpd=3.9)])
    settings = settings_table(table).set_index("batch_size")
    assert settings.at[64, "final_val_bpd_mean"] == pytest.approx(3.1) and settings.at[64, "final_val_bpd_n"] == 2
    assert settings.at[64, "finished"] == 2 and settings.at[64, "failures"] == f"1 of 3 pruned: {reason}"


# ----------------------------------------------------------------------------------------------
# Against the 2025 reproduction
# ----------------------------------------------------------------------------------------------

def reproduction(values, batch: int = 512, dataset: str = "msds1", prior: str = "laplace", preset: str = "msds",
                 column: str = "test_bpd", **extra) -> pd.DataFrame:
    rows = [{"batch_size": batch, "seed": s, "dataset": dataset, "prior": prior, "preset": preset,
             "final_val_bpd": v + 0.5, column: v, **{k: vs[s] for k, vs in extra.items()}}
            for s, v in enumerate(values)]
    return reproduction_table(trials_frame(rows))


def bpd_row(rows: pd.DataFrame) -> pd.Series:
    return rows[rows["metric"] == "BPD"].iloc[0]


def test_reproduction_different_equivalent_inconclusive_not_tested():
    theirs = REPRODUCTION_2025_TABLE_1["msds1"]["laplace"]["bpd"]
    far = bpd_row(reproduction([1.899, 1.900, 1.901]))
    assert far["like_for_like"] and far["ours"] == "test BPD" and far["theirs"] == theirs
    assert far["diff"] == pytest.approx(1.900 - theirs)
    test = stats.one_sample([1.899, 1.900, 1.901], theirs)
    assert (far["diff_lo"], far["diff_hi"]) == pytest.approx(test.ci95) and far["p"] == pytest.approx(test.p)
    assert far["p"] < 0.05 and far["conclusion"] == "different"
    close = bpd_row(reproduction([theirs - 1e-4, theirs, theirs + 1e-4]))
    assert close["p_tost"] < 0.05 and close["conclusion"] == "equivalent"
    assert bpd_row(reproduction([1.80, 1.86, 1.92]))["conclusion"] == "inconclusive"
    one = bpd_row(reproduction([1.86]))
    assert one["conclusion"] == "not tested (< 2 seeds)" and one["n"] == 1 and math.isnan(one["p"])


def test_reproduction_like_for_like_source_and_fid():
    theirs = REPRODUCTION_2025_TABLE_1["celeba"]["gaussian"]
    rows = reproduction([3.70, 3.75, 3.72], dataset="celeba", prior="gaussian", preset="celeba32",
                        fid_T1=[80.0, 81.0, 79.5], **{"fid_T0.5": [60.0, 61.0, 62.0]})
    fid = rows[rows["metric"] == "FID"].iloc[0]
    assert fid["ours"] == "FID at T=1" and fid["theirs"] == theirs["fid"] and math.isnan(fid["p_tost"])
    assert fid["conclusion"] == "not different; not tested for equivalence"
    assert bpd_row(rows)["theirs"] == theirs["bpd"]
    # no test BPD: the final validation BPD, and the FID temperature closest to 1
    val = reproduction([3.0, 3.1], column="final_val_bpd", **{"fid_T0.5": [200.0, 210.0], "fid_T0.75": [150.0, 151.0]})
    assert bpd_row(val)["ours"] == "final validation BPD"
    assert val[val["metric"] == "FID"].iloc[0]["ours"] == "FID at T=0.75"
    small = bpd_row(reproduction([1.899, 1.900, 1.901], batch=64))
    assert not small["like_for_like"] and small["conclusion"] == "not like for like"
    assert small["unlike"] == "batch 64 (theirs 512)"
    assert bpd_row(reproduction([1.899, 1.900, 1.901], preset="tiny"))["unlike"] == "model tiny (theirs msds)"
    short = bpd_row(reproduction([1.899, 1.900, 1.901], epochs=[2.0, 2.0, 2.0], effective_lr=[2.83e-3] * 3))
    assert short["unlike"] == "effective LR 0.00283 (theirs 0.001); 2 epochs (theirs 60)"
    assert short["conclusion"] == "not like for like"
    assert reproduction([1.9, 1.9], prior="student").empty


# ----------------------------------------------------------------------------------------------
# Figures and HTML
# ----------------------------------------------------------------------------------------------

def curve_inputs(seeds: int):
    table = trials_frame([dict(batch_size=64, seed=s, fid_T1=50.0 + s, **{"fid_T0.5": 30.0 + s}) for s in range(seeds)])
    epochs = np.arange(1, 11, dtype=float)
    val = pd.concat([pd.DataFrame({"run_id": rid, "step": epochs * 100, "epoch": epochs,
                                   "val_bpd": 3 + np.exp(-epochs / 3) + 0.01 * s})
                     for s, rid in enumerate(table.index)], ignore_index=True)
    return table, val


@pytest.mark.parametrize("seeds", [1, 3])
def test_one_seed_figures_have_no_band_and_no_error_bar(seeds, tmp_path, monkeypatch):
    calls = {"fill_between": 0, "errorbar": 0}
    for name in calls:
        original = getattr(matplotlib.axes.Axes, name)

        def counted(self, *args, __name=name, __original=original, **kwargs):
            calls[__name] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, counted)
    table, val = curve_inputs(seeds)
    assert figures.val_bpd_figure(table, val, "epoch", tmp_path / "val.png").stat().st_size > 5000
    assert figures.fid_figure(table, tmp_path / "fid.png").stat().st_size > 5000
    expected = 0 if seeds == 1 else 1
    assert calls == {"fill_between": expected, "errorbar": expected}


def test_mean_band_is_the_t_interval_over_seeds():
    x = np.arange(5, dtype=float)
    grid, mean, half = figures.mean_band([(x, x + d) for d in (0.0, 0.1, 0.5)])
    np.testing.assert_array_equal(grid, x)  # the curves' own points: markers sit on data
    est = stats.mean_ci([0.0, 0.1, 0.5])
    np.testing.assert_allclose(mean, x + est.mean)
    np.testing.assert_allclose(half, est.half_width)
    assert figures.mean_band([(x, x)])[2] is None


def test_plain_tick_labels_and_legend_words():
    assert [figures.tick_label(v) for v in (1000, 100, 0.5, 25000)] == ["1,000", "100", "0.5", "25,000"]
    assert [figures.spacing_decimals(s) for s in (10000, 0.2, 0.25, 0.05)] == [0, 1, 2, 2]
    assert figures.line_label(512, "sqrt", 3) == "batch 512, LR scaling: sqrt, n=3 seeds"
    assert figures.line_label(64, "none", 1) == "batch 64, LR scaling: none, n=1 seed"


def test_html_inline_code_and_bold_after_escaping():
    assert inline("run `smoke` <b> & **big** `a<b`") == (
        "run <code>smoke</code> &lt;b&gt; &amp; <strong>big</strong> <code>a&lt;b</code>")


def test_a_run_from_before_a_defaulted_key_existed_is_the_same_setting():
    from types import SimpleNamespace

    from jobs.report.tables import param_of, varying_params

    old = SimpleNamespace(params={"train.batch_size": "64"})  # logged before train.lr_schedule existed
    new = SimpleNamespace(params={"train.batch_size": "64", "train.lr_schedule": "constant", "run.arm": "null"})
    cosine = SimpleNamespace(params={"train.batch_size": "64", "train.lr_schedule": "cosine"})
    assert varying_params([old, new]) == []
    assert varying_params([old, cosine]) == ["train.lr_schedule"]
    assert param_of(old, "train.lr_schedule") == "constant" and param_of(old, "train.lr") is None
