"""``python -m jobs.report SWEEP.yaml`` (or ``--experiment NAME``): tables, figures and a verdict.

Modules: ``query`` (MLflow reads, bounded query count), ``tables`` (trials.csv, curves),
``findings`` (what a verdict is made of), ``stats`` (tests over seeds), ``verdict`` (the
questions, pure functions), ``scaling`` (steps to target, B_crit, regimes), ``study`` (the LR
search of a study), ``power`` (seeds needed, used by the dry-run), ``figures`` (matplotlib
PNGs), ``render`` (Markdown and self-contained HTML), ``build`` (:func:`build_report`, the whole
pipeline). The package imports nothing itself, so the dry-run reads ``power`` without MLflow.
"""
