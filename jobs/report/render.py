"""Write the report as Markdown (figures linked as files) and as one self-contained HTML file
(figures embedded as base64 PNG, inline CSS, no external resource).

Text (meta and header lines, findings, notes, captions, table cells) may hold Markdown code spans
(`` `smoke` ``) and ``**bold**``; the HTML escapes the text first, then turns those into
``<code>``/``<strong>``.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from jobs.report.findings import Finding
from rgflow.atomic import write_atomic

TABLE_ROWS = 60  # rows shown in the documents; the CSV files have them all
TOPIC_TITLES = {"batch gap": "Batch-size gap", "lr scaling": "Does LR scaling close it?",
                "still improving": "Were the runs still improving at the end?", "noise scale": "Gradient noise scale",
                "critical batch": "Critical batch size from the learning curves", "priors": "Do the priors differ?",
                "stability": "Did seeds diverge?", "data": "Data"}
CODE = re.compile(r"`([^`]+)`")
BOLD = re.compile(r"\*\*(.+?)\*\*")


@dataclass
class Table:
    """A titled table: ``frame`` (shown as is, first :data:`TABLE_ROWS` rows), ``notes`` (lines under
    it), ``csv`` (the file that holds every row, named when rows are cut), ``empty`` (the line shown
    instead of an empty table)."""

    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    csv: str | None = None
    empty: str = "No rows."


@dataclass
class Report:
    """``meta``: lines about the sweep; ``trained``: the header lines (what was trained, shared by
    every setting) and ``trained_groups`` its per-setting table; then the verdict, the ``tables``
    (per setting, against the 2025 reproduction, per trial), figures and notes."""

    title: str
    meta: list[str]
    trained: list[str]
    trained_groups: pd.DataFrame
    findings: list[Finding]
    tables: list[Table]
    figures: list[tuple[str, Path]]
    notes: list[str] = field(default_factory=list)


def inline(text: str) -> str:
    """Markdown-inline text as HTML: escaped, then `` `x` `` → ``<code>x</code>`` and ``**x**`` →
    ``<strong>x</strong>``."""
    escaped = html.escape(str(text), quote=False)
    return BOLD.sub(r"<strong>\1</strong>", CODE.sub(r"<code>\1</code>", escaped))


def _by_topic(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.topic, []).append(f)
    return out


def family_lines(items: list[Finding]) -> list[str]:
    """One line per family of tests among ``items``: its name, size and what it controls."""
    sizes = {}
    for f in items:
        if f.family and (f.family_size or f.family not in sizes):
            sizes[f.family] = f.family_size
    return [f"Family '{name}': {size} tested, adjusted together in one step-down procedure (family-wise error "
            "≤ 0.05; docs/STATISTICS.md)" if size else
            f"Family '{name}': nothing tested (deferred or too few seeds)" for name, size in sizes.items()]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """The first rows as strings: floats with 5 significant digits (a BPD to 4 decimals, a tiny s.e. readable)."""
    return table.head(TABLE_ROWS).map(_cell)


def _md_table(frame: pd.DataFrame) -> list[str]:
    shown = _shown(frame)

    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [row(shown.columns), "|" + "---|" * len(shown.columns)] + [row(r) for r in shown.itertuples(index=False)]


def _cut_note(table: Table) -> str | None:
    if len(table.frame) <= TABLE_ROWS:
        return None
    return f"{len(table.frame) - TABLE_ROWS} more rows" + (f" in `{table.csv}`." if table.csv else ".")


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""] + [f"* {m}" for m in report.meta] + ["", "## What was trained", ""]
    lines += [f"* {t}" for t in report.trained] + [""]
    if not report.trained_groups.empty:
        lines += ["Per setting:", ""] + _md_table(report.trained_groups) + [""]
    lines += ["## Verdict", ""]
    for topic, items in _by_topic(report.findings).items():
        families = [f"_{line}_" for line in family_lines(items)]
        lines += [f"### {TOPIC_TITLES.get(topic, topic)}", ""] + ([*families, ""] if families else []) \
            + [f"* {f.text}" for f in items] + [""]
    for table in report.tables:
        lines += [f"## {table.title}", ""]
        lines += (_md_table(table.frame) if not table.frame.empty else [table.empty]) + [""]
        cut = _cut_note(table)
        lines += ([cut, ""] if cut else []) + [f"* {n}" for n in table.notes] + ([""] if table.notes else [])
    lines += ["## Figures", ""]
    for caption, path in report.figures:
        lines += [f"**{caption}**", "", f"![{caption}]({path.name})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"* {n}" for n in report.notes] + [""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}
figcaption{font-weight:600;margin-bottom:.3em}.table{overflow-x:auto;margin-bottom:.5em}
code{background:#f3f3f3;padding:0 .2em;border-radius:3px;font-size:90%}"""


def _html_table(frame: pd.DataFrame) -> str:
    shown = _shown(frame)
    head = "".join(f"<th>{inline(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>"
                   for r in shown.itertuples(index=False))
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _html_list(items) -> str:
    return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>"


def html_document(report: Report) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{inline(report.title)}</h1>", _html_list(report.meta),
             "<h2>What was trained</h2>", _html_list(report.trained)]
    if not report.trained_groups.empty:
        parts += ["<p>Per setting:</p>", _html_table(report.trained_groups)]
    parts.append("<h2>Verdict</h2>")
    for topic, items in _by_topic(report.findings).items():
        parts += [f"<h3>{inline(TOPIC_TITLES.get(topic, topic))}</h3>",
                  *(f"<p><em>{inline(line)}</em></p>" for line in family_lines(items)), _html_list(f.text for f in items)]
    for table in report.tables:
        parts.append(f"<h2>{inline(table.title)}</h2>")
        parts.append(_html_table(table.frame) if not table.frame.empty else f"<p>{inline(table.empty)}</p>")
        cut = _cut_note(table)
        if cut:
            parts.append(f"<p>{inline(cut)}</p>")
        if table.notes:
            parts.append(_html_list(table.notes))
    parts.append("<h2>Figures</h2>")
    for caption, path in report.figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<figure><figcaption>{inline(caption)}</figcaption>"
                     f"<img alt='{esc(caption)}' src='data:image/png;base64,{data}'></figure>")
    if report.notes:
        parts += ["<h2>Notes</h2>", _html_list(report.notes)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_documents(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` in ``out_dir`` (figures must already be there)."""
    md, page = out_dir / "report.md", out_dir / "report.html"
    write_atomic(md, markdown(report))
    write_atomic(page, html_document(report))
    return md, page


__all__ = ["Report", "Table", "inline", "markdown", "html_document", "write_documents"]
