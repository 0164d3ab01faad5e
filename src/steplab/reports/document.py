"""The document model of every report: sections with text, a table, images and blocks,
rendered the same way to self-contained HTML, to Markdown, and (a table) to a terminal.

`steplab report`, `compare` and `tune` build their output from these pieces, so a table
looks the same in ``report.html``, ``compare.md`` and the terminal.
"""

from __future__ import annotations

import base64
import html
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """One part of a report. Every field is optional except the title; they render in this order."""

    title: str
    text: str = ""  # plain text paragraphs (blank line between them)
    table: Table | None = None
    images: list[Path] = field(default_factory=list)  # PNG files: embedded in HTML, linked from Markdown
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (caption, preformatted text)
    collapsed: Section | None = None  # a sub-part folded away in HTML (long tables)


# --- rendering ------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1280px;margin:2em auto;
padding:0 1.2em;color:#1d1d1f}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666;font-size:.9em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f6}td:first-child{white-space:nowrap}tr:nth-child(even) td{background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;white-space:pre-wrap;font-size:.85em}
details summary{cursor:pointer;color:#444;margin:.4em 0}
"""

# Cells right-aligned as numbers: 1,234  3.5383  1.2e-05  12.8k  428 MiB  0:42  3.3212 (50); not versions.
_NUM = re.compile(r"^([-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?\s?([kMBT]|MiB|%)?( \(\d+\))?|\d+:\d\d(:\d\d)?)$")


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if _NUM.match(c) else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_body(s: Section) -> list[str]:
    out = [f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n") if p.strip()]
    if s.table is not None:
        out.append(_html_table(s.table))
    for img in s.images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        out.append(f'<img alt="{html.escape(Path(img).stem)}" src="data:image/png;base64,{data}">')
    for caption, text in s.blocks:
        out.append(f"<h3>{html.escape(caption)}</h3><pre>{html.escape(text)}</pre>")
    if s.collapsed is not None:
        out.append(f"<details><summary>{html.escape(s.collapsed.title)}</summary>")
        out += _html_body(s.collapsed)
        out.append("</details>")
    return out


def render_html(title: str, sections: Sequence[Section], meta: str) -> str:
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(meta)}</p>',
        f"<nav>{nav}</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{_anchor(s.title)}"><h2>{html.escape(s.title)}</h2>')
        parts += _html_body(s)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", "<br>")


def _md_table(t: Table) -> list[str]:
    head = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |", "|" + "---|" * len(t.headers)]
    return head + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]


def _md_body(s: Section, base: Path, level: int) -> list[str]:
    out = [p.strip() + "\n" for p in s.text.split("\n\n") if p.strip()]
    if s.table is not None:
        out += [*_md_table(s.table), ""]
    for img in s.images:
        out.append(f"![{Path(img).stem}]({Path(os.path.relpath(img, base)).as_posix()})\n")
    for caption, text in s.blocks:
        fence = "````" if "```" in text else "```"
        out += [f"{'#' * (level + 1)} {caption}\n", fence, text, fence, ""]
    if s.collapsed is not None:
        out.append(f"{'#' * (level + 1)} {s.collapsed.title}\n")
        out += _md_body(s.collapsed, base, level + 1)
    return out


def render_markdown(title: str, sections: Sequence[Section], meta: str, base: Path) -> str:
    """The Markdown twin; image links are relative to `base` (the report's directory)."""
    out = [f"# {title}\n", f"_{meta}_\n"]
    for s in sections:
        out.append(f"## {s.title}\n")
        out += _md_body(s, base, 2)
    return "\n".join(out).rstrip() + "\n"


def markdown_table(t: Table) -> str:
    """A table as Markdown (also what a pipe or a log file gets instead of a rich table)."""
    return "\n".join(_md_table(t))


def print_table(t: Table, stream: TextIO | None = None, *, title: str | None = None) -> None:
    """A table for the person at the terminal: a rich table on a terminal, Markdown text
    elsewhere (no control codes in a pipe or a CI log)."""
    stream = stream or sys.stdout
    if not stream.isatty():
        print(markdown_table(t), file=stream, flush=True)
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    rich_table = RichTable(title=title, title_justify="left")
    numeric = [
        all(_NUM.match(row[i]) or row[i] == "-" for row in t.rows) and t.rows for i in range(len(t.headers))
    ]
    for header, num in zip(t.headers, numeric, strict=True):
        rich_table.add_column(header, justify="right" if num else "left", overflow="fold")
    for row in t.rows:
        rich_table.add_row(*row)
    Console(file=stream).print(rich_table)
