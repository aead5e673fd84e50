"""``report.html``: ``results.md`` as one self-contained page, for people who would rather look than read.

The page is the markdown report rendered (headings, the headline list, warnings, tables, paragraphs), with every
figure embedded as a base64 PNG: no script, no stylesheet or font from elsewhere, no server and no network. The
renderer knows only the markdown that :mod:`.report` writes, so results.md stays the one source of the content.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.warning { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""
IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<file>[^)]+)\)$")


def inline(text: str) -> str:
    """Escaped text with the report's inline markdown: ``code`` and **bold**."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def table(lines: list[str]) -> str:
    """A markdown pipe table (header, alignment row, body) as an HTML table; right-aligned columns are numbers."""

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header, alignment, *body = lines
    numeric = [cell.endswith(":") for cell in cells(alignment)]
    head = "".join(f"<th>{inline(cell)}</th>" for cell in cells(header))
    rows = [
        "".join(
            f'<td class="number">{inline(cell)}</td>' if right else f"<td>{inline(cell)}</td>"
            for cell, right in zip(cells(line), numeric, strict=False)
        )
        for line in body
    ]
    return (
        "<table><thead><tr>"
        + head
        + "</tr></thead><tbody>"
        + "".join(f"<tr>{r}</tr>" for r in rows)
        + "</tbody></table>"
    )


def embedded_image(alt: str, file: Path) -> str:
    data = base64.b64encode(file.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def render(markdown: str, directory: Path) -> str:
    """The page of a results.md whose figures lie in ``directory``.

    Raises:
        FileNotFoundError: For a figure the markdown names that is not in ``directory``.
    """
    blocks: list[str] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("|"):
            end = index
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            blocks.append(table(lines[index:end]))
            index = end
            continue
        if line.startswith("- "):
            end = index
            while end < len(lines) and lines[end].startswith("- "):
                end += 1
            blocks.append(
                "<ul>" + "".join(f"<li>{inline(item[2:])}</li>" for item in lines[index:end]) + "</ul>"
            )
            index = end
            continue
        heading = re.match(r"^(#+) (.*)$", line)
        image = IMAGE.match(line)
        if heading:
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif image:
            blocks.append(embedded_image(image.group("alt"), directory / image.group("file")))
        elif line.startswith("**WARNING"):
            blocks.append(f'<p class="warning">{inline(line)}</p>')
        elif line.strip():
            blocks.append(f"<p>{inline(line)}</p>")
        index += 1
    title = "Robustness report"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(blocks)
        + "\n</body></html>\n"
    )


def write_html(markdown_path: Path, path: Path) -> Path:
    """Writes the page of the results.md at ``markdown_path`` (figures beside it) to ``path``."""
    path.write_text(render(markdown_path.read_text(), markdown_path.parent))
    return path
