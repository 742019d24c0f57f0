"""tiviz.viz: colours, token shading HTML (escaped, text-preserving) and figures, on hand-made tables
with hand-computed answers, and on a real attribution of the tiny model."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest
from tabletools import side_table

from tiviz import analysis, viz
from tiviz.errors import TableError

HOSTILE = ["<script>alert(1)</script>", " <img src=x onerror=alert(2)>", ' "quoted" & \'single\'', "\n**md**"]


def spans(fragment: str) -> list[tuple[str, str, str]]:
    """(class, data-tip, inner text) of every token span, unescaped."""
    found = re.findall(r'<span class="([^"]*)" style="[^"]*" data-tip="([^"]*)">([^<]*)</span>', fragment)
    return [(c, html.unescape(t), html.unescape(x)) for c, t, x in found]


# ---------------------------------------------------------------------------------------------- colours


def test_color_for_hits_the_stops():
    assert viz.color_for(0.0, 2.0, "diverging") == "rgb(247,247,247)"
    assert viz.color_for(2.0, 2.0, "diverging") == "rgb(178,24,43)"
    assert viz.color_for(-2.0, 2.0, "diverging") == "rgb(33,102,172)"
    assert viz.color_for(-9.0, 2.0, "diverging") == "rgb(33,102,172)"  # clipped
    assert viz.color_for(1.0, 2.0, "diverging") == "rgb(239,138,98)"  # the 0.75 stop
    assert viz.color_for(0.0, 1.0, "sequential") == "rgb(255,255,255)"
    assert viz.color_for(0.5, 1.0, "sequential") == "rgb(253,187,132)"
    # halfway between the 0 and 0.5 stops of the sequential scale: the mean of their channels, rounded
    assert viz.color_for(0.25, 1.0, "sequential") == "rgb(254,221,194)"  # (255+132)/2 = 193.5 rounds to 194
    assert viz.color_for(float("nan"), 1.0, "sequential") == "transparent"
    assert viz.color_for(3.0, 0.0, "sequential") == "rgb(255,255,255)"  # no range: no colour


# ---------------------------------------------------------------------------------------------- HTML


def test_shaded_tokens_escape_hostile_text_and_keep_it_verbatim():
    texts = [*HOSTILE, ""]
    df = side_table(texts, [0.1, -0.4, 0.2, 0.3, 0.05])
    out = viz.shaded_tokens_html(df, title="<b>title</b>")
    assert "<script" not in out.lower() and "<img" not in out.lower() and "<b>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "&lt;b&gt;title&lt;/b&gt;" in out
    got = spans(out)
    assert len(got) == len(texts)  # response tokens only: one span each
    assert "".join(x for c, _, x in got[:-1]) == "".join(HOSTILE)  # the text comes back exactly
    assert got[-1][0] == "tok tok-special" and got[-1][2] == "</s>"  # EOS shows its piece


def test_shaded_tokens_rank_and_colour_follow_the_scores():
    df = side_table(["a", "b", "c"], [0.1, -0.4, 0.2])
    out = viz.shaded_tokens_html(df)  # grad_x_input is signed: diverging, vmax = 0.4
    tips = [t for _, t, _ in spans(out)]
    assert "rank 1 of 3" in tips[1] and "rank 2 of 3" in tips[2] and "rank 3 of 3" in tips[0]
    styles = re.findall(r'style="background:([^;"]*)', out)
    assert styles[1] == viz.color_for(-0.4, 0.4, "diverging") == "rgb(33,102,172)"
    assert styles[2] == viz.color_for(0.2, 0.4, "diverging")


def test_shaded_tokens_scale_from_the_method():
    df = side_table(["a", "b"], [0.1, 0.3], method="gradient")
    seq = viz.shaded_tokens_html(df)
    assert re.findall(r'style="background:([^;"]*)', seq)[1] == "rgb(215,48,31)"  # sequential top stop
    df_signed = side_table(["a", "b"], [0.1, 0.3], method="grad_x_input")
    div = viz.shaded_tokens_html(df_signed)
    assert re.findall(r'style="background:([^;"]*)', div)[1] == "rgb(178,24,43)"  # diverging top stop


def test_shaded_tokens_vmax_ignores_textless_tokens_and_can_be_shared():
    df = side_table(["a", "b", ""], [0.1, 0.2, 5.0], method="gradient")
    assert viz.shading_range(df, "score") == pytest.approx(0.2)
    out = viz.shaded_tokens_html(df)
    assert re.findall(r'style="background:([^;"]*)', out)[1] == "rgb(215,48,31)"  # "b" is full colour
    shared = viz.shaded_tokens_html(df, vmax=0.4)
    assert re.findall(r'style="background:([^;"]*)', shared)[1] == viz.color_for(0.2, 0.4, "sequential")


def test_shaded_tokens_needs_one_sequence():
    df = pd.concat([side_table(["a"], [1.0]), side_table(["a"], [1.0], side="rejected")])
    with pytest.raises(TableError, match="exactly one"):
        viz.shaded_tokens_html(df)


def test_plain_text_and_legend_escape():
    out = viz.plain_text_html(HOSTILE[0] + HOSTILE[1], title=HOSTILE[0])
    assert "<script" not in out and "<img" not in out
    leg = viz.legend_html(0.0, 2.0, scale="diverging", label="<script>x</script>", clipped=True)
    assert "<script" not in leg and "full colour" in leg
    assert re.findall(r"<span>([^<]*)</span>", leg) == ["-2", "0", "2"]


def test_shaded_tokens_rebuild_real_responses(tok, pairs, model):
    """On the tiny model (byte tokens, so é and the emoji are split over several tokens) the shaded text of
    every pair and side is exactly the response text."""
    from tiviz.attribution import attribute

    df = attribute(model, pairs, ["grad_x_input"], tokenizer=tok)
    for p in pairs:
        for side in ("chosen", "rejected"):
            rows = df[(df.pair_id == p.id) & (df.side == side)]
            got = spans(viz.shaded_tokens_html(rows))
            assert "".join(x for c, _, x in got if "tok-special" not in c) == p.response_text(side)
            assert len(got) == int(rows.in_response.sum())


# ---------------------------------------------------------------------------------------------- figures


def _dataset():
    parts = []
    for pid in ("p1", "p2"):
        for side in ("chosen", "rejected"):
            for method in ("gradient", "<script>m</script>"):
                parts.append(side_table(list("abcd"), [1.0, 2.0, 3.0, 4.0], method=method, side=side,
                                        pair_id=pid))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("kind", ["histogram", "box", "violin", "ecdf"])
def test_distribution_figure_kinds_escape_labels(kind):
    fig = viz.distribution_figure(_dataset(), kind)
    js = fig.to_json()
    assert "<script" not in js and "&lt;script&gt;" in js
    assert {t.name for t in fig.data} == {"chosen", "rejected"}
    if kind in ("histogram", "ecdf"):
        assert len(fig.data) == 4  # 2 methods x 2 sides
    if kind == "ecdf":
        ys = fig.data[0].y
        assert ys[-1] == pytest.approx(1.0) and np.all(np.diff(ys) > 0)


def test_other_figures_escape_and_carry_the_numbers():
    df = _dataset()
    mat = pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=["gradient", "<img src=x onerror=1>"],
                       columns=["gradient", "<img src=x onerror=1>"])
    heat = viz.rank_correlation_figure(mat)
    assert "<img" not in heat.to_json() and list(heat.data[0].z[0]) == [1.0, 0.5]
    prof = viz.position_profile_figure(df, bins=4)
    assert "<script" not in prof.to_json()
    conc = viz.concentration_figure(analysis.concentration(df))
    assert "<script" not in conc.to_json()
    ba = viz.before_after_figure(df, df, kind="histogram")
    assert len(ba.data) == 4
    scores = pd.DataFrame({"pair_id": ["<script>p</script>"], "margin_before": [-1.0], "margin_after": [2.0]})
    mc = viz.margin_change_figure(scores)
    assert "<script" not in mc.to_json() and list(mc.data[1].y) == [2.0]
    metrics = pd.DataFrame({"step": [1, 2], "loss": [0.7, 0.6]})
    assert list(viz.metrics_figure(metrics, ["loss", "absent"]).data[0].y) == [0.7, 0.6]
    json.loads(heat.to_json())  # serialisable for st.plotly_chart


def test_quality_score_figures_carry_the_numbers_and_escape_method_names():
    scores = pd.DataFrame({"method": ["gradient", "<script>m</script>"], "auprc": [0.9, 0.4],
                           "auprc_random": [0.3, 0.3], "hit_at_k": [1.0, 0.5]})
    fig = viz.scores_figure(scores, ["auprc", "hit_at_k"])
    bars = [t for t in fig.data if t.type == "bar"]
    diamonds = [t for t in fig.data if t.type == "scatter"]
    assert [list(b.y) for b in bars] == [[0.9, 0.4], [1.0, 0.5]]
    assert len(diamonds) == 1 and list(diamonds[0].y) == [0.3, 0.3]  # hit_at_k has no random column here
    assert "<script" not in fig.to_json()

    rows = [{"method": m, "kind": k, "ranking": r, "fraction": q, "change": c}
            for m in ("gradient", "<b>x</b>") for k in ("deletion", "insertion") for r in ("method", "random")
            for q, c in ((0.1, 1.0 if r == "method" else 0.5), (0.5, 2.0))]
    curves = viz.faithfulness_curves_figure(pd.DataFrame(rows))
    # 2 methods x 2 kinds, and one shared random curve per kind (every method's random curve is the same here)
    assert len(curves.data) == 2 * 2 + 2 and "<b>" not in curves.to_json()
    hist = viz.histogram_figure(np.array([1.0, 2.0, 2.0]), "<i>label</i>")
    assert list(hist.data[0].x) == [1.0, 2.0, 2.0] and "<i>" not in hist.to_json()
