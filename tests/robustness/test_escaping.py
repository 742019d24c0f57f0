"""Hostile text reaching HTML: `escape_text` turns every payload into inert text (checked with a real HTML
parser, in an element body and in a quoted attribute), and the report shows dataset text only as text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given

from tiviz.safe_html import escape_text

from .strategies import any_text, fuzz

PAYLOADS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "</script><script>alert(document.cookie)</script>",
    "</div></body><script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "<img src=x onerror=alert(1)//",
    '<svg onload=alert(1)><circle r="1"/></svg>',
    "<svg/onload=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "javascript:alert(1)",
    '<iframe src="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="></iframe>',
    '" onmouseover="alert(1)',
    "' onfocus='alert(1)' autofocus='",
    '"><script>alert(1)</script>',
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<style>*{background:url(javascript:alert(1))}</style>",
    "<!-- unclosed comment",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<div",
    "<img src=x",
    "<b>bold</b> and <i>italic",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;script&#62;alert(1)&#60;/script&#62;",
    "&amp;&quot;&#x27;&#0;&#xD800;",
    "a\x00<script>\x00alert(1)</script>",
    "<scr\x00ipt>alert(1)</scr\x00ipt>",
    "<math><mtext></p><img src=x onerror=alert(1)></mtext></math>",
    "<template><script>alert(1)</script></template>",
    "{{constructor.constructor('alert(1)')()}}",
    "${alert(1)}",
    "\u2028<script>\u2029alert(1)</script>",
    "\ud83d<script>",  # a lone surrogate next to a tag
]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class Collector(HTMLParser):
    """Records every element, attribute, comment and declaration the parser sees, and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.ends: list[str] = []
        self.other: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag):
        self.ends.append(tag)

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.other.append("comment")

    def handle_decl(self, decl):
        self.other.append("decl")

    def unknown_decl(self, data):
        self.other.append("cdata")

    def handle_pi(self, data):
        self.other.append("pi")


def parse(html: str) -> Collector:
    parser = Collector()
    parser.feed(html)
    parser.close()
    return parser


def expected_text(payload: str) -> str:
    """What the page shows: the payload itself, control characters and lone surrogates as U+FFFD."""
    return _CONTROL.sub("\ufffd", payload)


def check_inert(payload: str) -> None:
    escaped = escape_text(payload)
    body = parse(f"<div>{escaped}</div>")
    assert body.tags == [("div", [])] and body.ends == ["div"] and body.other == []
    assert "".join(body.text) == expected_text(payload)
    attr = parse(f'<div title="{escaped}"></div>')
    assert attr.tags == [("div", [("title", expected_text(payload))])] and attr.ends == ["div"]
    assert "<" not in escaped and ">" not in escaped and '"' not in escaped and "'" not in escaped
    escaped.encode("utf-8")  # always writable


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_is_text_only(payload):
    check_inert(payload)


@fuzz(200)
@given(text=any_text)
def test_any_text_is_text_only(text, fuzz_counter):
    fuzz_counter["escaping: escape_text"] += 1
    check_inert(text)


def test_none_and_non_strings():
    assert escape_text(None) == ""
    assert escape_text(3.5) == "3.5"
    assert escape_text(["<b>"]) == "[&#x27;&lt;b&gt;&#x27;]"


# ---------------------------------------------------------------------------------------------- the report


def hostile_table(defused: bool = False):
    """Pairs whose every text field is a payload; `defused` strips the markup characters (the control run)."""
    from tiviz.attribution import attribute
    from tiviz.testing import tiny_model, tiny_tokenizer

    pairs = [
        {"id": '<img src=x onerror=alert("id")>', "prompt": "<script>alert('prompt')</script>",
         "chosen": '</script><svg onload=alert(1)> "quoted" \u2028 & done',
         "rejected": "<a href=\"javascript:alert(2)\">x</a><!-- open", "category": "<b>cat</b>"},
        {"id": "plain", "prompt": "Q?", "chosen": "Fine.", "rejected": "<iframe src=//e.example>"},
    ]
    model_id = '"><script>alert("model")</script>'
    if defused:
        pairs = [{k: re.sub("[<>\"'&]", "_", v) for k, v in p.items()} for p in pairs]
        model_id = "model"
    return attribute(tiny_model(seed=0), pairs, ["gradient", "tidpo"], tokenizer=tiny_tokenizer(),
                     model_id=model_id)


@pytest.fixture(scope="module")
def hostile_page() -> str:
    report = pytest.importorskip("tiviz.report")
    return report.report_html(hostile_table(), title='<script>alert("title")</script>')


def test_report_shows_hostile_dataset_text_only_as_text(hostile_page):
    report = pytest.importorskip("tiviz.report")
    doc = parse(hostile_page)
    control = parse(report.report_html(hostile_table(defused=True), title="title"))
    tags = [t for t, _ in doc.tags]
    # the payloads add no kind of element to the page, and no element, handler or javascript: URL they name
    assert set(tags) <= {t for t, _ in control.tags}
    assert tags.count("script") == [t for t, _ in control.tags].count("script")
    for bad in ("img", "svg", "iframe", "template", "math", "details", "style"):
        assert tags.count(bad) == [t for t, _ in control.tags].count(bad), bad
    for tag, attrs in doc.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert "javascript:" not in (value or "").lower(), (tag, name, value)
            if tag == "a" and name == "href":
                assert (value or "").startswith("#"), value  # only the page's own section links
    scripts = [attrs for t, attrs in doc.tags if t == "script"]
    assert all(dict(a).get("type") == "application/json" or not dict(a).get("src") for a in scripts)
    # every script block was closed by the page itself: as many </script> as <script>
    assert doc.ends.count("script") == len(scripts)
    # the payloads are on the page, as text
    text = "".join(doc.text)
    for piece in ("<script>alert('prompt')</script>", '<img src=x onerror=alert("id")>',
                  '<script>alert("title")</script>'):
        assert piece in text, piece


def test_report_json_blocks_cannot_close_their_script(hostile_page):
    """Figure JSON sits in script blocks: no raw `<` may close them; and plotly draws labels as HTML, so the
    decoded labels must hold the payload escaped (`&lt;img ...`), never as markup."""
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', hostile_page, flags=re.S)
    assert blocks
    labels = []
    for block in blocks:
        assert "<" not in block and ">" not in block and "\u2028" not in block
        labels.append(json.dumps(json.loads(block), ensure_ascii=False))
    joined = "".join(labels)
    assert "&lt;img src=x onerror=alert(&quot;id&quot;)&gt;" in joined  # the hostile id reached the plots
    assert "<img" not in joined and "<svg" not in joined and "<script" not in joined


MARKDOWN_PAYLOADS = [
    "![x](https://evil.example/b.png)", "[verify your account](https://evil.example/)", "<https://evil.example/>",
    "https://evil.example/x", "www.evil.example", "me@evil.example", "**bold** _it_ ~~s~~ `code`", "# heading",
    "> quote", "- item", "1. item", "<img src=x onerror=alert(1)>", ":red[red] :material/search:", "$x^2$",
    "[a]: https://evil.example/ref\n[a]", "line\n\n    code block", "a\\*b", "&lt;b&gt; &amp;", "x|y\n-|-\n1|2",
]


def rendered(markdown: str) -> str:
    md = pytest.importorskip("markdown_it").MarkdownIt("commonmark")
    return md.render(markdown)


@pytest.mark.parametrize("text", MARKDOWN_PAYLOADS)
def test_escape_markdown_renders_as_one_plain_paragraph(text):
    from tiviz.safe_html import escape_markdown

    out = escape_markdown(text)
    page = rendered(out)
    tags = re.findall(r"<\s*(/?\w+)", page)
    assert tags == ["p", "/p"], page
    import html

    shown = html.unescape(page[3:-5]).replace("\u2060", "")
    assert shown == re.sub(r"\r\n|[\r\n]", " ", text)


@fuzz(200)
@given(text=any_text)
def test_escape_markdown_fuzz(text, fuzz_counter):
    from tiviz.safe_html import escape_markdown

    fuzz_counter["escaping: escape_markdown"] += 1
    page = rendered(escape_markdown(text))
    assert set(re.findall(r"<\s*(/?\w+)", page)) <= {"p", "/p"}, page
