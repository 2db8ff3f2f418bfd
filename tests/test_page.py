"""The self-contained HTML pages (core/page.py) and the pages of ``audiopg synth/analyze/ablate --html``.

Every image and sound must sit in the page as a ``data:`` URI and decode to what the command wrote; nothing may
point outside the page.  The browser test (tests/test_page_browser.py) loads a synth page in Chromium.
"""
from __future__ import annotations

import base64
import io
import json
import re
import struct
from html.parser import HTMLParser

import numpy as np
import pytest
import soundfile as sf
import torch
from test_analysis import _tiny_checkpoint

from audiopg.analysis.report import write_report_page
from audiopg.cli.main import main
from audiopg.core.page import (
    Page,
    data_uri,
    format_value,
    markdown_html,
    markdown_images,
)
from audiopg.experiments.ablate import write_summary

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Tags(HTMLParser):
    """Every start tag as (name, attributes), and the text of every <td>/<th>/<h*> in order."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th", "h1", "h2", "h3"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th", "h1", "h2", "h3") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def all(self, name: str) -> list[dict]:
        return [a for t, a in self.tags if t == name]


def decode(uri: str) -> tuple[str, bytes]:
    """(mime, bytes) of a base64 data URI."""
    m = re.fullmatch(r"data:([\w/+.-]+);base64,([A-Za-z0-9+/=]*)", uri)
    assert m, uri[:60]
    return m.group(1), base64.b64decode(m.group(2))


def assert_self_contained(text: str) -> Tags:
    """Every src/href/srcset/poster/data attribute is a data: URI; no URL, no script, no stylesheet link."""
    tags = Tags(text)
    for tag, attrs in tags.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for key in ("src", "href", "srcset", "poster", "data", "action"):
            if key in attrs:
                assert attrs[key].startswith("data:"), (tag, key, attrs[key][:80])
    assert not re.search(r"(https?:|ftp:|file:)//", text)
    assert "url(" not in text  # nothing fetched from the style sheet
    return tags


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- the builder
def test_everything_is_escaped():
    page = Page('<script>alert("t")</script> & co')
    page.heading("a <b>heading</b>")
    page.text("x < y & 'z'")
    page.table([{"<k>": "<v>", "n": 1.23456789}, {"n": float("nan"), "other": [1, [2, 3]]}])
    page.markdown("# <i>md</i>\n\n| a<b | c |\n|---|---:|\n| `<x>` | **<y>** |\n\n![<alt>](none.png)")
    page.preformatted('{"k": "</pre><script>"}', "<config>")
    text = page.html()
    assert "<script" not in text and "<b>heading" not in text and "<i>md" not in text and "</pre><script>" not in text
    assert "&lt;script&gt;alert(&quot;t&quot;)&lt;/script&gt; &amp; co" in text
    assert "x &lt; y &amp; &#x27;z&#x27;" in text
    assert "<code>&lt;x&gt;</code>" in text and "<strong>&lt;y&gt;</strong>" in text
    assert '<span class="missing">[missing figure: none.png]</span>' in text
    tags = assert_self_contained(text)
    assert tags.cells[:1] == ['<script>alert("t")</script> & co']
    assert ["<k>", "n", "other", "<v>", "1.235", "–", "–", "–", "1, [2, 3]"] == tags.cells[2:11]


def test_format_value():
    assert [format_value(v) for v in (0.000123456, 3, True, None, float("inf"), "s", [0.5, None], [[1], []],
                                      {"a": 1})] == ["0.0001235", "3", "true", "–", "–", "s", "0.5, –", "[1], []",
                                                     '{"a": 1}']


def test_markdown_subset():
    png = b"\x89PNG\r\n\x1a\nfake"
    text = markdown_html(
        "## Title *with* `code`\n\nA paragraph\ncontinued, with a [link](https://example.com) and 45°*; 50°*.\n\n"
        "| a | b | c |\n|---|---:|:---:|\n| 1 | 2 | 3 |\n| *i* | **b** | ![fig](f.png) |\n\n"
        "- one ![inline](f.png)\n  - nested\n- two\n\n*all italic.*\n\nLayer *i* = block *i* (**k**).", {"f.png": png})
    assert "<h2>Title <em>with</em> <code>code</code></h2>" in text
    assert "<p>A paragraph continued, with a link and 45°*; 50°*.</p>" in text  # stars that open nothing stay
    assert "example.com" not in text
    assert '<td class="num">2</td><td class="mid">3</td>' in text
    assert "<td><em>i</em></td>" in text and '<td class="num"><strong>b</strong></td>' in text
    assert text.count(f'src="{data_uri(png, "image/png")}"') == 2
    assert re.search(r"<ul>\s*<li>one <img[^>]*>\s*<ul>\s*<li>nested\s*</li>\s*</ul>\s*</li>\s*<li>two\s*</li>\s*"
                     r"</ul>", text), text
    assert "<p><em>all italic.</em></p>" in text
    assert text.endswith("<p>Layer <em>i</em> = block <em>i</em> (<strong>k</strong>).</p>")
    assert_self_contained(text)


def test_page_from_markdown_takes_the_title_and_writes_atomically(tmp_path):
    page = Page.from_markdown("# Report: `run`\n\nbody\n")
    assert page.title == "Report: run"
    path = page.write(tmp_path / "sub" / "index.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<title>Report: run</title>" in text and "<p>body</p>" in text
    assert text.count("<h1>") == 1
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["index.html"]  # no temp file left


# ----------------------------------------------------------------------------- audiopg synth --html
def test_synth_page_has_a_player_a_spectrogram_and_the_factors_of_every_clip(tmp_path):
    out = tmp_path / "world"
    assert main(["synth", "--preset", "rich", "--n", "3", "--seconds", "0.5", "--seed", "1", "--out", str(out),
                 "--html"]) == 0
    text = (out / "index.html").read_text()
    tags = assert_self_contained(text)
    records = [json.loads(line) for line in (out / "factors.jsonl").read_text().splitlines()]
    overview = Tags(text.split('<div class="clips">')[0]).cells[1:]  # after the title
    assert overview[:2] == ["clip", "source"]
    assert [overview[overview.index(r["file"]) + 1] for r in records] == [r["source"] for r in records]
    cards = text.split('<div class="clip">')[1:]
    assert len(cards) == 3 and len(tags.all("audio")) == 3 and len(tags.all("img")) == 3
    for card, rec in zip(cards, records):
        card_tags = Tags(card)
        (audio,), (img,) = card_tags.all("audio"), card_tags.all("img")
        mime, sound = decode(audio["src"])
        wave, sr = sf.read(io.BytesIO(sound), dtype="float32")
        ref, ref_sr = sf.read(out / rec["file"], dtype="float32")
        assert mime == "audio/flac" and sr == ref_sr == 16000 and "controls" in audio
        np.testing.assert_allclose(wave, ref, atol=1 / 32768 + 1e-7)  # the clip itself, at 16 bits
        mime, png = decode(img["src"])
        assert mime == "image/png" and png_size(png) == (320, 120)
        assert card_tags.cells[0] == rec["file"]
        shown = dict(zip(card_tags.cells[3::2], card_tags.cells[4::2]))  # after the name and the table's head
        assert list(shown) == [k for k in rec if k != "file"]
        for key, value in rec.items():
            if key != "file":
                assert shown[key] == format_value(value), key
    config = json.loads((out / "world.json").read_text())
    assert json.dumps(config["sources"]["voice"], indent=2).splitlines()[1].strip() in text.replace("&quot;", '"')


def test_synth_without_html_writes_no_page(tmp_path):
    assert main(["synth", "--n", "1", "--seconds", "0.5", "--out", str(tmp_path / "w")]) == 0
    assert not (tmp_path / "w" / "index.html").exists()


# ----------------------------------------------------------------------------- audiopg analyze --html
def test_report_page_embeds_every_figure_and_table(tmp_path):
    png = tmp_path / "decoding.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=20)
    png.write_bytes(buf.getvalue())
    (tmp_path / "report.md").write_text("# Encoder analysis: `x`\n\n| factor | r2 |\n|---|---:|\n| f0 | 0.9 |\n\n"
                                        "![decoding](decoding.png)\n\n- gone: ![g](gone.png)\n")
    text = write_report_page(tmp_path).read_text()
    tags = assert_self_contained(text)
    assert [decode(a["src"])[1] for a in tags.all("img")] == [png.read_bytes()]
    assert tags.cells == ["Encoder analysis: x", "factor", "r2", "f0", "0.9"]
    assert "[missing figure: gone.png]" in text and not tags.all("audio")
    (tmp_path / "other.png").write_bytes(b"not named by the report")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"x")
    assert markdown_images("![a](decoding.png) ![b](sub/x.png) ![c](../x.png) ![d](gone.png) ![a](decoding.png)",
                           tmp_path) == {"decoding.png": png.read_bytes()}


def test_analyze_html_page(tmp_path):
    ckpt, out = tmp_path / "run", tmp_path / "analysis"
    _tiny_checkpoint(ckpt)
    assert main(["analyze", "--checkpoint", str(ckpt), "--out", str(out), "--clips", "16", "--bases", "2",
                 "--points", "3", "--f0-points", "3", "--folds", "2", "--permutations", "0", "--mi-units", "4",
                 "--no-baseline", "--no-real", "--html"]) == 0
    text = (out / "index.html").read_text()
    tags = assert_self_contained(text)
    figures = {p.name: p.read_bytes() for p in out.glob("*.png")}  # every figure is named in report.md
    embedded = [decode(a["src"])[1] for a in tags.all("img")]
    assert len(figures) >= 5 and all(data in embedded for data in figures.values())
    report = (out / "report.md").read_text()
    assert text.count("<table>") == report.count("\n|---") + 4  # the report's tables and one per probe clip
    assert len(tags.all("audio")) == 4 and "random set, clip 3" in text and "log2_f0" in text
    for a in tags.all("audio"):
        wave, sr = sf.read(io.BytesIO(decode(a["src"])[1]))
        assert sr == 16000 and len(wave) == int(0.48 * 16000)


# ----------------------------------------------------------------------------- audiopg ablate --html
def _summary() -> dict:
    res = {"mean": 0.5, "std": 0.01, "n_seeds": 1, "seeds": [0.5]}
    return {
        "settings": {"variants": {"paper": {"description": "world preset paper"},
                                  "rich": {"description": "world preset rich"}},
                     "seeds": [0], "minutes": None, "steps": 2, "model_preset": "tiny", "overrides": [],
                     "data_root": "data", "probe": {"layer": -1, "pool": "mean"}},
        "tasks": {"fsdd-own": {"num_items": 10, "data": "data/fsdd", "protocol": "own split", "notes": []},
                  "esc50": {"skipped": "no data"}},
        "results": {"paper": {"fsdd-own": res}, "rich": {"fsdd-own": {**res, "mean": 0.6}}},
        "handcrafted": {"fsdd-own": {"mean": 0.4, "std": 0.02}},
        "steps": {"paper": 2, "rich": 2},
        "differences": [{"a": "rich", "b": "paper", "label": "`rich` − `paper`",
                         "tasks": {"fsdd-own": {"mean": 0.1, "std": 0.0, "n_seeds": 1}}}],
        "complete": True,
    }


@pytest.mark.parametrize("html", [False, True])
def test_ablation_page_has_the_table_and_the_figure(tmp_path, html):
    write_summary(tmp_path, _summary(), html=html)
    assert (tmp_path / "index.html").exists() == html
    if not html:
        return
    text = (tmp_path / "index.html").read_text()
    tags = assert_self_contained(text)
    assert [decode(a["src"])[1] for a in tags.all("img")] == [(tmp_path / "ablation.png").read_bytes()]
    assert text.count("<table>") == 2  # results and what each part buys
    cells = tags.cells
    assert cells[0] == "World ablation"
    assert cells[cells.index("variant"):cells.index("variant") + 9] == [
        "variant", "fsdd-own (%)", "steps", "paper", "50.0 ± 1.0", "2", "rich", "60.0 ± 1.0", "2"]
    assert "rich − paper" in cells
