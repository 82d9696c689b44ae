"""The MLflow UI shows a sweep's runs: a real server, a real tiny sweep, a real headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``; no extra
package): each page is loaded, polled until what the test looks for has rendered (charts load
their data after the page itself), read back as its DOM and photographed. Checked: the experiment
page, opened in the UI's model-training mode (``?workflowType=machine_learning``: MLflow 3.17's UI
opens every experiment on its GenAI Overview by default and ignores the experiment's
``mlflow.experimentKind=custom_model_development`` tag, which the test still checks), shows the
training runs view with its side bar (not the GenAI Overview / Traces) and lists the runs, with the trials named by their axis values and the Version (git commit), User
and Description columns filled; a trial's page shows its name and commit, its artifacts (the
model's ``model/weights.pt`` and ``train.log``) and its system metric charts (``system/…``); the
parent run shows the sweep's description. The screenshots go to the folder named by
``$RGFLOW_TEST_ARTIFACTS`` for a person to look at (default: the test's own temporary folder, so
that the suite leaves the working tree as it found it).
"""
from __future__ import annotations

import base64
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WIDTH, HEIGHT = 1800, 1400  # px: room for the runs table's columns
CHART_ROW = 380  # px per row of metric charts (≥ 2 per row at this width): system metrics pages get taller
PAGE_TIMEOUT_S = 60.0
#: A view as the UI's Share button stores it (an experiment tag, read back by ``?viewStateShareKey=``):
#: rows sorted by name (then trials are not nested under the sweep's row) and these columns shown.
SHARED_VIEW = {"orderByKey": "tags.`mlflow.runName`", "orderByAsc": True,
               "selectedColumns": ["attributes.`User`", "attributes.`Source`", "attributes.`Version`",
                                   "attributes.`Description`"]}
SHARE_KEY = "rgflow-ui-test"
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("headless Chromium is not installed (apt-get install chromium)")


class Page(HTMLParser):
    """A rendered page's DOM: every element's attributes, its text (white space collapsed) and the
    ``row-id`` of the table row it sits in (MLflow's runs table: the run id)."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[tuple[dict, str, str | None]] = []
        self._open: list[tuple[str, dict, int, str | None]] = []
        self._text: list[str] = []
        self.feed(html)
        self.close()
        self.text = " ".join(" ".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        row = attrs.get("row-id") or (self._open[-1][3] if self._open else None)
        if tag in _VOID:
            self.elements.append((attrs, "", row))
        else:
            self._open.append((tag, attrs, len(self._text), row))

    def handle_endtag(self, tag):
        while self._open:
            name, attrs, start, row = self._open.pop()
            self.elements.append((attrs, " ".join(" ".join(self._text[start:]).split()), row))
            if name == tag:
                return

    def handle_data(self, data):
        self._text.append(data)

    def texts(self, attr: str, value: str) -> list[str]:
        """The text of each element whose attribute ``attr`` is ``value``."""
        return [text for attrs, text, _ in self.elements if attrs.get(attr) == value]

    def cells(self) -> dict[tuple[str, str], str]:
        """The runs table: (run id, column id) → the cell's text."""
        return {(row, attrs["col-id"]): text for attrs, text, row in self.elements if row and "col-id" in attrs}


class Browser:
    """One headless Chromium, driven over the DevTools protocol on fds 3 (in) and 4 (out)."""

    def __init__(self, chromium: str):
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        chrome_in, self._write = os.pipe()
        self._read, chrome_out = os.pipe()
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{chrome_in} 4>&{chrome_out}', chromium, *CHROMIUM_FLAGS,
             f"--user-data-dir={self._profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(chrome_in, chrome_out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(chrome_in)
        os.close(chrome_out)
        self._buffer, self._id, self._session = b"", 0, None
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._call("Browser.close", browser=True)  # exits with its renderers, which a SIGKILL would orphan
        except (RuntimeError, TimeoutError):
            pass  # it may exit before it answers
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._write)
        os.close(self._read)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _call(self, method: str, *, browser: bool = False, **params) -> dict:
        """Send one command (to the page once attached, unless ``browser``) and wait ≤ 60 s for its reply."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self._session and not browser:
            message["sessionId"] = self._session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (code {self._proc.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # events and other replies are skipped
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _page(self) -> Page:
        result = self._call("Runtime.evaluate", expression="document.documentElement.outerHTML", returnByValue=True)
        return Page(result["result"].get("value", ""))  # no value while a navigation replaces the document

    def url(self) -> str:
        """The address the page shows now (after the UI's own redirects)."""
        return self._call("Runtime.evaluate", expression="location.href", returnByValue=True)["result"]["value"]

    def show(self, url: str, ready: Callable[[Page], bool], screenshot: Path, height: int = HEIGHT) -> Page:
        """Load ``url`` afresh in a ``WIDTH`` × ``height`` px window, wait ≤ 60 s until ``ready(page)``,
        save a PNG; returns the page as rendered then (also on timeout: the test's assertions then
        say what is missing)."""
        self._call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
        self._call("Page.navigate", url="about:blank")  # a full load: no content of the previous page
        self._call("Page.navigate", url=url)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        page = self._page()
        while not ready(page) and time.monotonic() < deadline:
            time.sleep(0.5)
            page = self._page()
        screenshot.write_bytes(base64.b64decode(self._call("Page.captureScreenshot", format="png")["data"]))
        assert screenshot.stat().st_size > 10_000, f"the screenshot of {url} is (nearly) empty"
        return page


@pytest.mark.browser
@pytest.mark.slow
def test_mlflow_ui_shows_the_sweep(mlflow_server, tmp_path):
    chromium = _chromium()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = mlflow_server.uri
    sweep = [
        sys.executable, "-m", "jobs.sweep", "sweeps/smoke.yaml", "backend=local", "name=ui-smoke", "reuse=false",
        "train.batch_size=[32,64]", "prior.kind=laplace", "train.steps=3", "train.epochs=1",
        "data.train_size=256", "data.valid_size=64", "data.test_size=64", f"run.out_dir={tmp_path / 'runs'}",
        "evaluation.enabled=false", "tracking.system_metrics_interval_s=1",  # samples within a short trial
    ]
    done = subprocess.run(sweep, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("ui-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`rgflow.role` = 'trial'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.info.run_name for r in runs) == ["bs32-laplace-s0", "bs64-laplace-s0"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    description = parent.data.tags["mlflow.note.content"]
    assert description.startswith("tiny model")

    artifacts = Path(os.environ.get("RGFLOW_TEST_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    base = f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}"
    # Marked as model training (what MLflow < 3.17's UI reads to open it on its runs, not on the GenAI
    # Overview / Traces). MLflow 3.17's UI ignores that tag: its sidebar switch "GenAI | Model training"
    # (default GenAI, kept in the browser's localStorage `mlflow.workflowType`, or `?workflowType=` in
    # the address) decides for every experiment; the address with `workflowType=machine_learning` is
    # what the switch itself navigates to.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    with Browser(chromium) as browser:
        # The experiment page as it opens from its address in model-training mode: the training runs
        # view (not Overview / Traces, not the GenAI side bar), the sweep's row, the trials nested
        # (collapsed) under it.
        counted = f"{len(runs) + 1} matching runs"
        page = browser.show(f"{base}?workflowType=machine_learning",
                            lambda p: counted in p.text and parent.info.run_name in p.text, artifacts / "mlflow-ui-runs.png")
        assert counted in page.text, "the experiment page does not open on the runs of the sweep and its trials"
        opened = browser.url().lower()
        assert "traces" not in opened and "overview" not in opened, f"the experiment opened on {opened}"
        tabs = f"#/experiments/{experiment.experiment_id}/"  # the experiment's links (side bar, breadcrumb)
        nav = {(a["href"][len(tabs):].split("?")[0].split("/")[0], text, a.get("aria-current") == "page")
               for a, text, _ in page.elements if a.get("href", "").startswith(tabs)}
        assert ("runs", "Runs", True) in nav, f"not on the model-training side bar's Runs: {sorted(nav)}"
        assert not {"overview", "chat-sessions"} & {tab for tab, _, _ in nav}, (
            f"the GenAI side bar (Overview, Sessions, …): {sorted(nav)}")
        assert parent.info.run_name in page.text, "the sweep's parent run is not on the runs page"

        # A shared view of it: every run a row, with the Version, User and Description columns.
        client.set_experiment_tag(experiment.experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(SHARED_VIEW))
        every = [*runs, parent]

        def table_filled(p: Page) -> bool:
            cells = p.cells()
            return all(cells.get((r.info.run_id, "attributes.`Run Name`")) for r in every) and all(
                cells.get((r.info.run_id, "attributes.`Version`")) not in (None, "", "-") for r in runs)

        page = browser.show(f"{base}/runs?viewStateShareKey={SHARE_KEY}", table_filled,
                            artifacts / "mlflow-ui-runs-columns.png")
        cells = page.cells()
        for run in every:
            assert run.info.run_name in cells.get((run.info.run_id, "attributes.`Run Name`"), ""), run.info.run_name
        for run in runs:
            commit, cell = run.data.tags["mlflow.source.git.commit"], cells.get((run.info.run_id, "attributes.`Version`"))
            assert cell and len(cell) >= 6 and commit.startswith(cell), f"Version of {run.info.run_name}: {cell!r}"
            assert cells.get((run.info.run_id, "attributes.`User`")) == run.data.tags["mlflow.user"]
        shown = cells.get((parent.info.run_id, "attributes.`Description`"), "").removesuffix("...")
        assert len(shown) >= 20 and description.startswith(shown), f"the sweep's Description cell: {shown!r}"

        for run in sorted(runs, key=lambda r: r.info.run_name):  # each trial's own page
            name, run_page = run.info.run_name, f"{base}/runs/{run.info.run_id}"
            commit = run.data.tags["mlflow.source.git.commit"]
            # Overview: the name and, beside the source, the commit.
            page = browser.show(run_page, lambda p: any(p.texts(
                "data-component-id", "mlflow.run_details.overview.source.commit_hash")), artifacts / f"mlflow-ui-{name}.png")
            assert name in page.text, f"run {name!r} is not on its rendered page {run_page}"
            [shown] = set(page.texts("data-component-id", "mlflow.run_details.overview.source.commit_hash"))
            assert len(shown) >= 6 and commit.startswith(shown), f"{name}: commit shown {shown!r}, tag {commit}"

        run = min(runs, key=lambda r: r.info.run_name)  # the artifacts and charts of one trial
        name, run_page = run.info.run_name, f"{base}/runs/{run.info.run_id}"

        def tree(p: Page) -> list[str]:
            """The artifact tree's entries (folders expanded along the selected file's path)."""
            return [a["artifact-name"] for a, _, _ in p.elements if a.get("data-testid") == "artifact-tree-node"]

        # Artifacts, opened at the model's weights: the model/ folder expanded, train.log beside it.
        page = browser.show(f"{run_page}/artifacts/model/weights.pt", lambda p: {"weights.pt", "train.log"} <= set(tree(p)),
                            artifacts / f"mlflow-ui-{name}-artifacts.png")
        assert {"model", "weights.pt", "model.json", "train.log"} <= set(tree(page)), f"{name}: {tree(page)}"
        assert tree(page).count("config.yaml") == 2, f"{name}: model/config.yaml and config.yaml: {tree(page)}"
        size = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "model")}["model/weights.pt"]
        assert "artifacts/model/weights.pt" in page.text and f"{size / 1024:.2f}KB" in page.text, (
            f"{name}: model/weights.pt ({size} bytes) is not the file shown")

        # System metrics: one rendered chart per system/… key the run has.
        keys = {k for k in run.data.metrics if k.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys

        def charts(p: Page) -> set[str]:
            return {attrs["title"] for attrs, _, _ in p.elements if attrs.get("title", "").startswith("system/")}

        def plotted(p: Page) -> bool:
            return charts(p) == keys and sum("js-plotly-plot" in a.get("class", "") for a, _, _ in p.elements) >= len(keys)

        page = browser.show(f"{run_page}/system-metrics", plotted, artifacts / f"mlflow-ui-{name}-system-metrics.png",
                            height=HEIGHT + CHART_ROW * math.ceil(len(keys) / 2))  # charts render in view only
        assert charts(page) == keys, f"{name}: charts {sorted(charts(page))}, metrics {sorted(keys)}"
        assert plotted(page), f"{name}: not every system metric chart has a plot"

        # The sweep's parent run: its note is the sweep's description.
        page = browser.show(f"{base}/runs/{parent.info.run_id}",
                            lambda p: description in p.texts("data-testid", "note-editor-preview-content"),
                            artifacts / "mlflow-ui-parent.png")
        assert description in page.texts("data-testid", "note-editor-preview-content"), "no sweep description"
