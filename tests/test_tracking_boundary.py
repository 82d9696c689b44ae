"""``jobs/tracking/`` is the only code that talks to MLflow, and ``jobs/tracking/tags.py`` the one list
of tag names (docs/ARCHITECTURE.md, "MLflow layout").

Static (``ast``) scan of every module under ``jobs/`` and ``rgflow/`` outside ``jobs/tracking/``:

* ``mlflow``: no ``import mlflow`` / ``from mlflow… import``;
* ``client``: no raw client — neither ``get_client`` from ``jobs.tracking`` nor the name ``MlflowClient``;
* ``tag``: no string literal that is a tag name of ``jobs.tracking.tags`` (exactly, as a
  ``<prefix><key>`` of one of its prefixes, or quoted in a search filter as ``tags.`name```).
  Strings that merely look alike (logger and module names such as ``"rgflow.data"``) are not tags.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jobs.tracking import tags as T

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("jobs", "rgflow")
BOUNDARY = "jobs/tracking/"

#: TEMPORARY — files that still talk to MLflow or spell tag names themselves, and which of the kinds
#: above they still do (e.g. ``"jobs/sweep.py": {"client", "tag"}``). Their owners switch them to
#: jobs.tracking's named operations and jobs.tracking.tags, then delete the entry; a listed file that
#: is clean fails ``test_pending_list_only_shrinks``, so the list only shrinks. Empty now: once it
#: stays empty, this list and that test can go.
PENDING: dict[str, set[str]] = {}

_KEY = re.compile(r"[A-Za-z0-9_]*")


def is_tag(text: str) -> bool:
    """``text`` names a tag of ``jobs.tracking.tags``."""
    if text in T.ALL_TAGS:
        return True
    if any(text.startswith(p) and _KEY.fullmatch(text[len(p):]) for p in T.TAG_PREFIXES):
        return True
    return any(f"tags.`{tag}`" in text for tag in T.ALL_TAGS)  # a search filter: tags.`rgflow.trial_id` = …


def violations(path: Path) -> list[tuple[str, int, str]]:
    """``(kind, line, what)`` for each way ``path`` crosses the boundary."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [("mlflow", node.lineno, f"import {a.name}") for a in node.names
                      if a.name == "mlflow" or a.name.startswith("mlflow.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mlflow" or node.module.startswith("mlflow."):
                found.append(("mlflow", node.lineno, f"from {node.module} import …"))
            elif node.module.startswith("jobs.tracking") and any(a.name == "get_client" for a in node.names):
                found.append(("client", node.lineno, f"from {node.module} import get_client"))
        elif isinstance(node, ast.Name) and node.id == "MlflowClient" or (
                isinstance(node, ast.Attribute) and node.attr in ("MlflowClient", "get_client")):
            found.append(("client", node.lineno, "MlflowClient / get_client"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and is_tag(node.value):
            found.append(("tag", node.lineno, repr(node.value)))
    return found


def scanned_files() -> list[Path]:
    files = [p for top in SCANNED for p in sorted((REPO / top).rglob("*.py"))]
    return [p for p in files if not p.relative_to(REPO).as_posix().startswith(BOUNDARY)]


def all_violations() -> dict[str, list[tuple[str, int, str]]]:
    out = {}
    for path in scanned_files():
        found = violations(path)
        if found:
            out[path.relative_to(REPO).as_posix()] = found
    return out


def test_only_jobs_tracking_talks_to_mlflow_and_names_tags():
    bad = []
    for name, found in all_violations().items():
        allowed = PENDING.get(name, set())
        bad += [f"{name}:{line}: {kind}: {what}" for kind, line, what in found if kind not in allowed]
    assert not bad, ("outside jobs/tracking/: use its named operations (jobs.tracking.find_run, log_evaluation, "
                     "end_run, …) and the constants of jobs.tracking.tags instead of\n" + "\n".join(bad))


def test_pending_list_only_shrinks():
    current = {name: {kind for kind, _, _ in found} for name, found in all_violations().items()}
    stale = {name: kinds - current.get(name, set()) for name, kinds in PENDING.items()}
    stale = {name: kinds for name, kinds in stale.items() if kinds}
    assert not stale, f"clean now: remove from PENDING in tests/test_tracking_boundary.py: {stale}"


def test_the_scan_finds_what_it_must(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('import mlflow\nfrom mlflow.entities import ViewType\nfrom jobs.tracking import get_client\n'
                     'x = {"rgflow.state": 1, "rgflow.eval.seed": 2}\nq = f"tags.`rgflow.trial_id` = {x}"\n'
                     'log = "rgflow.data"\nhelp = "rgflow.eval.* tags"\nmod = f"rgflow.data.{x}"\n')
    assert sorted((kind, line) for kind, line, _ in violations(probe)) == [
        ("client", 3), ("mlflow", 1), ("mlflow", 2), ("tag", 4), ("tag", 4), ("tag", 5)]


def test_tags_module_is_the_one_commented_list():
    source = (REPO / "jobs" / "tracking" / "tags.py").read_text()
    names = [line for line in source.splitlines() if re.match(r"[A-Z_]+_TAG(_PREFIX)? = ", line)]
    assert len(names) == len(T.ALL_TAGS), "every tag constant has a distinct value"
    for line in names:
        assert re.search(r'= "(rgflow|mlflow)\.[A-Za-z_.]*"  # \S', line), f"one-line comment wanted: {line}"
    assert {t.split(".")[0] for t in T.ALL_TAGS} == {"rgflow", "mlflow"}
    assert {"rgflow.failures", "rgflow.trial_index", "rgflow.backend", "mlflow.parentRunId"} <= T.ALL_TAGS


def test_environment_tags_are_in_the_list(monkeypatch):
    from jobs.tracking import environment_tags

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.setenv(var, "1")
    unknown = [k for k in environment_tags("cpu") if not is_tag(k)]
    assert not unknown, f"add to jobs/tracking/tags.py: {unknown}"


@pytest.mark.parametrize("module", ["layout", "store"])
def test_old_tag_names_still_importable(module):
    import importlib

    mod = importlib.import_module(f"jobs.tracking.{module}")
    for name in ("ROLE_TAG", "STATE_TAG", "REASON_TAG", "ATTEMPT_TAG", "TRIAL_ID_TAG", "RUN_DIR_TAG", "PARENT_TAG",
                 "SWEEP_TAG", "SWEEP_ID_TAG"):
        assert getattr(mod, name) == getattr(T, name)
