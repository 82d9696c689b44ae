"""Shared test configuration.

Fixtures for real services live in ``tests/fixtures/*.py`` and are registered here. A test that
needs a service which is not installed on this machine is skipped, unless
``RGFLOW_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where the absence is a failure.
"""
from __future__ import annotations

import os

# Before anything imports torch: OpenMP threads that wait passively instead of spinning. On
# shared, oversubscribed cores (the test session, its trial subprocesses and services together)
# spinning waiters made the flow's kernels several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


REPO = Path(__file__).resolve().parent.parent
# What a test must never write into the repository root (it writes under its tmp_path instead):
# MLflow's cwd-relative defaults, ./mlflow.db and ./mlruns, and the project's sqlite artifacts.
_REPO_OUTPUTS = ("mlflow.db", "mlruns", "mlartifacts")
_before: dict[str, frozenset] = {}


def _repo_outputs() -> dict[str, frozenset]:
    """Entries (two levels deep) of the repository-root outputs that tests must not create."""
    found = {}
    for name in _REPO_OUTPUTS:
        path = REPO / name
        if path.is_dir():
            found[name] = frozenset(str(p.relative_to(REPO)) for p in path.glob("*/*"))
        elif path.exists():
            found[name] = frozenset({f"{name} ({path.stat().st_mtime_ns})"})
    return found


def pytest_sessionstart(session) -> None:
    _before.update(_repo_outputs())


def pytest_terminal_summary(terminalreporter) -> None:
    """Warn when ``mlflow.db``, ``mlruns/`` or ``mlartifacts/`` changed in the repository root
    during the session: a test (or another process started meanwhile) wrote outside its tmp folder."""
    new = sorted(p for name, now in _repo_outputs().items() for p in now - _before.get(name, frozenset()))
    if new:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        terminalreporter.write_line(f"warning: the repository root changed during the tests: {shown} — tests must "
                                    "write under their tmp_path (or another process wrote there meanwhile)",
                                    yellow=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """A test that uses the Slurm dev cluster is a ``slurm`` test even if its marker was forgotten,
    so that ``make test-fast`` (``-m "not slurm"``) never starts the cluster. With pytest-xdist
    (``make test`` runs two workers, ``--dist loadgroup``), every ``slurm`` test runs in one worker,
    one after another: they share the dev cluster's few CPUs and their job timeouts assume it free."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slurm") is None:
            item.add_marker(pytest.mark.slurm)
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.xdist_group("slurm"))


def services_required() -> bool:
    return os.environ.get("RGFLOW_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test for a missing service, or fail when services are required (CI)."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)
