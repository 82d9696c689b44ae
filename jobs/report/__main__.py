"""``python -m jobs.report SWEEP.yaml [overrides…] | --experiment NAME [--out DIR] [--tracking-uri URI] [--register]``.

``--register``: after the report, register the best trial of each setting (lowest ``test_bpd``,
else best validation BPD; seeds are a setting's replicates) in the store's Model Registry as
``<sweep>-<setting>`` from its ``runs:/<run_id>/model`` (:func:`jobs.model_io.register_sweep_models`);
one line per registered model. Load one back with ``jobs.model_io.load_model("models:/<name>/<version>")``.

The first line names the store read (the sweep's ``tracking.uri``, ``MLFLOW_TRACKING_URI``, else the
one its launch recorded in its run folder, else ``./mlflow.db``); a missing sweep file, store or
experiment is answered before mlflow is imported, and no store is created. Full reference: docs/CLI.md.

Exit status: 0 report written, 2 bad input (missing sweep file, store or experiment, no trial runs).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from jobs.config import ConfigError
from jobs.report.query import ReportInputError, experiment_id
from jobs.sweep_state import StateError
from jobs.tracking.fast_read import store_line
from jobs.tracking.uri import read_uri, resolve_tracking_uri


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="sweep file (SWEEP.yaml) or sweep/experiment name")
    parser.add_argument("overrides", nargs="*", help="sweep overrides, as for jobs.sweep (key=value)")
    parser.add_argument("--experiment", help="MLflow experiment (= sweep name) to report on")
    parser.add_argument("--out", help="report folder (default reports/<sweep>/)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the sweep's tracking.uri, else "
                                               "$MLFLOW_TRACKING_URI, else the one its launch recorded, else ./mlflow.db)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    parser.add_argument("--register", action="store_true",
                        help="register each setting's best trial's model/ in the Model Registry as <sweep>-<setting>")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        uri, experiment, trial_ids = _store_of(args)
    except (ReportInputError, ConfigError, StateError) as exc:
        print(f"jobs.report: {exc}", file=sys.stderr)
        return 2
    print(f"jobs.report: {store_line(uri)}", flush=True)
    from jobs.report.build import build_report

    try:
        folder = build_report(args.target, experiment=args.experiment, out_dir=args.out, tracking_uri=uri,
                              overrides=args.overrides, log_to_parent=not args.no_log,
                              command=shlex.join(["python", "-m", "jobs.report", *argv]))
    except (ReportInputError, ConfigError) as exc:
        print(f"jobs.report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {folder}/report.html (also report.md, trials.csv, figures)")
    if args.register:
        return _register(uri, experiment, trial_ids)
    return 0


def _store_of(args: argparse.Namespace) -> tuple[str, str, list[str] | None]:
    """(store, experiment, trial ids or None) of the command line, checked — the sweep file, the
    store and the experiment exist — before mlflow is imported (the store is read with
    :mod:`jobs.tracking.fast_read`; a missing sqlite store is reported, never created)."""
    target = args.target
    if target is not None and Path(target).is_file():
        from jobs.report.build import sweep_target

        spec = sweep_target(target, args.overrides)
        uri, experiment, trial_ids = spec["uri"], spec["experiment"], spec["trial_ids"]
        if args.tracking_uri:
            uri = resolve_tracking_uri(args.tracking_uri)
    elif target is not None and target.endswith((".yaml", ".yml")):
        raise ReportInputError(f"sweep file {target} does not exist; pass an existing SWEEP.yaml or an experiment name")
    elif not (args.experiment or target):
        raise ReportInputError("nothing to report on: pass SWEEP.yaml or --experiment NAME")
    else:
        uri, experiment, trial_ids = read_uri(args.tracking_uri, None), args.experiment or target, None
    experiment_id(uri, experiment)
    return uri, experiment, trial_ids


def _register(uri: str, experiment: str, trial_ids: list[str] | None) -> int:
    """Register each setting's best trial (:func:`jobs.model_io.register_sweep_models`)."""
    from jobs.model_io import register_sweep_models

    try:
        registered = register_sweep_models(uri, experiment, trial_ids)
    except (ReportInputError, ConfigError) as exc:
        print(f"jobs.report: {exc}", file=sys.stderr)
        return 2
    for r in registered:
        print(f"registered: models:/{r.name}/{r.version} (run {r.run_id}, {r.metric} {r.value:.4f})")
    if not registered:
        print("registered nothing: no finished trial with a model/ artifact", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
