"""The diff view (`tiviz.viz.diff_tokens_html`): the two responses aligned stretch by stretch, shared ones
dimmed, differing ones outlined, text escaped, hidden rows left out; and the report carries it."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tiviz.aggregate import aggregate_words, template_tokens
from tiviz.report import report_html
from tiviz.table import validate
from tiviz.viz import diff_tokens_html


def _table(chosen: list[str], rejected: list[str]) -> pd.DataFrame:
    rows, ids = [], {}  # a distinct id per distinct piece (hash() % 1000 could collide, and varies per process)
    for side, pieces in (("chosen", chosen), ("rejected", rejected)):
        at = 0
        for pos, piece in enumerate([*pieces, "<|im_end|>"]):
            text = "" if piece == "<|im_end|>" else piece
            rows.append({"pair_id": "p", "side": side, "position": pos, "token_id": ids.setdefault(piece, len(ids)),
                         "token": piece, "text": text, "char_start": at, "char_end": at + len(text),
                         "in_response": True, "method": "gradient", "score": float(pos + 1), "weight": np.nan,
                         "target_value": np.nan, "convergence_delta": np.nan})
            at += len(text)
    df = pd.DataFrame(rows)
    df["weight"] = df["score"] / df.groupby("side")["score"].transform("sum")
    return validate(df)


def _segments(html: str) -> list[tuple[str, str, str]]:
    """(kind, chosen text, rejected text) per stretch, read back from the HTML."""
    def text(s: str) -> str:
        return "".join(re.findall(r'data-tip="[^"]*">([^<]*)</span>', s))

    out = []
    for chunk in html.split('<span class="diff-seg diff-')[1:]:
        kind = chunk.split('"', 1)[0]
        if kind == "labels":
            continue
        chosen, rejected = chunk.split('<span class="diff-side diff-rejected">')
        out.append((kind, text(chosen), text(rejected)))
    return out


def test_stretches_are_aligned_dimmed_and_outlined():
    df = _table(["The", " capital", " is", " Paris", "."], ["The", " capital", " is", " Rome", "."])
    html = diff_tokens_html(df, with_style=False)
    assert _segments(html) == [("same", "The capital is", "The capital is"), ("differ", " Paris", " Rome"),
                               ("same", ".&lt;|im_end|&gt;", ".&lt;|im_end|&gt;")]
    assert "background:" in html  # the shading stays on every token


def test_text_is_escaped_and_hidden_rows_left_out():
    df = _table(["<script>x</script>", " ok"], ["<b>", " ok"])
    html = diff_tokens_html(df, with_style=False, hide=template_tokens(df))
    assert "<script>" not in html and "<b>" not in html and "&lt;script&gt;" in html
    assert "im_end" not in html.split('data-tip="')[-1]  # EOS hidden from the view
    assert [k for k, _, _ in _segments(html)] == ["differ", "same"]
    with pytest.raises(ValueError, match="one pair and one method"):
        diff_tokens_html(pd.concat([df, df.assign(method="attention")]))


def test_word_level_tables_align_by_word():
    df = _table(["One", " cent", "imet", "re"], ["One", " cent", "ury"])
    words = aggregate_words(df)
    segs = _segments(diff_tokens_html(words, with_style=False))
    assert segs[0] == ("same", "One", "One") and segs[1] == ("differ", " centimetre", " century")


def test_report_shows_the_diff_view_per_pair():
    df = _table(["The", " capital", " is", " Paris", "."], ["The", " capital", " is", " Rome", "."])
    html = report_html(df)
    assert html.count('<div class="tiviz-diff"') == 1 and "differing ones outlined" in html
    assert 'class="diff-seg diff-differ"' in report_html(df, aggregate="word")
