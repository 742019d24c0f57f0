"""Pictures of the tidy table: token shading as HTML, and plotly figures (distributions, position profiles,
method agreement, before vs after). Figures only draw: the summaries they show come from `tiviz.analysis`.

Every function reads the tidy table (`tiviz.table.COLUMNS`) or a summary of it. Every piece of text that
comes from the table (token text, pair ids, method names) passes through `tiviz.safe_html.escape_text` before it
reaches HTML, a plotly label or a hover box, so a dataset holding `<script>` shows it as text.

    from tiviz.viz import shaded_tokens_html, legend_html, distribution_figure
    side = df[(df.pair_id == "fact-001") & (df.side == "chosen") & (df.method == "tidpo")]
    html = shaded_tokens_html(side) + legend_html(0.0, side.score.max(), scale="sequential")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from tiviz.analysis import Value, position_profile, table_values, with_relative_position
from tiviz.errors import TableError
from tiviz.safe_html import escape_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

Scale = Literal["diverging", "sequential"]
DistKind = Literal["histogram", "box", "violin", "ecdf"]

# Colour stops (position in [0, 1], RGB). Diverging: blue for negative, near-white at 0, red for positive
# (ColorBrewer RdBu). Sequential: white to deep orange-red (ColorBrewer OrRd), for non-negative scores.
DIVERGING: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (33, 102, 172)), (0.25, (103, 169, 207)), (0.5, (247, 247, 247)),
    (0.75, (239, 138, 98)), (1.0, (178, 24, 43)),
)
SEQUENTIAL: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (255, 255, 255)), (0.5, (253, 187, 132)), (1.0, (215, 48, 31)),
)
SIDE_COLORS = {"chosen": "#1b7837", "rejected": "#762a83"}
VALUE_LABELS = {
    "score": "score",
    "weight": "weight (sums to 1 over the response)",
    "relative_weight": "weight × response length (1 = uniform)",
}

TOKENS_CSS = """
.tiviz-tokens{font-family:ui-sans-serif,system-ui,-apple-system,"Segoe UI",sans-serif;font-size:15px;
  line-height:1.9;white-space:pre-wrap;word-break:break-word;padding:10px 12px;border:1px solid #e3e3e8;
  border-radius:8px;background:#fff;color:#1f1f24}
.tiviz-tokens .tok{position:relative;border-radius:3px;padding:1px 0;cursor:default}
.tiviz-tokens .tok:hover{outline:2px solid #333;z-index:2}
.tiviz-tokens .tok-special{font-size:11px;color:#6b6b76;border:1px dashed #b9b9c3;padding:0 3px;margin:0 1px}
.tiviz-tokens .tok-empty{display:inline-block;width:3px;height:1em;vertical-align:middle}
.tiviz-tokens .tok[data-tip]:hover::after{content:attr(data-tip);position:absolute;left:0;top:100%;
  margin-top:4px;white-space:pre;background:#26262c;color:#fff;font-size:12px;line-height:1.4;
  padding:4px 7px;border-radius:4px;z-index:10;pointer-events:none}
.tiviz-title{font-weight:600;margin:0 0 4px 0;color:#33333a}
.tiviz-legend{font-family:ui-sans-serif,system-ui,sans-serif;font-size:12px;color:#44444c;max-width:420px}
.tiviz-legend .bar{height:12px;border-radius:3px;border:1px solid #d0d0d8}
.tiviz-legend .ticks{display:flex;justify-content:space-between;margin-top:2px}
"""


# ---------------------------------------------------------------------------------------------- colours


def is_signed(method: str, scores: Sequence[float] | np.ndarray | pd.Series | None = None) -> bool:
    """Whether a method's scores can be negative (then a diverging scale is used).

    Known method ids answer from the method registry; an unknown id answers from the data (any negative score).
    """
    from tiviz.attribution.methods import METHODS  # lazy: the registry's package imports torch

    if method in METHODS:
        return METHODS[method].signed
    return bool(scores is not None and (np.asarray(scores, dtype=float) < 0).any())


def color_for(value: float, vmax: float, scale: Scale) -> str:
    """CSS colour of one value: `scale` diverging maps [-vmax, vmax], sequential maps [0, vmax].

    NaN gives transparent (no shading); values past vmax are clipped.
    """
    if value is None or not math.isfinite(value):
        return "transparent"
    rgb = _rgb(_position(value, vmax, scale), DIVERGING if scale == "diverging" else SEQUENTIAL)
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def _position(value: float, vmax: float, scale: Scale) -> float:
    """Where a value sits on the colour bar, in [0, 1]."""
    if not vmax > 0:
        return 0.5 if scale == "diverging" else 0.0
    if scale == "diverging":
        return min(max(0.5 + 0.5 * value / vmax, 0.0), 1.0)
    return min(max(value / vmax, 0.0), 1.0)


def _rgb(t: float, stops: Sequence[tuple[float, tuple[int, int, int]]]) -> tuple[int, int, int]:
    for (t0, c0), (t1, c1) in pairwise(stops):
        if t <= t1:
            f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return (round(c0[0] + f * (c1[0] - c0[0])), round(c0[1] + f * (c1[1] - c0[1])),
                    round(c0[2] + f * (c1[2] - c0[2])))
    return stops[-1][1]


def _dark(value: float, vmax: float, scale: Scale) -> bool:
    """Whether the background is dark enough to need white text."""
    if not math.isfinite(value):
        return False
    t = _position(value, vmax, scale)
    return abs(t - 0.5) > 0.36 if scale == "diverging" else t > 0.72


def shading_range(df: pd.DataFrame, value: Value = "score", *, response_only: bool = True) -> float:
    """The |value| mapped to full colour: the largest over the tokens that own text (response tokens by
    default). Tokens owning no text (EOS, template markers) are left out, since gradient methods often pile
    weight on them and would wash out the rest; past the bar's end they show at full colour. One vmax can be
    shared by both sides, or by before and after, to compare them."""
    rows = df[df["in_response"]] if response_only else df
    texted = rows[rows["text"].fillna("").astype(str) != ""]
    vals = table_values(rows, value).loc[texted.index].abs() if len(texted) else table_values(rows, value).abs()
    vmax = float(vals.max()) if len(vals) and vals.notna().any() else 0.0
    return vmax if math.isfinite(vmax) else 0.0


# ---------------------------------------------------------------------------------------------- HTML


def shaded_tokens_html(
    df_side: pd.DataFrame,
    *,
    value: Value = "score",
    scale: Scale | None = None,
    vmax: float | None = None,
    include_prompt: bool = False,
    title: str | None = None,
    with_style: bool = True,
) -> str:
    """The text of one (pair, side, method), one `<span>` per token, its background coloured by its value.

    Hovering a token shows its text, score, weight and rank (1 = the largest |value| among the shown tokens).
    The final token when it owns no text (EOS) is shown as its piece in a dashed box; a token holding part of
    a character split over several tokens shows as a thin sliver before the token that owns the character.

    Args:
        df_side: the table's rows of exactly one pair_id, side and method.
        value: "score" (the method's raw score, default), "weight" or "relative_weight".
        scale: "diverging" (signed values, centred on 0) or "sequential"; default from the method.
        vmax: the |value| mapped to the strongest colour (larger ones are clipped); default `shading_range`
            of the rows. Pass the same vmax for chosen and rejected to compare them.
        include_prompt: shade the prompt tokens too (default: the response only).
        title: a heading above the text (escaped).
        with_style: prepend the CSS (`TOKENS_CSS`); turn off when the page already has it.
    Returns:
        an HTML fragment; every piece of text in it is escaped.
    """
    _check_one(df_side)
    rows = df_side.sort_values("position")
    if not include_prompt:
        rows = rows[rows["in_response"]]
    method = str(rows["method"].iloc[0]) if len(rows) else ""
    vals = table_values(rows, value).to_numpy(dtype=float)
    if scale is None:
        scale = "diverging" if value == "score" and is_signed(method, vals) else "sequential"
    if vmax is None:
        vmax = shading_range(rows, value, response_only=not include_prompt)
    ranks = _ranks(vals)
    n = int(np.isfinite(vals).sum())
    parts = []
    last = len(rows) - 1
    for i, ((_, row), v, rank) in enumerate(zip(rows.iterrows(), vals, ranks, strict=True)):
        text = "" if pd.isna(row["text"]) else str(row["text"])
        piece = str(row["token"])
        tip = f"{text or piece!r}  position {int(row['position'])}\nscore {_fmt(row['score'])}"
        if rank:
            tip += f"   weight {_fmt(row['weight'])}\nrank {rank} of {n}"
        if text:
            classes, shown = "tok", text
        elif i == last:  # EOS: owns no text but carries weight, so show its piece
            classes, shown = "tok tok-special", piece
        else:  # a piece of a character split over several tokens: the next token owns the text
            classes, shown = "tok tok-empty", ""
        style = f"background:{color_for(v, vmax, scale)}"
        if _dark(v, vmax, scale):
            style += ";color:#fff"
        parts.append(f'<span class="{classes}" style="{style}" data-tip="{escape_text(tip)}">'
                     f"{escape_text(shown)}</span>")
    head = f'<div class="tiviz-title">{escape_text(title)}</div>' if title else ""
    css = f"<style>{TOKENS_CSS}</style>" if with_style else ""
    return f'{css}{head}<div class="tiviz-tokens" data-method="{escape_text(method)}">{"".join(parts)}</div>'


def plain_text_html(text: str, *, title: str | None = None, with_style: bool = True) -> str:
    """Dataset text in the same box as the shaded tokens, unshaded (for the prompt); escaped."""
    head = f'<div class="tiviz-title">{escape_text(title)}</div>' if title else ""
    css = f"<style>{TOKENS_CSS}</style>" if with_style else ""
    return f'{css}{head}<div class="tiviz-tokens">{escape_text(text)}</div>'


def legend_html(vmin: float, vmax: float, *, scale: Scale, label: str = "score", clipped: bool = False,
                with_style: bool = True) -> str:
    """A colour bar for the shading: diverging from -vmax to vmax, sequential from vmin (usually 0) to vmax.

    Args:
        clipped: some values lie past the bar's end (they show at full colour); the legend says so.
    """
    stops = DIVERGING if scale == "diverging" else SEQUENTIAL
    gradient = ", ".join(f"rgb{c} {t * 100:.0f}%" for t, c in stops)
    lo = -abs(vmax) if scale == "diverging" else vmin
    mid = 0.0 if scale == "diverging" else (vmin + vmax) / 2
    what = "signed: blue lowers, red raises" if scale == "diverging" else "non-negative: darker = larger"
    if clipped:
        what += "; tokens past the ends show at full colour"
    css = f"<style>{TOKENS_CSS}</style>" if with_style else ""
    return (f'{css}<div class="tiviz-legend"><div>{escape_text(label)} ({escape_text(what)})</div>'
            f'<div class="bar" style="background:linear-gradient(to right, {gradient})"></div>'
            f'<div class="ticks"><span>{_fmt(lo)}</span><span>{_fmt(mid)}</span><span>{_fmt(vmax)}</span></div>'
            "</div>")


# ---------------------------------------------------------------------------------------------- figures


def distribution_figure(df: pd.DataFrame, kind: DistKind = "histogram", value: Value = "relative_weight",
                        *, bins: int = 40) -> go.Figure:
    """Distribution of response-token values per method (one panel each) and side (one colour each).

    Histograms and ECDFs show each panel up to its 99th percentile (plus 10 %), so one outlier (often EOS)
    does not squeeze the rest into one bar; box and violin plots show everything.

    Args:
        kind: "histogram" (density), "box", "violin" or "ecdf".
        value: "relative_weight" (weight × T, default: comparable across lengths), "weight" or "score".
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = with_relative_position(df)
    rows["_v"] = table_values(rows, value)
    methods = list(dict.fromkeys(rows["method"]))
    label = VALUE_LABELS[value]
    if kind in ("box", "violin"):
        fig = go.Figure()
        for side in ("chosen", "rejected"):
            s = rows[rows["side"] == side]
            x = [escape_text(m) for m in s["method"]]
            common = {"x": x, "y": s["_v"], "name": side, "legendgroup": side,
                      "marker_color": SIDE_COLORS[side], "hoverinfo": "y+name"}
            if kind == "box":
                fig.add_trace(go.Box(**common, boxpoints="outliers"))
            else:
                fig.add_trace(go.Violin(**common, box_visible=True, meanline_visible=True, points=False,
                                        scalemode="width", spanmode="hard"))
        fig.update_layout(boxmode="group", violinmode="group", yaxis_title=escape_text(label))
        return style(fig, height=420)
    n = max(len(methods), 1)
    cols = min(n, 2)
    nrows = math.ceil(n / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[escape_text(m) for m in methods],
                        horizontal_spacing=0.08, vertical_spacing=0.16 if nrows > 1 else 0.1)
    for i, m in enumerate(methods):
        r, c = i // cols + 1, i % cols + 1
        view = _view_range(rows[rows["method"] == m]["_v"].to_numpy(dtype=float))
        for side in ("chosen", "rejected"):
            v = rows[(rows["method"] == m) & (rows["side"] == side)]["_v"].dropna().to_numpy()
            if kind == "histogram":
                xbins = {"start": view[0], "end": view[1], "size": (view[1] - view[0]) / bins} if view else None
                trace = go.Histogram(x=v, name=side, legendgroup=side, showlegend=i == 0, opacity=0.6,
                                     marker_color=SIDE_COLORS[side], nbinsx=bins, xbins=xbins,
                                     histnorm="probability density")
            elif kind == "ecdf":
                xs = np.sort(v)
                ys = np.arange(1, len(xs) + 1) / max(len(xs), 1)
                trace = go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name=side, legendgroup=side,
                                   showlegend=i == 0, line_color=SIDE_COLORS[side])
            else:
                raise ValueError(f"unknown kind {kind!r}; allowed: histogram, box, violin, ecdf")
            fig.add_trace(trace, row=r, col=c)
        fig.update_xaxes(title_text=escape_text(label) if r == nrows else None, range=view, row=r, col=c)
    fig.update_layout(barmode="overlay")
    return style(fig, height=260 * nrows + 80)


def concentration_figure(summary: pd.DataFrame) -> go.Figure:
    """Box plots of the weight entropy (1 = uniform) and the top-10 % share, per method and side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["weight entropy (1 = uniform)",
                                                        "mass in the top 10 % of tokens"])
    for col, metric in enumerate(("entropy", "top10_share"), start=1):
        for side in ("chosen", "rejected"):
            s = summary[summary["side"] == side]
            fig.add_trace(go.Box(x=[escape_text(m) for m in s["method"]], y=s[metric], name=side,
                                 legendgroup=side, showlegend=col == 1, marker_color=SIDE_COLORS[side],
                                 text=[escape_text(p) for p in s["pair_id"]], hovertemplate="%{text}: %{y:.3f}"),
                          row=1, col=col)
    fig.update_layout(boxmode="group")
    return style(fig, height=380)


def position_profile_figure(df: pd.DataFrame, bins: int = 10) -> go.Figure:
    """Mean relative weight by relative position in the response, a line per method, solid chosen, dashed
    rejected. A flat line at 1 is uniform; TI-DPO's Gaussian prior shows as a bump in the middle."""
    import plotly.graph_objects as go

    prof = position_profile(df, bins)
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    for i, m in enumerate(dict.fromkeys(prof["method"])):
        for side, dash in (("chosen", "solid"), ("rejected", "dash")):
            p = prof[(prof["method"] == m) & (prof["side"] == side)]
            name = f"{escape_text(m)} · {side}"
            fig.add_trace(go.Scatter(x=p["center"], y=p["mean_weight"], mode="lines+markers", name=name,
                                     line={"color": palette[i % len(palette)], "dash": dash},
                                     customdata=p["n"], hovertemplate=name + "<br>position %{x:.2f}"
                                     "<br>mean weight × T %{y:.3f}<br>%{customdata} tokens<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#999", annotation_text="uniform")
    fig.update_layout(xaxis_title="relative position in the response (0 = first token, 1 = last)",
                      yaxis_title="mean weight × response length", xaxis_range=[0, 1])
    return style(fig, height=420)


def rank_correlation_figure(matrix: pd.DataFrame, title: str = "Spearman rank correlation") -> go.Figure:
    """Heatmap of a method × method correlation matrix (`tiviz.compare.agreement_matrix`), -1 blue to 1 red."""
    import plotly.graph_objects as go

    labels = [escape_text(m) for m in matrix.index]
    z = matrix.to_numpy(dtype=float)
    text = [[("" if not math.isfinite(v) else f"{v:.2f}") for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True, text=text,
        texttemplate="%{text}", hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        colorbar={"title": {"text": "ρ"}}))
    fig.update_layout(title=escape_text(title), yaxis_autorange="reversed")
    return style(fig, height=140 + 60 * len(labels))


def before_after_figure(before: pd.DataFrame, after: pd.DataFrame, kind: Literal["histogram", "ecdf"] = "ecdf",
                        value: Value = "relative_weight", labels: tuple[str, str] = ("before", "after")) -> go.Figure:
    """Weight distributions of the same pairs under two models, overlaid, one panel per side (shown up to the
    99th percentile, as in `distribution_figure`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["chosen", "rejected"])
    colours = ("#7f7f7f", "#d62728")
    tables = [with_relative_position(df) for df in (before, after)]
    for t in tables:
        t["_v"] = table_values(t, value)
    view = _view_range(np.concatenate([t["_v"].to_numpy(dtype=float) for t in tables]))
    for i, (rows, name) in enumerate(zip(tables, labels, strict=True)):
        for col, side in enumerate(("chosen", "rejected"), start=1):
            v = rows[rows["side"] == side]["_v"].dropna().to_numpy()
            common = {"name": escape_text(name), "legendgroup": name, "showlegend": col == 1}
            if kind == "histogram":
                xbins = {"start": view[0], "end": view[1], "size": (view[1] - view[0]) / 40} if view else None
                trace = go.Histogram(x=v, opacity=0.55, marker_color=colours[i], nbinsx=40, xbins=xbins,
                                     histnorm="probability density", **common)
            else:
                xs = np.sort(v)
                trace = go.Scatter(x=xs, y=np.arange(1, len(xs) + 1) / max(len(xs), 1), mode="lines",
                                   line_shape="hv", line_color=colours[i], **common)
            fig.add_trace(trace, row=1, col=col)
            fig.update_xaxes(title_text=escape_text(VALUE_LABELS[value]), range=view, row=1, col=col)
    fig.update_layout(barmode="overlay")
    return style(fig, height=380)


def margin_change_figure(scores: pd.DataFrame, before: str = "margin_before", after: str = "margin_after") -> go.Figure:
    """Each pair's preference margin before (x) and after (y): points above the diagonal gained margin.

    Args:
        scores: one row per pair with `pair_id` and the two margin columns.
    """
    import plotly.graph_objects as go

    x = scores[before].to_numpy(dtype=float)
    y = scores[after].to_numpy(dtype=float)
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "#999"},
                             name="no change", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name="pairs", marker={"color": "#d62728", "size": 8},
                             text=[escape_text(p) for p in scores["pair_id"]],
                             hovertemplate="%{text}<br>before %{x:.3f}<br>after %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0, line_color="#ccc")
    fig.add_vline(x=0, line_color="#ccc")
    fig.update_layout(xaxis_title="margin before", yaxis_title="margin after")
    return style(fig, height=420)


def metrics_figure(metrics: pd.DataFrame, columns: Sequence[str], x: str = "step", title: str = "") -> go.Figure:
    """Line chart of training metrics (one line per column present) against `x`; for the live training view."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for c in columns:
        if c in metrics.columns and x in metrics.columns:
            m = metrics[[x, c]].dropna()
            fig.add_trace(go.Scatter(x=m[x], y=m[c], mode="lines+markers", name=escape_text(c)))
    fig.update_layout(title=escape_text(title), xaxis_title=escape_text(x))
    return style(fig, height=300)


def scores_figure(frame: pd.DataFrame, columns: Sequence[str]) -> go.Figure:
    """Quality scores (one row per method, as `tiviz evaluate` writes them): one panel per score column, a bar per
    method and a grey diamond for the random ranking of the same tokens (column `<score>_random`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from tiviz.evaluation.run import SCORE_LABELS

    cols = min(len(columns), 3)
    nrows = math.ceil(len(columns) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[SCORE_LABELS[c] for c in columns],
                        horizontal_spacing=0.07, vertical_spacing=0.3)
    methods = [escape_text(m) for m in frame["method"]]
    for i, c in enumerate(columns, start=1):
        r, k = (i - 1) // cols + 1, (i - 1) % cols + 1
        fig.add_trace(go.Bar(x=methods, y=frame[c], name="method", marker_color="#3b6fb6", showlegend=i == 1,
                             hovertemplate="%{x}: %{y:.3f}<extra></extra>"), row=r, col=k)
        if f"{c}_random" in frame.columns:
            fig.add_trace(go.Scatter(x=methods, y=frame[f"{c}_random"], mode="markers", name="random ranking",
                                     marker={"symbol": "diamond", "size": 10, "color": "#555"}, showlegend=i == 1,
                                     hovertemplate="random: %{y:.3f}<extra></extra>"), row=r, col=k)
    fig.update_xaxes(tickangle=-30)
    return style(fig, 330 * nrows + 80, bottom=90)


def faithfulness_curves_figure(curves: pd.DataFrame) -> go.Figure:
    """Mean deletion and insertion curves per method (columns method, kind, ranking, fraction, change), and the
    random ranking's, dotted."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        "deletion: f(x) − f(x without the top q)", "insertion: f(only the top q) − f(empty response)"])
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    methods = list(dict.fromkeys(curves["method"]))
    same_random = curves[curves["ranking"] == "random"].groupby(["kind", "fraction"])["change"].nunique().max() == 1
    for col, kind in enumerate(("deletion", "insertion"), start=1):
        for i, m in enumerate(methods):
            c = curves[(curves["method"] == m) & (curves["kind"] == kind)]
            for rk, dash in (("method", "solid"), ("random", "dot")):
                if rk == "random" and same_random and i > 0:
                    continue
                r = c[c["ranking"] == rk].sort_values("fraction")
                name = escape_text(m) if rk == "method" else ("random" if same_random else f"random ({escape_text(m)})")
                fig.add_trace(go.Scatter(
                    x=r["fraction"], y=r["change"], mode="lines+markers", name=name, legendgroup=name,
                    showlegend=col == 1, line={"dash": dash, "color": "#555" if rk == "random" and same_random
                                               else palette[i % len(palette)]},
                    hovertemplate=name + ": q=%{x:.2f}, %{y:.3f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="fraction q of the response tokens, most important first", row=1, col=col)
    return style(fig, 420)


def histogram_figure(values: Sequence[float] | np.ndarray | pd.Series, label: str) -> go.Figure:
    """A plain histogram of one sample (50 bins), the x axis titled `label`."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=values, nbinsx=50, marker_color="#3b6fb6"))
    fig.update_layout(xaxis_title=escape_text(label), yaxis_title="tokens")
    return style(fig, 360)


# ---------------------------------------------------------------------------------------------- internals


def _check_one(df_side: pd.DataFrame) -> None:
    keys = df_side[["pair_id", "side", "method"]].drop_duplicates()
    if len(keys) != 1:
        raise TableError(f"shaded_tokens_html needs the rows of exactly one (pair_id, side, method), got {len(keys)}."
                         " Fix: filter the table first")


def _ranks(vals: np.ndarray) -> list[int]:
    """1 for the largest |value|; 0 for NaN (not ranked)."""
    order = np.argsort(-np.where(np.isfinite(vals), np.abs(vals), -np.inf), kind="stable")
    ranks = [0] * len(vals)
    for r, i in enumerate(order, start=1):
        if np.isfinite(vals[i]):
            ranks[i] = r
    return ranks


def _fmt(v: object) -> str:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(f):
        return "–"
    return f"{f:.3g}" if abs(f) >= 1e-3 or f == 0 else f"{f:.2e}"


def style(fig: go.Figure, height: int, *, bottom: int = 50) -> go.Figure:
    """One look for every tiviz figure (app, report): white template, system font, the legend at the top of the
    figure above the panel titles; `bottom` is the margin under the plot (more for slanted tick labels)."""
    fig.update_layout(template="plotly_white", height=height, margin={"l": 50, "r": 20, "t": 80, "b": bottom},
                      legend={"orientation": "h", "yanchor": "top", "y": 1, "x": 0, "yref": "container"},
                      font={"family": "system-ui, sans-serif", "size": 13})
    return fig


def _view_range(values: np.ndarray) -> list[float] | None:
    """An x range that shows the body of a heavy-tailed sample (to its 99th percentile, plus 10 %)."""
    v = values[np.isfinite(values)]
    if v.size < 20:
        return None
    lo, hi = float(v.min()), float(np.quantile(v, 0.99))
    if not hi > lo:
        return None
    return [min(lo, 0.0), hi * 1.1 if hi > 0 else hi]
