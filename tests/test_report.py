"""jobs.report on a real sqlite MLflow store holding fabricated trial runs with a known truth."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from PIL import Image

from jobs.config import flatten
from jobs.report.build import build_report
from jobs.report.__main__ import main as report_main
from jobs.report import stats
from jobs.report.query import HISTORY_KEYS, load_sweep_runs
from jobs.report.scaling import TARGET_QUANTILES
from jobs.report.tables import curves, trial_table
from jobs.sweep_spec import load_sweep
from rgflow.model import RGFlowModel

REPO = Path(__file__).resolve().parents[1]

N_TRAIN = 6400
EPOCHS = 10
GAP = 0.1          # batch 512 is worse than batch 64 by this much at every epoch
SHIFTS = {0: -0.01, 1: 0.01}  # per-seed offsets: 2-seed s.e. of a mean = 0.01, of a gap = 0.0141
NOISE_SCALE = 100.0
GRAD_SQ = 0.02
# as jobs.evaluate.make_protocol writes it (tags rgflow.eval.<key>)
EVAL_PROTOCOL = {"checkpoint": "best", "checkpoint_step": 1000, "test_images": 200, "test_draws": 2, "noise_seed": 0,
                 "temperatures": "0.5,1", "fid_images": 200, "fid_network": "inception-v3-fid",
                 "fid_reference": "first 200 images of the msds1 test split", "fid_samples_quantisation": "8-bit",
                 "receptive_field_samples": 2, "receptive_field_space": "image"}
FIELD_LEVELS = 4

SWEEP = """
name: synth
base_config: {config}
base:
  tracking: {{uri: "{uri}"}}
axes:
  grid:
    train.batch_size: [64, 512]
    prior.kind: [laplace, gaussian]
  seeds: [0, 1]
resources: {{cpus: 2, gpus: 0.5}}
"""


def bpd(epoch: float, batch: int, seed: int) -> float:
    return 3.0 + 2.0 * math.exp(-epoch / 2.0) + (GAP if batch == 512 else 0.0) + SHIFTS[seed]


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (34, 34, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def log_trial(client: MlflowClient, exp: str, parent: str, trial, tmp: Path, *, test_bpd: float | None) -> str:
    cfg = trial.config
    batch, seed = cfg.train.batch_size, cfg.run.seed
    tags = {"rgflow.role": "trial", "rgflow.trial_id": trial.trial_id, "rgflow.sweep": "synth",
            "rgflow.trial_index": str(trial.index), "rgflow.state": "finished", "mlflow.parentRunId": parent,
            "rgflow.run_dir": str(tmp / "runs" / trial.trial_id)}
    run = client.create_run(exp, tags=tags, run_name=f"trial-{trial.index}").info.run_id
    params = [Param(k, v) for k, v in flatten(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run, params=params[i:i + 100])
    now = int(time.time() * 1000)
    steps_per_epoch = N_TRAIN // batch
    metrics = []
    for epoch in range(1, EPOCHS + 1):
        step = epoch * steps_per_epoch
        metrics += [Metric("val_bpd", bpd(epoch, batch, seed), now, step), Metric("val_epoch", epoch, now, step)]
        for s in sorted(range(step, step - steps_per_epoch, -5)):
            metrics += [Metric("noise_scale", NOISE_SCALE, now, s), Metric("samples_seen", s * batch, now, s),
                        Metric("wall_s", s * batch / 100.0, now, s), Metric("epoch", s / steps_per_epoch, now, s),
                        Metric("noise_grad_sq", GRAD_SQ, now, s), Metric("noise_trace", NOISE_SCALE * GRAD_SQ, now, s),
                        Metric("lr", cfg.train.effective_lr, now, s)]
    if test_bpd is not None:
        metrics += [Metric("test_bpd", test_bpd, now, 0), Metric("test_bpd_se", 0.001, now, 0),
                    Metric("test_bpd_se_draws", 0.0001, now, 0),
                    Metric("fid_T0.5", 30.0 + batch / 64, now, 0), Metric("fid_T1", 50.0 + batch / 64, now, 0)]
        client.log_batch(run, tags=[RunTag(f"rgflow.eval.{k}", str(v)) for k, v in EVAL_PROTOCOL.items()])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run, metrics=metrics[i:i + 1000])
    client.set_terminated(run, "FINISHED")
    return run


def receptive_maps(seed: int) -> dict[str, np.ndarray]:
    """Blobs that widen with the level, as receptive fields do."""
    yy, xx = np.mgrid[0:32, 0:32] - 15.5
    return {f"level{h}": np.exp(-(xx**2 + yy**2) / (2 * (1.5 * 2**h) ** 2)) * (1 + seed) for h in range(FIELD_LEVELS)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    sweep_file = tmp / "synth.yaml"
    sweep_file.write_text(SWEEP.format(config=Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", uri=uri))
    sweep = load_sweep(sweep_file)
    client = MlflowClient(uri)
    exp = client.create_experiment("synth", artifact_location=str(tmp / "mlartifacts"))  # not ./mlruns
    parent = client.create_run(exp, tags={"rgflow.role": "sweep", "rgflow.sweep": "synth",
                                          "rgflow.sweep_id": sweep.sweep_id}).info.run_id
    runs = {}
    for trial in sweep.trials:
        runs[trial.index] = log_trial(client, exp, parent, trial, tmp,
                                      test_bpd=bpd(EPOCHS, trial.config.train.batch_size, trial.config.run.seed))
    # eval sample grids and receptive fields for one trial, as jobs.evaluate writes them
    for t in ("0.5", "1"):
        art = tmp / f"samples_T{t}.png"
        art.write_bytes(png_bytes(int(float(t) * 10)))
        client.log_artifact(runs[0], str(art), "eval")
    np.savez(tmp / "receptive_fields.npz", **receptive_maps(0))
    client.log_artifact(runs[0], str(tmp / "receptive_fields.npz"), "eval")
    # another setting's receptive fields only in its run folder (no artifact)
    other = next(t for t in sweep.trials if t.config.train.batch_size == 512 and t.config.prior.kind == "gaussian"
                 and t.config.run.seed == 0)
    (tmp / "runs" / other.trial_id / "eval").mkdir(parents=True)
    np.savez(tmp / "runs" / other.trial_id / "eval" / "receptive_fields.npz", **receptive_maps(1))
    # a trial of another sweep version in the same experiment: not part of this sweep file
    stray = client.create_run(exp, tags={"rgflow.role": "trial", "rgflow.trial_id": "ffffffffffff"}).info.run_id
    client.set_terminated(stray, "FINISHED")
    return {"tmp": tmp, "uri": uri, "sweep": sweep, "sweep_file": sweep_file, "runs": runs, "parent": parent,
            "client": client}


class Counter:
    def __init__(self, monkeypatch, names):
        self.calls = {n: 0 for n in names}
        for name in names:
            original = getattr(MlflowClient, name)

            def counted(*args, __name=name, __original=original, **kwargs):
                self.calls[__name] += 1
                return __original(*args, **kwargs)

            monkeypatch.setattr(MlflowClient, name, counted)


@pytest.fixture(scope="module")
def report(synth, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    counter = Counter(mp, ["search_runs", "get_metric_history", "get_run"])
    out = tmp_path_factory.mktemp("out") / "synth-report"
    try:
        folder = build_report(str(synth["sweep_file"]), out_dir=out)
    finally:
        mp.undo()
    return folder, counter.calls


def test_query_count_is_bounded(report):
    _, calls = report
    assert calls["search_runs"] == 2  # trial summaries (one page) + the parent run
    assert calls["get_metric_history"] == 8 * len(HISTORY_KEYS)  # only the plotted metrics
    # no per-trial get_run: only artifact access for the 4 representative trials (a listing each, 2 sample grids
    # and the receptive fields downloaded for one) and the upload
    assert calls["get_run"] <= 4 + 3 + 1


def test_summaries_need_no_per_run_query(synth, monkeypatch):
    counter = Counter(monkeypatch, ["search_runs", "get_metric_history", "get_run", "get_experiment_by_name"])
    data = load_sweep_runs(synth["uri"], "synth", with_histories=False)
    assert len(data.runs) == 9 and data.parent_run_id == synth["parent"]
    # the experiment is looked up with sqlite3 (jobs.tracking.fast_read), not through the client
    assert counter.calls == {"search_runs": 2, "get_metric_history": 0, "get_run": 0, "get_experiment_by_name": 0}


def test_trials_csv_columns_and_values(report, synth):
    folder, _ = report
    rows = list(csv.DictReader(open(folder / "trials.csv")))
    assert len(rows) == 8 and "ffffffffffff" not in {r["trial_id"] for r in rows}
    cols = list(rows[0])
    for col in ("run_id", "trial_id", "state", "failure_reason", "train.batch_size", "prior.kind", "run.seed",
                "effective_lr", "final_lr", "final_val_bpd", "best_val_bpd", "test_bpd", "test_bpd_se",
                "test_bpd_se_draws", "fid_T0.5", "fid_T1", "steps", "epochs", "wall_s", "gpus", "gpu_hours", "cpus",
                "cpu_hours"):
        assert col in cols, col
    assert "train.lr" not in cols  # not varying
    for row in rows:
        batch, seed = int(row["train.batch_size"]), int(row["run.seed"])
        assert float(row["final_val_bpd"]) == pytest.approx(bpd(EPOCHS, batch, seed))
        assert float(row["best_val_bpd"]) == pytest.approx(bpd(EPOCHS, batch, seed))
        assert int(row["steps"]) == EPOCHS * (N_TRAIN // batch)
        assert float(row["epochs"]) == pytest.approx(EPOCHS)
        wall = EPOCHS * (N_TRAIN // batch) * batch / 100.0
        assert float(row["gpu_hours"]) == pytest.approx(wall * 0.5 / 3600)  # resources.gpus from the sweep file
        assert float(row["fid_T0.5"]) == pytest.approx(30 + batch / 64)
        assert float(row["test_bpd_se_draws"]) == pytest.approx(1e-4)
        assert float(row["effective_lr"]) == pytest.approx(1e-3) and float(row["final_lr"]) == pytest.approx(1e-3)
        assert row["state"] == "finished" and row["failure_reason"] == ""


def test_figures_and_self_contained_html(report):
    folder, _ = report
    for name in ("val_bpd_vs_epoch", "val_bpd_vs_step", "val_bpd_vs_samples_seen", "val_bpd_vs_wall_s",
                 "fid_vs_temperature", "noise_scale", "samples", "receptive_fields", "steps_to_target",
                 "steps_vs_examples"):
        png = folder / f"{name}.png"
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG", name
    page = (folder / "report.html").read_text()
    srcs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert len(srcs) == 10 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page
    md = (folder / "report.md").read_text()
    assert "![" in md and "val_bpd_vs_epoch.png" in md
    assert not list(folder.parent.glob(".synth-report.tmp-*"))


def test_header_names_what_was_trained(report, synth):
    folder, _ = report
    config = synth["sweep"].trials[0].config
    count = sum(p.numel() for p in RGFlowModel(config.model, config.prior).parameters())
    md = (folder / "report.md").read_text()
    trained = md[md.index("## What was trained"):md.index("## Verdict")]
    for line in ("* dataset: `msds1`", "* split sizes (images): train 2,000, validation 200, test 200",
                 f"* model: preset `tiny`, {count:,} parameters", "* epochs: 2", "* effective LR: 0.001",
                 "* weight decay: 5e-05", "* warm-up (optimizer steps): 0", "* seeds: 0, 1 (every setting)",
                 "* evaluated checkpoint: best (lowest validation BPD)",
                 "* test BPD protocol: 200 test images × 2 dequantisation draws (noise seed 0)",
                 "* FID protocol: 200 samples per temperature (T = 0.5, 1), quantised to 8 bits vs real images: first "
                 "200 images of the msds1 test split, features `inception-v3-fid`",
                 "* receptive fields: 2 prior draws at T = 1, derivative of the generator into `image` space"):
        assert line in trained.splitlines(), line
    page = (folder / "report.html").read_text()
    assert page.index("What was trained") < page.index("<h2>Verdict</h2>")
    assert f"<li>model: preset <code>tiny</code>, {count:,} parameters</li>" in page


def test_html_renders_code_spans(report):
    folder, _ = report
    page = (folder / "report.html").read_text()
    assert "<li>experiment <code>synth</code> at <code>sqlite:///" in page
    assert "<li>dataset: <code>msds1</code></li>" in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "`" not in text and "**" not in text


def test_settings_csv_is_the_mean_and_t_interval_over_seeds(report):
    folder, _ = report
    trials = pd.read_csv(folder / "trials.csv")
    settings = pd.read_csv(folder / "settings.csv")
    assert len(settings) == 4 and set(settings["trials"]) == {2} and settings["failures"].isna().all()
    for _, row in settings.iterrows():
        group = trials[(trials["train.batch_size"] == row["batch_size"]) & (trials["prior.kind"] == row["prior"])]
        for metric in ("final_val_bpd", "best_val_bpd", "test_bpd", "fid_T0.5", "fid_T1"):
            est = stats.mean_ci(group[metric])
            assert row[f"{metric}_n"] == 2
            assert [row[f"{metric}_{k}"] for k in ("mean", "lo", "hi")] == pytest.approx([est.mean, est.lo, est.hi])
        assert row["gpu_hours"] == pytest.approx(group["gpu_hours"].sum())
    # 2-seed interval of the mean of bpd(10, 64, ·): mean 3.0135, half-width t(0.975, 1) × 0.01 = 0.1271
    md = (folder / "report.md").read_text()
    assert "| 64 | none | laplace | 2/2: 0 1 | 3.0135 ± 0.1271 |" in md


def test_reproduction_table_marks_our_tiny_runs_as_not_like_for_like(report):
    folder, _ = report
    rows = pd.read_csv(folder / "reproduction.csv")
    assert len(rows) == 8 and set(rows["dataset"]) == {"msds1"}  # 4 settings × (BPD, FID at T=1)
    assert not rows["like_for_like"].any() and set(rows["conclusion"]) == {"not like for like"}
    laplace = rows[(rows["prior"] == "laplace") & (rows["batch_size"] == 512) & (rows["metric"] == "BPD")].iloc[0]
    assert laplace["unlike"] == f"model tiny (theirs msds); {EPOCHS} epochs (theirs 60)" and laplace["ours"] == "test BPD"
    assert laplace["diff"] == pytest.approx(bpd(EPOCHS, 512, 0) + 0.01 - 1.8562)
    md = (folder / "report.md").read_text()
    assert "## Against the 2025 reproduction" in md and "FID at T=1" in md


def test_eval_panels_take_mlflow_artifacts_and_run_folders(synth, tmp_path):
    from jobs.report.build import eval_panels

    data = load_sweep_runs(synth["uri"], "synth", trial_ids=[t.trial_id for t in synth["sweep"].trials])
    table = trial_table(data)
    samples, fields = ([p for p in panels if p[1]] for panels in eval_panels(data, table, tmp_path))
    assert len(samples) == 1 and sorted(samples[0][1]) == [0.5, 1.0]  # trial 0's eval/ artifacts
    assert len(fields) == 2  # trial 0's artifact and the other setting's run-folder file
    by_scale = sorted(float(maps[0].max()) for _, maps in fields)
    assert by_scale[1] == pytest.approx(2 * by_scale[0])  # receptive_maps(seed) scales by 1 + seed: 1 and 2
    assert all(sorted(maps) == list(range(FIELD_LEVELS)) for _, maps in fields)


def test_noise_frame_carries_the_raw_estimates(synth):
    data = load_sweep_runs(synth["uri"], "synth", trial_ids=[t.trial_id for t in synth["sweep"].trials])
    _, noise = curves(data, trial_table(data))
    assert noise["noise_grad_sq"].to_numpy() == pytest.approx(GRAD_SQ)
    assert noise["noise_trace"].to_numpy() == pytest.approx(NOISE_SCALE * GRAD_SQ)
    assert noise["noise_scale_adam"].isna().all()


def test_verdict_matches_synthetic_truth(report):
    folder, _ = report
    findings = json.loads((folder / "verdict.json").read_text())  # written with allow_nan=False: strict JSON
    gaps = [f for f in findings if f["topic"] == "batch gap" and f["axis"] == "epoch"]
    assert len(gaps) == 2  # one per prior
    for f in gaps:
        # both arms ran seeds 0 and 1 with the same per-seed shift: the paired differences are exactly GAP
        assert f["test"] == "paired t" and f["n"] == [2, 2] and f["df"] == 1
        assert f["estimate"] == pytest.approx(GAP, abs=1e-9) and f["conclusion"] == "different"
        assert f["ci95"] == pytest.approx([GAP, GAP], abs=1e-9) and f["p_holm"] == 0
        assert [a["label"] for a in f["arms"]] == ["batch 512", "batch 64"]
        assert {"topic", "context", "question", "arms", "n", "estimate", "ci95", "test", "df", "p", "p_holm",
                "conclusion", "text"} <= set(f)
        assert "batch 512 is worse" in f["text"] and "difference +0.100 bits/dim" in f["text"]
    improving = [f for f in findings if f["topic"] == "still improving"]
    assert len(improving) == 4 and all(f["conclusion"] == "improving" for f in improving)  # exp(-epoch/2) at epoch 10
    priors = [f for f in findings if f["topic"] == "priors" and "arms" in f]
    assert len(priors) == 2 and all(f["compared_on"] == "test BPD" for f in priors)
    assert all(f["conclusion"] == "not_tested" and f["p"] is None and "deferred: not converged" in f["text"]
               for f in priors)
    noise = [f for f in findings if f["topic"] == "noise scale"]
    assert len(noise) == 4 and all(f["b_simple"] == pytest.approx(NOISE_SCALE) for f in noise)  # one per group
    crit = [f for f in findings if f["topic"] == "critical batch"]
    assert len(crit) == 2 * len(TARGET_QUANTILES)  # per prior, per target
    assert all(f["exact_fit"] or f["conclusion"] == "not_tested" for f in crit)
    lr = [f for f in findings if f["topic"] == "lr scaling"]
    assert lr and all(f["conclusion"] == "not_tested" and "not tested" in f["text"] for f in lr)
    text = (folder / "report.md").read_text()
    assert gaps[0]["text"] in text and "Critical batch size from the learning curves" in text
    assert (folder / "steps_to_target.png").is_file()


def test_report_logged_to_parent_run(report, synth):
    names = {a.path for a in synth["client"].list_artifacts(synth["parent"], "report")}
    assert {"report/report.html", "report/report.md", "report/trials.csv"} <= names


def test_cli_by_experiment_name_and_bad_input(synth, tmp_path, capsys):
    assert report_main(["--experiment", "synth", "--tracking-uri", synth["uri"], "--out", str(tmp_path / "r"),
                        "--no-log"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r" / "trials.csv")))
    assert len(rows) == 9  # the whole experiment, including the other sweep version's trial
    assert report_main(["--experiment", "nope", "--tracking-uri", synth["uri"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jobs.report: no MLflow experiment 'nope'") and "\n" not in err
    assert report_main([str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "reports").exists()


def test_cli_names_the_store_says_how_the_report_was_made_and_shares_it(synth, tmp_path, capsys):
    """The header names the command (with its overrides) and this checkout's git commit; the
    report folder and its files are readable by others (0755 / 0644 under the usual umask 022),
    while ``write_atomic``'s own files (checkpoints, state) stay 0600."""
    from rgflow.atomic import write_atomic

    out = tmp_path / "r"
    umask = os.umask(0o022)
    try:
        assert report_main([str(synth["sweep_file"]), "--out", str(out), "--no-log"]) == 0
    finally:
        os.umask(umask)
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[0] == f"jobs.report: MLflow store {synth['uri']}"
    md = (out / "report.md").read_text()
    made = next(line for line in md.splitlines() if line.startswith("* made by "))
    assert made.startswith(f"* made by `python -m jobs.report {synth['sweep_file']} --out {out} --no-log`, code at git ")
    assert re.fullmatch(r".*, code at git (`[0-9a-f]{7}`( \(dirty: uncommitted changes\))?|unknown \(not a git "
                        r"checkout\))", made), made
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(write_atomic(tmp_path / "state.json", "{}").stat().st_mode) == 0o600


def test_bad_input_from_an_empty_folder_is_answered_without_mlflow_and_creates_nothing(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(REPO)}
    code = ("import sys; from jobs.report.__main__ import main; code = main(sys.argv[1:]); "
            "print(code, 'mlflow' in sys.modules, file=sys.stderr)")
    for args in (["--experiment", "nosuch"], ["nosuch"], ["missing.yaml"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        error, last = proc.stderr.splitlines()
        assert last == "2 False", proc.stderr
        assert error.startswith("jobs.report: no MLflow store at " if args[0] != "missing.yaml"
                                else "jobs.report: sweep file missing.yaml does not exist"), error
        assert list(tmp_path.iterdir()) == []


def test_wall_clock_axis_picks_its_unit_and_its_labels_do_not_collide(synth, tmp_path, monkeypatch):
    from jobs.report import figures

    assert figures.wall_unit(20.0) == ("seconds", 1.0)
    assert figures.wall_unit(1800.0) == ("minutes", 60.0)
    assert figures.wall_unit(5 * 3600.0) == ("hours", 3600.0)
    data = load_sweep_runs(synth["uri"], "synth", trial_ids=[t.trial_id for t in synth["sweep"].trials])
    table = trial_table(data, {"gpus": 0.5, "cpus": 1.0})
    val, _ = curves(data, table)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi=110: drawn.append(fig) or path)
    for scale in (1.0, 1 / 600.0, 30.0):  # the synthetic sweep's ≈11 minutes, then ≈1 second, then ≈5 hours
        drawn.clear()
        shifted = val.assign(wall_s=val["wall_s"] * scale)
        figures.val_bpd_figure(table, shifted, "wall_s", tmp_path / "wall.png")
        fig = drawn[0]
        fig.canvas.draw()
        unit = figures.wall_unit(float(shifted["wall_s"].max()))[0]
        for ax in [a for a in fig.axes if a.get_xlabel()]:
            assert ax.get_xlabel() == f"wall-clock time ({unit})"
            boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
            assert len(boxes) >= 2 and not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
