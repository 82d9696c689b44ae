"""Write the report as Markdown (figures linked as files) and as one self-contained HTML file
(figures embedded as base64 PNG, inline CSS, no external resource)."""
from __future__ import annotations

import base64
import html
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from jobs.report.verdict import Finding

TABLE_ROWS = 60  # rows shown in the documents; trials.csv has them all
TOPIC_TITLES = {"batch gap": "Batch-size gap", "lr scaling": "Does LR scaling close it?",
                "still improving": "Were the large-batch runs still improving?", "noise scale": "Gradient noise scale",
                "priors": "Do the priors differ?", "data": "Data"}


@dataclass
class Report:
    title: str
    meta: list[str]
    findings: list[Finding]
    table: pd.DataFrame
    figures: list[tuple[str, Path]]
    notes: list[str] = field(default_factory=list)


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _by_topic(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.topic, []).append(f)
    return out


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """The first rows as strings: floats with 5 significant digits (a BPD to 4 decimals, a tiny s.e. readable)."""
    return table.head(TABLE_ROWS).map(_cell)


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""] + [f"* {m}" for m in report.meta] + ["", "## Verdict", ""]
    for topic, items in _by_topic(report.findings).items():
        lines += [f"### {TOPIC_TITLES.get(topic, topic)}", ""] + [f"* {f.text}" for f in items] + [""]
    lines += ["## Trials", ""]
    shown = _shown(report.table)
    lines.append("| " + " | ".join(map(str, shown.columns)) + " |")
    lines.append("|" + "---|" * len(shown.columns))
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(row) + " |")
    if len(report.table) > TABLE_ROWS:
        lines.append(f"\n{len(report.table) - TABLE_ROWS} more rows in `trials.csv`.")
    lines += ["", "## Figures", ""]
    for caption, path in report.figures:
        lines += [f"**{caption}**", "", f"![{caption}]({path.name})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"* {n}" for n in report.notes] + [""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}
figcaption{font-weight:600;margin-bottom:.3em}.table{overflow-x:auto}"""


def html_document(report: Report) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{esc(report.title)}</h1><ul>"]
    parts += [f"<li>{esc(m)}</li>" for m in report.meta]
    parts.append("</ul><h2>Verdict</h2>")
    for topic, items in _by_topic(report.findings).items():
        parts.append(f"<h3>{esc(TOPIC_TITLES.get(topic, topic))}</h3><ul>")
        parts += [f"<li>{esc(f.text)}</li>" for f in items]
        parts.append("</ul>")
    parts.append("<h2>Trials</h2><div class='table'>")
    parts.append(_shown(report.table).to_html(index=False, escape=True))
    parts.append("</div>")
    if len(report.table) > TABLE_ROWS:
        parts.append(f"<p>{len(report.table) - TABLE_ROWS} more rows in trials.csv.</p>")
    parts.append("<h2>Figures</h2>")
    for caption, path in report.figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<figure><figcaption>{esc(caption)}</figcaption>"
                     f"<img alt='{esc(caption)}' src='data:image/png;base64,{data}'></figure>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_documents(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` in ``out_dir`` (figures must already be there)."""
    md, page = out_dir / "report.md", out_dir / "report.html"
    write_atomic(md, markdown(report))
    write_atomic(page, html_document(report))
    return md, page


__all__ = ["Report", "markdown", "html_document", "write_documents", "write_atomic"]
