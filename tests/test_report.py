"""The HTML report: hostile dataset text stays text (in the page, in attributes and in the plotly JSON), nothing
points outside the file, and exports round-trip with their provenance."""

from __future__ import annotations

import html as html_lib
import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from tiviz.errors import TableError
from tiviz.report import export_table, report_html, select, write_report
from tiviz.table import PROVENANCE_KEY, read_table

HOSTILE = {
    "id": "x</script><script>alert(1)</script>",
    "prompt": "<img src=x onerror=alert(1)> and <a href=\"javascript:alert(3)\">click</a>",
    "chosen": "</script><svg onload=alert(1)> <a href='javascript:alert(2)'>go",
    "rejected": "<b>unclosed <i <!-- <script>",
    "rationale_chosen": ["<svg onload"],
    "rationale_rejected": ["<b>"],
}


@pytest.fixture(scope="module")
def tables():
    from tiviz.attribution import attribute
    from tiviz.data import load_pairs
    from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer

    tok = tiny_tokenizer()
    pairs = load_pairs([tiny_pairs()[1], HOSTILE])
    data = {"file": "data/<b>bold</b>.jsonl", "sha256": "ab" * 32, "n_pairs": 2}
    before = attribute(tiny_model(seed=0), pairs, "gradient,attention,grad_x_input", tokenizer=tok, data_info=data)
    after = attribute(tiny_model(seed=1), pairs, "gradient,attention,grad_x_input", tokenizer=tok, data_info=data)
    return before, after


@pytest.fixture(scope="module")
def page(tables):
    before, after = tables
    scores = pd.DataFrame([{"method": "gradient", "auprc": 0.5, "auprc_random": 0.3, "sufficiency": 1.0,
                            "sufficiency_random": 2.0, "n_sequences": 4}])
    return report_html(before, after=after, scores=scores, title="<script>alert('title')</script>")


def split_bundle(html: str) -> tuple[str, str]:
    """(the page without the plotly.js bundle, the bundle)."""
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert html.count(bundle) == 1  # embedded once, inline
    return html.replace(bundle, ""), bundle


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag == "script":
            self._in = dict(attrs)
            self.scripts.append((self._in, ""))

    def handle_data(self, data):
        if self._in is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None


def parse(html: str) -> Tags:
    t = Tags()
    t.feed(html)
    return t


def test_hostile_text_cannot_open_or_close_elements(page):
    rest, _ = split_bundle(page)
    n = int(re.search(r'<meta name="tiviz-figures" content="(\d+)">', page).group(1))
    # script elements: the bundle, one JSON block per figure, the renderer; the dataset added none
    assert page.count("<script") == page.count("</script>") == n + 2
    for raw in ("<img", "<svg", "<b>", "<i ", "<!--", "alert(1)</script>", "onerror=alert(1)>"):
        assert raw not in rest, raw
    tags = parse(page)
    assert [t for t, _ in tags.tags if t in ("img", "svg", "b", "i", "iframe", "object")] == []
    assert all(dict(a).get("href", "").startswith("#") for t, a in tags.tags if t == "a")  # only the page's nav
    for tag, attrs in tags.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)  # no event handler anywhere
            assert not (value or "").strip().lower().startswith("javascript:"), (tag, name, value)
    # the hostile strings are in the page as visible text (the shading splits them into token spans)
    main = page.split("<main>")[1].split("</main>")[0]
    visible = html_lib.unescape(re.sub(r"<[^>]*>", "", main))
    assert HOSTILE["chosen"] in visible and HOSTILE["rejected"] in visible and HOSTILE["id"] in visible
    assert "<title>&lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt;</title>" in page


def test_plotly_json_is_safe_inside_script_and_carries_escaped_labels(page):
    tags = parse(page)
    blocks = [text for attrs, text in tags.scripts if attrs.get("type") == "application/json"]
    assert blocks
    labels = []
    for text in blocks:
        assert "<" not in text and ">" not in text and "&" not in text  # nothing can end the script element
        spec = json.loads(text)
        assert set(spec) >= {"data", "layout"}
        labels.append(json.dumps(spec, ensure_ascii=False))
    # the hostile pair id reached at least one figure (hover text), escaped by escape_text, not raw
    joined = "\n".join(labels)
    assert "x&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in joined
    assert "</script>" not in joined and "<script>" not in joined


def test_no_external_urls(page):
    rest, _ = split_bundle(page)
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}", rest, re.I)  # not even as text, outside plotly.js
    for _, attrs in parse(page).tags:  # and nothing in the whole page loads or links out
        for name, value in attrs:
            if name in ("src", "href", "action", "xlink:href"):
                assert not re.match(r"\s*(https?:)?//", value or "", re.I), (name, value)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_report_sections_and_provenance(tables, tmp_path):
    before, _ = tables
    path = write_report(before, tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    for section in ("provenance", "overview", "distributions", "pairs"):
        assert f'<section id="{section}">' in html
    assert '<section id="scores">' not in html and '<section id="before-after">' not in html
    assert "data/&lt;b&gt;bold&lt;/b&gt;.jsonl" in html and "ab" * 32 in html
    assert "tiviz-tiny-test-model" in html and "grad_x_input: logprob" in html
    only = report_html(before, methods="attention", pairs="math")
    assert "grad_x_input" not in only.split('<section id="distributions">')[1]
    assert only.count("<h3>math") == 1 and "x&lt;/script&gt;" not in only.split('<section id="pairs">')[1]


def test_report_refuses_mismatched_after(tables):
    before, after = tables
    trimmed = after[after["pair_id"] == "math"]
    trimmed.attrs = after.attrs
    with pytest.raises(TableError, match="cannot compare"):
        report_html(before, after=trimmed)


def test_select_by_pattern_and_method(tables):
    before, _ = tables
    sel = select(before, pairs="ma*", methods=["attention", "gradient"])
    assert set(sel["pair_id"]) == {"math"} and set(sel["method"]) == {"attention", "gradient"}
    assert sel.attrs[PROVENANCE_KEY]["model_id"] == before.attrs[PROVENANCE_KEY]["model_id"]
    with pytest.raises(TableError, match="no pair id matches"):
        select(before, pairs="nothing-*")
    with pytest.raises(TableError, match="method 'tidpo' is not in the table"):
        select(before, methods="tidpo")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_export_round_trip(tables, tmp_path, fmt):
    before, _ = tables
    path = export_table(before, tmp_path / f"sel.{fmt}", pairs=["x*"], methods="grad_x_input")
    back = read_table(path)
    want = select(before, pairs=["x*"], methods="grad_x_input")
    pd.testing.assert_frame_equal(back.reset_index(drop=True), want, check_exact=False, rtol=1e-12)
    prov = back.attrs[PROVENANCE_KEY]
    assert prov["selection"] == {"pairs": ["x*"], "methods": ["grad_x_input"]}
    assert prov["data"]["sha256"] == "ab" * 32
    chosen = back[(back["side"] == "chosen") & back["in_response"]].sort_values("position")
    assert "".join(chosen["text"]) == HOSTILE["chosen"]  # exports keep the raw text


def test_cli_report_html_and_export(tables, tmp_path, capsys):
    from tiviz.cli import main
    from tiviz.table import write_table

    before, after = tables
    write_table(before, tmp_path / "before.parquet")
    write_table(after, tmp_path / "after.parquet")
    assert main(["report", "--table", str(tmp_path / "before.parquet"), "--after", str(tmp_path / "after.parquet"),
                 "--out", str(tmp_path / "report.html"), "--methods", "gradient,attention"]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<section id="before-after">' in html
    assert "grad_x_input" not in html.split('<section id="overview">')[1]  # provenance lists what was computed
    assert main(["report", "--table", str(tmp_path / "before.parquet"), "--out", str(tmp_path / "sel.csv"),
                 "--pairs-filter", "math"]) == 0
    assert set(read_table(tmp_path / "sel.csv")["pair_id"]) == {"math"}
    assert main(["report", "--table", str(tmp_path / "before.parquet"), "--after", str(tmp_path / "after.parquet"),
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "--after or --scores" in capsys.readouterr().err
