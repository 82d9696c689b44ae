"""What a verdict is made of: :class:`Finding` (one sentence and its numbers), :class:`Arm` (one
side of a comparison, values per seed) and the helpers that read validation curves for them.

Curves are long frames with ``run_id``, ``step``, ``epoch``, ``val_bpd`` (bits/dim) columns; a
trial table is indexed by run id with ``seed``, ``state`` and ``failure_reason`` (see
:mod:`jobs.report.verdict`). No MLflow here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jobs.report import stats as S

EMPTY = pd.DataFrame({"run_id": [], "step": [], "epoch": [], "val_bpd": []})
DIVERGED_PREFIX = "non-finite"


@dataclass
class Arm:
    """One side of a comparison: ``values`` per seed of the finished trials, ``lost`` the trials
    of the same setting that did not finish (one phrase each, e.g. "seed 2 diverged at lr 2.8e-03"),
    ``diverged`` how many of those diverged (non-finite values: an outcome, the arm is unstable)."""

    label: str
    values: dict[int, float]
    lost: list[str] = field(default_factory=list)
    diverged: int = 0

    @property
    def total(self) -> int:
        return len(self.values) + len(self.lost)

    @property
    def ci(self) -> S.MeanCI:
        return S.mean_ci(list(self.values.values()))

    def describe(self) -> str:
        ci = self.ci
        n = f"{ci.n} seed{'s' if ci.n != 1 else ''}"
        value = f"{ci.mean:.3f} [{ci.lo:.3f}, {ci.hi:.3f}]" if ci.known else (f"{ci.mean:.3f}" if ci.n else "no value")
        lost = f"; {self.lost_phrase()}" if self.lost else ""
        unstable = f"; unstable: {self.diverged} of {self.total} seeds diverged" if self.diverged else ""
        return f"{self.label}: {value} ({n}{lost}{unstable})"

    def lost_phrase(self) -> str:
        return f"{len(self.lost)} of {self.total} seeds did not finish: " + ", ".join(self.lost)

    def to_json(self) -> dict:
        ci = self.ci
        return {"label": self.label, "n": ci.n, "seeds": sorted(self.values), "mean": ci.mean,
                "ci95": [ci.lo, ci.hi], "values": [self.values[s] for s in sorted(self.values)], "lost": self.lost,
                "diverged": self.diverged, "trials": self.total}


@dataclass
class Finding:
    """One verdict sentence and the numbers behind it.

    ``topic`` groups sentences; ``context`` names the setting; ``question`` is what was asked;
    ``conclusion`` the answer's keyword; ``family`` the question whose tests are adjusted together
    (docs/STATISTICS.md, "Families"). A comparison also has ``arms`` (a, b), ``test`` (the
    :class:`~jobs.report.stats.TwoArm`), and after ``adjust`` its family-adjusted p-values and the
    family's size (tested comparisons, for the simultaneous interval). ``numbers``: further values
    (axis, horizon, outcome, …). ``render`` builds ``text`` once the conclusion is known.
    """

    topic: str
    context: str
    question: str
    text: str = ""
    conclusion: str | None = None
    numbers: dict = field(default_factory=dict)
    family: str = ""
    family_size: int = 0
    arms: tuple[Arm, Arm] | None = None
    test: S.TwoArm | None = None
    margin: float | None = None
    p_holm: float = math.nan
    p_tost: float = math.nan
    p_tost_holm: float = math.nan
    render: Callable[["Finding"], str] | None = field(default=None, repr=False)

    @property
    def is_comparison(self) -> bool:
        return self.test is not None

    def to_json(self) -> dict:
        """JSON-ready dict (NaN and ±inf become ``None``); see docs/ARCHITECTURE.md."""
        out = {"topic": self.topic, "family": self.family, "family_size": self.family_size, "context": self.context,
               "question": self.question, "conclusion": self.conclusion, "text": self.text}
        if self.is_comparison:
            t = self.test
            simultaneous = S.simultaneous_interval(t, self.family_size) if self.family_size else (math.nan, math.nan)
            out.update({"arms": [a.to_json() for a in self.arms], "n": [t.n_a, t.n_b], "estimate": t.estimate,
                        "se": t.se, "ci95": list(t.ci95), "ci_simultaneous": list(simultaneous),
                        "test": t.test, "df": t.df, "p": t.p,
                        "p_holm": self.p_holm, "margin": self.margin, "p_tost": self.p_tost,
                        "p_tost_holm": self.p_tost_holm, "units": "bits/dim"})
            if self.numbers.get("deferred"):  # not tested: no test statistic to read a direction into
                out.update({k: None for k in ("se", "ci95", "ci_simultaneous", "df", "p", "p_tost")})
        out.update(self.numbers)
        return clean_json(out)


def clean_json(value):
    """``value`` with every non-finite float replaced by ``None`` and numpy scalars made plain."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def label(context: str, **parts) -> str:
    bits = [f"{k}={v}" for k, v in parts.items() if v is not None]
    if context:
        bits.insert(0, context)
    return ", ".join(bits)


def fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")



def xy(curve: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite ``(x, y)`` pairs of a curve as float arrays sorted by ``x``."""
    if x not in curve or y not in curve:
        return np.array([]), np.array([])
    xs, ys = curve[x].to_numpy(float), curve[y].to_numpy(float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    order = np.argsort(xs[ok], kind="stable")
    return xs[ok][order], ys[ok][order]


def value_at(curve: pd.DataFrame, axis: str, x: float) -> float:
    """``val_bpd`` linearly interpolated at ``axis = x``; NaN outside the curve's range."""
    xs, ys = xy(curve, axis, "val_bpd")
    if xs.size == 0 or x < xs[0] - 1e-9 or x > xs[-1] + 1e-9:
        return math.nan
    return float(np.interp(x, xs, ys))


def by_run(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{run_id: rows}``, split once (filtering per trial would be quadratic in the sweep size)."""
    return {rid: rows for rid, rows in frame.groupby("run_id", sort=False)}


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials if "state" not in trials else trials[trials["state"] == "finished"]


def lost_trials(group: pd.DataFrame) -> list[str]:
    """One phrase per trial of ``group`` that did not finish, lowest seed first."""
    if "state" not in group:
        return []
    out = []
    for _, row in group[group["state"] != "finished"].sort_values("seed").iterrows():
        reason = str(row.get("failure_reason") or "")
        lr = row.get("effective_lr")
        at_lr = f" at lr {float(lr):.2e}" if isinstance(lr, (int, float)) and math.isfinite(lr) else ""
        if reason.startswith(DIVERGED_PREFIX):
            out.append(f"seed {row['seed']} diverged{at_lr} ({reason})")
        elif row["state"] == "failed":
            out.append(f"seed {row['seed']} failed{at_lr}" + (f" ({reason})" if reason else ""))
        else:
            out.append(f"seed {row['seed']} {row['state'] or 'unknown'}")
    return out


def common_horizon(curves: dict[str, pd.DataFrame], ids, axis: str) -> float:
    """The largest ``axis`` value every curve of ``ids`` reached (NaN if one is missing)."""
    ends = [curves[i][axis].max() if i in curves else math.nan for i in ids]
    return float(min(ends)) if ends and all(np.isfinite(ends)) else math.nan


def diverged_count(group: pd.DataFrame) -> int:
    """How many trials of ``group`` diverged (failure reason starting with :data:`DIVERGED_PREFIX`)."""
    if "failure_reason" not in group:
        return 0
    return int(group["failure_reason"].fillna("").astype(str).str.startswith(DIVERGED_PREFIX).sum())


def arm_of(group: pd.DataFrame, name: str, value: Callable[[str], float]) -> Arm:
    """The arm of the trials in ``group``: ``value(run_id)`` per finished seed, the others lost."""
    return Arm(name, {int(r.seed): value(rid) for rid, r in finished(group).iterrows()}, lost_trials(group),
               diverged_count(group))


def arm_at(curves: dict[str, pd.DataFrame], group: pd.DataFrame, axis: str, x: float, name: str) -> Arm:
    """:func:`arm_of` with each seed's validation BPD at ``axis = x``."""
    return arm_of(group, name, lambda rid: value_at(curves.get(rid, EMPTY), axis, x))



def note(topic: str, context: str, question: str, text: str, **numbers) -> Finding:
    """A finding that answers nothing (a comparison the sweep cannot make): ``conclusion`` not_tested."""
    return Finding(topic, context, question, f"[{context}] {text}", "not_tested", numbers)



def count(value: float) -> str:
    """A quantity in images with 3 significant digits and no exponent: ``1,230``, ``45.6``, ``0.0213``."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{float(f'{value:.3g}'):g}"


def ci_words(ci: S.MeanCI) -> str:
    """``"1,230 [980, 1,480] (3 seeds)"``; ``"1,230 (1 seed)"`` without an interval."""
    if ci.known:
        return f"{count(ci.mean)} [{count(ci.lo)}, {count(ci.hi)}] ({ci.n} seeds)"
    return f"{count(ci.mean)} (1 seed)"




__all__ = ["Arm", "Finding", "EMPTY", "DIVERGED_PREFIX", "clean_json", "label", "fmt_p", "xy", "value_at", "by_run",
           "finished", "lost_trials", "common_horizon", "arm_at", "arm_of", "diverged_count", "note", "count", "ci_words"]
