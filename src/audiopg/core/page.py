"""One self-contained HTML page from parts: text, tables, markdown, images and audio players.

Every image and sound is embedded as a ``data:`` URI and the style sheet is inline, so ``index.html`` opens
anywhere, offline, with no other file and no script; all text is HTML-escaped.  See docs/pages.md.
"""
from __future__ import annotations

import base64
import html
import json
import math
import mimetypes
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from audiopg.core.io import atomic_write_text

__all__ = ["Page", "data_uri", "markdown_html", "markdown_images"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; } td.mid { text-align: center; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.9em; background: #f6f6f6; }
pre { padding: 0.6em; overflow-x: auto; }
img { max-width: 100%; }
.clips { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1em; }
.clip { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; }
.clip h3 { margin: 0 0 0.4em 0; } .clip audio { width: 100%; } .clip table { width: 100%; }
.missing { color: #a00; }
"""


def data_uri(data: bytes, mime: str) -> str:
    """``data:MIME;base64,...``: a file inside the page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _mime(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _img(data: bytes, mime: str, alt: str) -> str:
    return f'<img src="{data_uri(data, mime)}" alt="{html.escape(alt)}">'


def format_value(value: Any) -> str:
    """A factor or table cell as short text: floats to 4 significant digits, lists joined, dicts as JSON."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value).lower()
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):  # nested lists (one per scene source) in brackets
        return ", ".join(f"[{format_value(v)}]" if isinstance(v, (list, tuple)) else format_value(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value)
    return str(value)


# ----------------------------------------------------------------------------- markdown (the subset our reports use)
_CODE = re.compile(r"(`[^`]+`)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)\s]+\)")
_BOLD = re.compile(r"\*\*([^\s*](?:.*?[^\s*])?)\*\*")
_ITALIC = re.compile(r"(?:(?<=^)|(?<=[\s(]))\*([^\s*](?:[^*]*?[^\s*])?)\*(?!\w)")


def _inline(text: str, images: Mapping[str, bytes]) -> str:
    """Escaped text with `code`, **bold**, *italic*, images (from ``images``, by file name) and links (their
    text only: the page refers to nothing outside itself)."""
    out = []
    for i, part in enumerate(_CODE.split(text)):
        if i % 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        pieces = []
        last = 0
        for m in _IMAGE.finditer(part):
            pieces.append(_emphasis(html.escape(part[last:m.start()])))
            alt, src = m.group(1), m.group(2)
            pieces.append(_img(images[src], _mime(src), alt) if src in images
                          else f'<span class="missing">[missing figure: {html.escape(src)}]</span>')
            last = m.end()
        pieces.append(_emphasis(html.escape(part[last:])))
        out.append("".join(pieces))
    return "".join(out)


def _emphasis(escaped: str) -> str:
    escaped = _LINK.sub(r"\1", escaped)
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    return _ITALIC.sub(r"<em>\1</em>", escaped)


def _cells(line: str) -> list[str]:
    line = line.strip()
    return [c.strip() for c in line.strip("|").split("|")]


def _table_html(lines: list[str], images: Mapping[str, bytes]) -> str:
    head = _cells(lines[0])
    rule = _cells(lines[1]) if len(lines) > 1 and re.fullmatch(r"[\s|:-]+", lines[1]) else None
    align = [("num" if c.endswith(":") and not c.startswith(":") else "mid" if c.startswith(":") and c.endswith(":")
              else "") for c in rule] if rule else []
    body = lines[2:] if rule else lines[1:]
    out = ["<table><thead><tr>" + "".join(f"<th>{_inline(c, images)}</th>" for c in head) + "</tr></thead><tbody>"]
    for line in body:
        out.append("<tr>" + "".join(
            (f'<td class="{align[j]}">' if j < len(align) and align[j] else "<td>") + _inline(c, images) + "</td>"
            for j, c in enumerate(_cells(line))) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def markdown_images(text: str, folder: str | os.PathLike) -> dict[str, bytes]:
    """{name: bytes} of the images ``text`` shows (``![alt](name)``) that are files in ``folder``; only plain
    file names count (nothing outside the folder is read)."""
    names = dict.fromkeys(m.group(2) for m in _IMAGE.finditer(text))
    return {n: (Path(folder) / n).read_bytes() for n in names if Path(n).name == n and (Path(folder) / n).is_file()}


def markdown_html(text: str, images: Mapping[str, bytes] | None = None) -> str:
    """HTML of the markdown our reports write: ``#`` headings, pipe tables, ``-`` lists (nested by two spaces),
    paragraphs, `code`, **bold**, *italic*, ``![alt](file.png)`` (embedded from ``images[file.png]``; a file not
    there shows as missing) and links (text only)."""
    images = images or {}
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2).strip(), images)}</h{n}>")
            i += 1
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table_html(lines[i:j], images))
            i = j
        elif re.match(r"\s*- ", line):
            depth = 0
            while i < len(lines) and (m := re.match(r"(\s*)- (.*)", lines[i])):
                level = len(m.group(1)) // 2 + 1
                if level > depth:
                    out.append("<ul>" * (level - depth))
                elif level < depth:
                    out.append("</li>" + "</ul></li>" * (depth - level))
                else:
                    out.append("</li>")
                out.append(f"<li>{_inline(m.group(2), images)}")
                depth = level
                i += 1
            out.append("</li>" + "</ul></li>" * (depth - 1) + "</ul>")
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not re.match(r"(#{1,6}\s|\s*\||\s*- )", lines[j]):
                j += 1
            out.append(f"<p>{_inline(' '.join(s.strip() for s in lines[i:j]), images)}</p>")
            i = j
    return "\n".join(out)


# ----------------------------------------------------------------------------- the page
class Page:
    """Parts added in order, then :meth:`html` or :meth:`write` (atomically) as one self-contained file."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    @classmethod
    def from_markdown(cls, text: str, images: Mapping[str, bytes] | None = None) -> Page:
        """A report.md as a page: its first ``# `` line is the title (backticks dropped), the rest the body."""
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), 0)
        title = "report"
        if lines and lines[first].startswith("# "):
            title = lines[first][2:].strip().replace("`", "")
            lines = lines[first + 1:]
        page = cls(title)
        page.markdown("\n".join(lines), images)
        return page

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        """A paragraph of plain text."""
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def markdown(self, text: str, images: Mapping[str, bytes] | None = None) -> None:
        """A markdown document (e.g. a report.md) with its figures, see :func:`markdown_html`."""
        self.parts.append(markdown_html(text, images))

    def table(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows of ``{column: value}``; the columns are every key in order of first appearance."""
        self.parts.append(_rows_html(rows))

    def preformatted(self, text: str, summary: str) -> None:
        """Text kept as written (e.g. a config as JSON), folded under ``summary``."""
        self.parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")

    def clips(self, clips: Sequence[Mapping[str, Any]]) -> None:
        """A grid of clip cards, each ``{"name", "audio": bytes, "audio_mime", "spectrogram": PNG bytes,
        "factors": {name: value}}``: the name, a player, the log-mel spectrogram and a table of the factors."""
        cards = []
        for c in clips:
            rows = [{"factor": k, "value": v} for k, v in c["factors"].items()]
            cards.append(f'<div class="clip"><h3>{html.escape(c["name"])}</h3>'
                         + _audio(c["audio"], c.get("audio_mime", "audio/wav"))
                         + _img(c["spectrogram"], "image/png", f"log-mel spectrogram of {c['name']}")
                         + _rows_html(rows) + "</div>")
        self.parts.append('<div class="clips">\n' + "\n".join(cards) + "\n</div>")

    def html(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>\n<body>\n"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.html())


def _audio(data: bytes, mime: str) -> str:
    return f'<audio controls preload="metadata" src="{data_uri(data, mime)}"></audio>'


def _rows_html(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
