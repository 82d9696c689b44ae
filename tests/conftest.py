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


def services_required() -> bool:
    return os.environ.get("RGFLOW_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test for a missing service, or fail when services are required (CI)."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)
