"""Control arms of a study stage (best_of.controls): fixed arms beside the tuned ones, with their
own trial ids (run.arm: control), and their own setting in the report (tables.context_labels)."""
from __future__ import annotations

import pandas as pd
import pytest

from jobs.config import ConfigError
from jobs.report.tables import context_labels
from jobs.study import Choice, load_study
from tests.fixtures.sweep import REPO

STUDY = """name: st
base_config: {repo}/configs/tiny.yaml
base:
  train: {{lr: 1.0e-3, epochs: 1}}
  run: {{device: cpu, out_dir: {out}}}
backend: local
stages:
  tune:
    axes: {{grid: {{train.batch_size: [64, 512]}}, lr_grid: {{low: 1.0e-4, high: 1.0e-2, per_decade: 1}}}}
  confirm:
    best_of: {{stage: tune, by: [train.batch_size], take: [train.lr, train.warmup_steps], controls: {controls}}}
    axes: {{grid: {{train.batch_size: [64, 512], prior.kind: [laplace, gaussian]}}, seeds: [0, 1]}}
"""
RECIPE = "[{train.batch_size: 512, train.lr: 1.0e-3, train.warmup_steps: 0}]"


def study_of(tmp_path, controls=RECIPE):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(repo=REPO, out=tmp_path / "runs", controls=controls))
    return load_study(path)


def test_a_control_arm_runs_beside_the_chosen_arms_over_the_other_axes(tmp_path):
    study = study_of(tmp_path)
    assert len(study.sweep("confirm").trials) == (2 + 1) * 2 * 2  # its shape: tuned + control, "up to"
    choice = Choice({(64,): {"train.lr": 1e-3, "train.warmup_steps": 0, "best_val_bpd": 3.0, "trial_id": "a"},
                     (512,): {"train.lr": 1e-2, "train.warmup_steps": 0, "best_val_bpd": 3.1, "trial_id": "b"}}, [])
    confirm = study.sweep("confirm", choice)
    arms = [(t.config.train.batch_size, t.config.train.lr, t.config.run.arm) for t in confirm.trials]
    assert sorted(set(arms)) == [(64, 1e-3, None), (512, 1e-3, "control"), (512, 1e-2, None)]
    assert all(arms.count(a) == 4 for a in set(arms))  # × priors × seeds
    # the tuned arm at batch 64 has the recipe's values too: the arm keeps the trials apart
    tuned = {t.trial_id for t in confirm.trials if t.config.run.arm is None}
    assert not tuned & {t.trial_id for t in confirm.trials if t.config.run.arm == "control"}
    # without controls the tuned trials keep the ids they had
    (tmp_path / "plain").mkdir()
    plain = study_of(tmp_path / "plain", "[]").sweep("confirm", choice)
    assert {t.trial_id for t in plain.trials if t.config.train.batch_size == 64} == \
        {t.trial_id for t in confirm.trials if t.config.train.batch_size == 64}


@pytest.mark.parametrize("controls, message", [
    ("[{train.batch_size: 512, train.lr: 1.0e-3}]", "best_of.controls[0]: give train.warmup_steps too"),
    ("[{train.batch_size: 1024, train.lr: 1.0e-3, train.warmup_steps: 0}]", "matches no setting of the stage's by axes"),
    ("[{prior.kind: laplace, train.lr: 1.0e-3, train.warmup_steps: 0}]", "prior.kind must be a take key, a by key"),
    ("[{run.arm: x, train.lr: 1.0e-3, train.warmup_steps: 0}]", "'run.arm' is not a trial config key a control can fix"),
    ("{train.lr: 1.0e-3}", 'best_of.controls={"train.lr": 0.001}: expected a list of mappings'),
])
def test_bad_controls_are_one_line_errors(tmp_path, controls, message):
    with pytest.raises(ConfigError) as err:
        study_of(tmp_path, controls)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_report_keeps_the_control_arm_apart_from_the_tuned_arm():
    table = pd.DataFrame({"data.name": ['"msds1"'] * 4, "batch_size": [64, 512, 512, 512],
                          "train.lr": ["0.001", "0.01", "0.001", "0.001"],
                          "run.arm": ["null", "null", '"control"', '"control"']})
    labels = context_labels(table, ["data.name", "run.arm", "train.lr"], chosen=["train.lr"])
    assert list(labels) == ["", "", "arm=control", "arm=control"]
    two = pd.concat([table, table.assign(**{"data.name": '"msds2"'})], ignore_index=True)
    labels = context_labels(two, ["data.name", "run.arm", "train.lr"], chosen=["train.lr"])
    assert labels[2] == 'data.name="msds1", arm=control' and labels[1] == 'data.name="msds1"'
