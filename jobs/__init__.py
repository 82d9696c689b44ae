"""Entry points and glue around the ``rgflow`` science library.

Configuration (``jobs.config``, ``jobs.sweep_spec``), one trial (``jobs.train``), sweeps on Ray Tune,
Slurm or local subprocesses (``jobs.sweep``, ``jobs.backends``), MLflow tracking
(``jobs.tracking``), evaluation and reports. See ``docs/ARCHITECTURE.md``.
"""
