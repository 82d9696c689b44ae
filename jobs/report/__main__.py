"""``python -m jobs.report SWEEP.yaml [overrides…] | --experiment NAME [--out DIR] [--tracking-uri URI] [--register]``.

``--register``: after the report, register the best trial of each setting (lowest ``test_bpd``,
else best validation BPD; seeds are a setting's replicates) in the store's Model Registry as
``<sweep>-<setting>`` from its ``runs:/<run_id>/model`` (:func:`jobs.model_io.register_sweep_models`);
one line per registered model. Load one back with ``jobs.model_io.load_model("models:/<name>/<version>")``.

Exit status: 0 report written, 2 bad input (missing sweep file or experiment, no trial runs).
"""
from __future__ import annotations

import argparse
import logging
import sys

from jobs.config import ConfigError
from jobs.report.build import build_report
from jobs.report.query import ReportInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="sweep file (SWEEP.yaml) or sweep/experiment name")
    parser.add_argument("overrides", nargs="*", help="sweep overrides, as for jobs.sweep (key=value)")
    parser.add_argument("--experiment", help="MLflow experiment (= sweep name) to report on")
    parser.add_argument("--out", help="report folder (default reports/<sweep>/)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the sweep's, else $MLFLOW_TRACKING_URI, "
                                               "else ./mlflow.db)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    parser.add_argument("--register", action="store_true",
                        help="register each setting's best trial's model/ in the Model Registry as <sweep>-<setting>")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = build_report(args.target, experiment=args.experiment, out_dir=args.out,
                              tracking_uri=args.tracking_uri, overrides=args.overrides, log_to_parent=not args.no_log)
    except (ReportInputError, ConfigError) as exc:
        print(f"jobs.report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {folder}/report.html (also report.md, trials.csv, figures)")
    if args.register:
        return _register(args)
    return 0


def _register(args: argparse.Namespace) -> int:
    """Register each setting's best trial (:func:`jobs.model_io.register_sweep_models`)."""
    from pathlib import Path

    from jobs.model_io import register_sweep_models
    from jobs.report.build import sweep_target

    if args.target is not None and Path(args.target).is_file():
        spec = sweep_target(args.target, args.overrides)
        uri, experiment, trial_ids = args.tracking_uri or spec["uri"], spec["experiment"], spec["trial_ids"]
    else:
        uri, experiment, trial_ids = args.tracking_uri, args.experiment or args.target, None
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
