"""The report's header: what was trained and how it was evaluated, from the trials' params and tags.

Every item is one string per trial (dataset, split sizes in images, model preset and parameter
count, epochs, batch size, learning rate before and after the batch-size rule, weight decay,
warm-up steps, LR schedule, seeds, the git commit of the code that trained it, and the evaluation protocol
of the ``rgflow.eval.*`` tags that ``jobs.evaluate`` writes). An item with one value over the
whole sweep is a line; an item whose value differs between settings is a column of a small table
with one row per setting. :func:`made_by` says how the report itself was made.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import pandas as pd

from jobs.report.query import SweepRuns
from jobs.report.tables import SETTING_KEYS, parse_param, setting_label
from jobs.tracking.env import environment_tags
from jobs.tracking.tags import EVAL_TAG_PREFIX as TAG_PREFIX
from jobs.tracking.tags import GIT_COMMIT_TAG, GIT_DIRTY_TAG, SWEEP_OVERRIDES_TAG
from rgflow.config import ModelConfig, PriorConfig

ALL = "all"
IN_SETTING_LABEL = {"batch size (images)"}  # items the per-setting table's setting label already names
SPLITS = (("train", "train_size"), ("validation", "valid_size"), ("test", "test_size"))


@dataclass
class Header:
    """``lines``: ``"label: value"`` of the items shared by every trial (Markdown with code spans);
    ``groups``: one row per setting (column ``setting``) and one column per item that differs
    between settings (empty when none does)."""

    lines: list[str]
    groups: pd.DataFrame


@functools.lru_cache(maxsize=64)
def parameter_count(model: ModelConfig, prior: PriorConfig) -> int:
    """Trainable parameters of ``RGFlowModel(model, prior)``, built on the meta device (no weights
    are allocated); cached per configuration."""
    import torch

    from rgflow.model import RGFlowModel

    with torch.device("meta"):
        return sum(p.numel() for p in RGFlowModel(model, prior).parameters())


def section_config(params: dict[str, str], cls, section: str):
    """The ``cls`` dataclass of one config section from dotted MLflow params (absent fields at their
    defaults; ``None`` when the params are not a valid config)."""
    values = {f.name: parse_param(params[f"{section}.{f.name}"]) for f in fields(cls)
              if f"{section}.{f.name}" in params}
    try:
        return cls(**values)
    except (ValueError, TypeError):
        return None


def model_words(params: dict[str, str]) -> str:
    """``"preset `tiny`, 71,680 parameters"``."""
    model, prior = section_config(params, ModelConfig, "model"), section_config(params, PriorConfig, "prior")
    if model is None or prior is None:
        return f"preset `{params.get('model.preset', '?')}`, parameter count unknown (invalid model params)"
    return f"preset `{model.preset}`, {parameter_count(model, prior):,} parameters"


def size_words(value: str | None) -> str:
    size = parse_param(value)
    return ALL if size is None else f"{size:,}"


def number(value: str | None) -> str:
    parsed = parse_param(value)
    if parsed is None:
        return "?"
    return f"{parsed:g}" if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else str(parsed)


def schedule_words(params: dict[str, str]) -> str:
    """``"`cosine` decay to 0.1 × peak LR at the last step"`` or ``"`constant`"`` (also for runs
    from before ``train.lr_schedule`` existed)."""
    kind = params.get("train.lr_schedule", "constant")
    if kind == "constant":
        return "`constant`"
    return f"`{kind}` decay to {number(params.get('train.min_lr_ratio'))} × peak LR at the last step"


def eval_items(tags: dict[str, str]) -> dict[str, str]:
    """The evaluation protocol of one trial (its ``rgflow.eval.*`` tags)."""
    ev = {k[len(TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
    if "checkpoint" not in ev:
        return {"evaluation": "not evaluated (no `rgflow.eval.*` tags: `jobs.evaluate` not run)"}
    fid_images = int(parse_param(ev.get("fid_images")) or 0)
    temps = ev.get("temperatures", "").replace(",", ", ")
    noise = f" (noise seed {ev['noise_seed']})" if "noise_seed" in ev else ""
    quantised = ", quantised to 8 bits" if ev.get("fid_samples_quantisation") == "8-bit" else ""
    reference = ev.get("fid_reference", f"first {fid_images:,} test images")  # older protocols: not tagged
    fields = (f"{ev['receptive_field_samples']} prior draws at T = 1, derivative of the generator into "
              f"`{ev.get('receptive_field_space', 'image')}` space" if "receptive_field_samples" in ev else "")
    return {
        "evaluated checkpoint": {"best": "best (lowest validation BPD)", "last": "last"}.get(ev["checkpoint"],
                                                                                            ev["checkpoint"]),
        "test BPD protocol": f"{size_words(ev.get('test_images'))} test images × {ev.get('test_draws', '?')} "
                             f"dequantisation draws{noise}",
        "FID protocol": (f"{fid_images:,} samples per temperature (T = {temps}){quantised} vs real images: {reference}, "
                         f"features `{ev.get('fid_network', '?')}`") if fid_images else "not computed",
        "receptive fields": fields,
    }


def git_words(tags: dict[str, str]) -> str:
    """``"`abc1234`"``, ``"`abc1234` (dirty: uncommitted changes)"`` or ``"unknown (not a git checkout)"``
    from ``rgflow.git_commit`` / ``rgflow.git_dirty`` tags; ``""`` without them."""
    commit = tags.get(GIT_COMMIT_TAG)
    if commit is None:
        return ""
    if commit == "unknown":
        return "unknown (not a git checkout)"
    return f"`{commit[:7]}`" + (" (dirty: uncommitted changes)" if tags.get(GIT_DIRTY_TAG) == "true" else "")


def made_by(command: str | None, parent_tags: dict[str, str]) -> list[str]:
    """How the report was made: the command (if given) and this checkout's git commit, and the
    overrides the sweep was launched with (its parent run's ``rgflow.sweep_overrides``)."""
    lines = [f"made by `{command}`" if command else "made by `jobs.report.build_report`"]
    lines[0] += f", code at git {git_words(environment_tags())}"
    if SWEEP_OVERRIDES_TAG in parent_tags:
        lines.append(f"sweep launched with overrides: `{parent_tags[SWEEP_OVERRIDES_TAG]}`"
                     if parent_tags[SWEEP_OVERRIDES_TAG] else "sweep launched with no overrides")
    return lines


def trial_items(run, table_row) -> dict[str, str]:
    """Every header item of one trial, as text."""
    p = run.params
    steps = parse_param(p.get("train.steps"))
    items = {
        "dataset": f"`{p.get('data.name', '?')}`",
        "split sizes (images)": ", ".join(f"{name} {size_words(p.get(f'data.{key}'))}" for name, key in SPLITS),
        "model": model_words(p),
        "epochs": number(p.get("train.epochs")) + (f" (at most {steps:,} optimizer steps)" if steps else ""),
        "batch size (images)": str(table_row["batch_size"]),
        "learning rate (AdamW)": f"{number(p.get('train.lr'))}, scaling `{table_row['lr_scaling']}` from reference "
                                 f"batch {number(p.get('train.reference_batch'))}",
        "effective LR": f"{table_row['effective_lr']:.3g}" if math.isfinite(table_row["effective_lr"]) else "unknown",
        "weight decay": number(p.get("train.weight_decay")),
        "warm-up (optimizer steps)": number(p.get("train.warmup_steps")),
        "LR schedule": schedule_words(p),
        "seeds": str(table_row["seed"]),
        "trained by code at git": git_words(run.tags),
    }
    items.update(eval_items(run.tags))
    return items


def _joined(values) -> str:
    """The distinct non-empty values of one item within a setting, shortest first (seeds: 0, 1, 10)."""
    return ", ".join(sorted({v for v in values if v}, key=lambda v: (len(v), v)))


def header(data: SweepRuns, table: pd.DataFrame) -> Header:
    """The header of a sweep (``table``: :func:`jobs.report.tables.trial_table` of ``data``)."""
    items = pd.DataFrame([trial_items(run, table.loc[run.run_id]) for run in data.runs],
                         index=[run.run_id for run in data.runs]).fillna("")
    items = items.join(table[SETTING_KEYS])
    per_setting = items.groupby(SETTING_KEYS, sort=True).agg(_joined)
    lines, differing = [], []
    for column in per_setting.columns:
        values = set(per_setting[column])
        if values == {""}:
            continue
        if len(values) == 1:
            lines.append(f"{column}: {values.pop()}" + (" (every setting)" if column == "seeds" else ""))
        elif column in IN_SETTING_LABEL:
            lines.append(f"{column}: {_joined(per_setting[column])} (per setting)")
        else:
            differing.append(column)
    groups = pd.DataFrame()
    if differing:
        groups = per_setting[differing].reset_index()
        groups.insert(0, "setting", [setting_label(*keys) for keys in groups[SETTING_KEYS].itertuples(index=False)])
        groups = groups.drop(columns=SETTING_KEYS)
    return Header(lines, groups)


__all__ = ["Header", "git_words", "header", "made_by", "parameter_count", "section_config"]
