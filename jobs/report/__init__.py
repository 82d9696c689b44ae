"""``python -m jobs.report SWEEP.yaml`` (or ``--experiment NAME``): tables, figures and a verdict.

Modules: ``query`` (MLflow reads, bounded query count), ``tables`` (trials.csv, curves),
``verdict`` (the sentences, pure functions), ``figures`` (matplotlib PNGs), ``render`` (Markdown
and self-contained HTML), ``build`` (:func:`build_report`, the whole pipeline).
"""
from jobs.report.build import build_report
from jobs.report.query import ReportInputError

__all__ = ["build_report", "ReportInputError"]
