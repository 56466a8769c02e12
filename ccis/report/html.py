"""One self-contained HTML page: tables, figures, the config used and software versions.

Everything is inlined (CSS in a ``<style>`` block, figures as base64 ``data:`` URIs), so
the page can be mailed, archived or opened from any folder. Tables come from the
stages' CSV files (their footnotes from the Markdown file beside them) or from the
Markdown file alone. Inputs that a run did not produce are listed as "not produced";
the page is still written.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.metadata
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ccis.common.atomic import atomic_path

log = logging.getLogger(__name__)

# Distributions whose versions decide the numbers (name shown → PyPI distribution).
PACKAGES = (
    ("torch", "torch"),
    ("diffusers", "diffusers"),
    ("transformers", "transformers"),
    ("accelerate", "accelerate"),
    ("timm", "timm"),
    ("open_clip", "open_clip_torch"),
    ("clean-fid", "clean-fid"),
    ("snakemake", "snakemake"),
    ("ccis", "ccis"),
)
# Cell texts that mean "no number": shown greyed so they cannot be read as results.
MISSING_MARKS = ("n/a", "na", "nan", "none", "", "—", "-")
MISSING_PREFIXES = ("not computed", "not produced", "not available")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Table 2 (the clinicians' rating study) exists only once raters have answered: the page
# picks it up from its own folder when present (ccis.rating.table writes it there).
TABLE2 = ("Table 2 – user study, clinician ratings", "table2_user_study.md")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #bbb; padding: .3em .6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
td.missing { color: #888; font-style: italic; background: #f7f7f7; }
.notes { font-size: .88em; color: #444; margin: .2em 0 1.2em; }
.notes p { margin: .3em 0; } .notes ul { margin: .2em 0 .4em; padding-left: 1.4em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #333; margin-top: .3em; }
.absent { color: #a33; font-style: italic; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .8em; overflow-x: auto;
      font-size: .85em; }
.meta td, .meta th { text-align: left; }
"""


@dataclass
class Table:
    """A parsed table: header, rows (strings) and the notes printed under it."""

    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    after: list[Table] = field(default_factory=list)  # further tables of the same file


def _split_md_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells, current, escaped = [], "", False
    for char in line:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            cells.append(current.strip())
            current = ""
        else:
            current += char
    cells.append(current.strip())
    return cells


def _is_rule(cells: list[str]) -> bool:
    return bool(cells) and all(c and set(c) <= set(":- ") for c in cells)


def parse_markdown(path: Path) -> Table:
    """The pipe tables of a Markdown file, each with the non-heading lines after it as its
    notes (lines above the first table are its notes too); the first table holds the
    others in ``after``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tables: list[Table] = []
    before: list[str] = []  # lines above the first table: its notes too
    in_table = False
    for line in lines:
        if line.strip().startswith("|"):
            cells = _split_md_row(line)
            if not in_table:
                tables.append(Table(cells, []))
                in_table = True
            elif not _is_rule(cells):
                tables[-1].rows.append(cells)
            continue
        in_table = False
        text = line.strip()
        # Headings repeat the report's own section title; blank lines carry nothing.
        if text and not text.startswith("#"):
            (tables[-1].notes if tables else before).append(text)
    if not tables:
        raise ValueError(f"{path}: no Markdown table found")
    first, *rest = tables
    first.notes[:0] = before
    first.after = rest
    return first


def read_table(path: str | os.PathLike) -> Table:
    """A table from a CSV (footnotes from the ``.md`` beside it, if any) or a Markdown file."""
    path = Path(path)
    if path.suffix.lower() == ".md":
        return parse_markdown(path)
    try:
        # Strings throughout: "not computed" and "86.1 ± 0.4" must survive as written.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV table ({err})") from err
    notes: list[str] = []
    after: list[Table] = []
    sibling = path.with_suffix(".md")
    if sibling.is_file():
        try:
            parsed = parse_markdown(sibling)
            notes, after = parsed.notes, parsed.after
        except ValueError:
            notes = [line for line in sibling.read_text(encoding="utf-8").splitlines() if line]
    return Table(list(frame.columns), frame.values.tolist(), notes, after)


def is_missing(text: str) -> bool:
    """Whether a cell holds no number ("not computed", "n/a", empty…), footnote marks aside."""
    core = text.strip().lower().rstrip("¹²³⁴⁵⁶⁷⁸⁹⁰*†‡§ ")
    return core in MISSING_MARKS or core.startswith(MISSING_PREFIXES)


def _cell(text: str, tag: str = "td") -> str:
    css = ' class="missing"' if tag == "td" and is_missing(text) else ""
    shown = text if text.strip() else "—"
    return f"<{tag}{css}>{html.escape(shown)}</{tag}>"


def notes_html(lines: Sequence[str]) -> str:
    """Notes under a table (escaped): Markdown list items (``- ``) as one list per run of
    them, every other line as a paragraph."""
    parts: list[str] = []
    items: list[str] = []
    for line in [*lines, ""]:  # the sentinel closes a list that ends the notes
        if line.startswith("- "):
            items.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line:
            parts.append(f"<p>{html.escape(line)}</p>")
    return "".join(parts)


def table_html(table: Table) -> str:
    """An HTML ``<table>`` (escaped) followed by its notes."""
    head = "".join(_cell(h, "th") for h in table.header)
    body = "\n".join("<tr>" + "".join(_cell(str(c)) for c in row) + "</tr>" for row in table.rows)
    out = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    if table.notes:
        out += '\n<div class="notes">' + notes_html(table.notes) + "</div>"
    return out + "".join("\n" + table_html(more) for more in table.after)


def png_data_uri(path: Path) -> str:
    """``path`` (a PNG) as a base64 ``data:`` URI."""
    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def git_commit(folder: str | os.PathLike | None = None) -> str:
    """The git commit of the ``ccis`` source (``+dirty`` if modified), or "not available"."""
    folder = Path(folder) if folder else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "not available"
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def software_versions() -> list[tuple[str, str]]:
    """(name, version) of Python, the packages that decide the numbers, and the git commit."""
    versions = [("python", f"{platform.python_version()} ({platform.python_implementation()})")]
    for shown, dist in PACKAGES:
        try:
            versions.append((shown, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((shown, "not installed"))
    versions.append(("git commit", git_commit()))
    return versions


def _absent(what: str, path: Path | None) -> str:
    where = f" ({html.escape(str(path))})" if path else ""
    return f'<p class="absent">{html.escape(what)}: not produced{where}</p>'


def build_report(
    out_dir: str | os.PathLike,
    tables: Sequence[tuple[str, str | os.PathLike]],
    figures: Sequence[tuple[str, str | os.PathLike, str]],
    config_path: str | os.PathLike | None,
    *,
    title: str = "CCIS-Diff reproduction report",
    versions: Sequence[tuple[str, str]] | None = None,
    generated: str | None = None,
) -> Path:
    """Write ``out_dir/index.html``: one self-contained page; return its path.

    ``tables``: (title, CSV or Markdown path); ``figures``: (title, PNG path, caption).
    Missing files are listed as "not produced". ``versions`` and ``generated`` (a time
    stamp) default to this environment and now (or ``SOURCE_DATE_EPOCH``); pass them
    for byte-identical pages.
    """
    out_dir = Path(out_dir)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if generated is None:
        # SOURCE_DATE_EPOCH (the reproducible-builds convention) pins the stamp.
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = (
            _dt.datetime.fromtimestamp(int(epoch), _dt.UTC) if epoch else _dt.datetime.now(_dt.UTC)
        )
        generated = when.strftime("%Y-%m-%d %H:%M UTC")
    stamp = generated
    sections.append(f"<p>Generated {html.escape(stamp)}.</p>")
    absent: list[str] = []

    tables = list(tables)
    table2 = out_dir / TABLE2[1]
    if table2.is_file() and all(Path(p).stem != table2.stem for _, p in tables):
        after = [k for k, (_, p) in enumerate(tables) if Path(p).name.startswith("table1")]
        tables.insert(after[0] + 1 if after else len(tables), (TABLE2[0], table2))
    sections.append("<h2>Tables</h2>")
    for name, path in tables:
        path = Path(path)
        sections.append(f"<h3>{html.escape(name)}</h3>")
        if not path.is_file():
            sections.append(_absent(name, path))
            absent.append(name)
            continue
        table = read_table(path)
        sections.append(table_html(table))
        log.info("table %r: %d rows from %s", name, len(table.rows), path)

    sections.append("<h2>Figures</h2>")
    for name, path, caption in figures:
        path = Path(path)
        if not path.is_file():
            sections.append(f"<h3>{html.escape(name)}</h3>" + _absent(name, path))
            absent.append(name)
            continue
        sections.append(
            f"<figure><h3>{html.escape(name)}</h3>"
            f'<img alt="{html.escape(name, quote=True)}" src="{png_data_uri(path)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        log.info("figure %r: inlined %s (%d bytes)", name, path, path.stat().st_size)

    sections.append("<h2>Configuration</h2>")
    if config_path is not None and Path(config_path).is_file():
        config_path = Path(config_path)
        sections.append(f"<p>From <code>{html.escape(str(config_path))}</code>:</p>")
        sections.append(f"<pre>{html.escape(config_path.read_text(encoding='utf-8'))}</pre>")
    else:
        sections.append(_absent("configuration", Path(config_path) if config_path else None))
        absent.append("configuration")

    sections.append("<h2>Software</h2>")
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in (versions if versions is not None else software_versions())
    )
    sections.append(f'<table class="meta">\n{rows}\n</table>')

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    if absent:
        log.warning("not produced, listed as such: %s", ", ".join(absent))
    log.info("wrote %s (%d bytes)", index, len(page.encode("utf-8")))
    return index
