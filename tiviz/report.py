"""The shareable outputs of a tidy table: one self-contained HTML report that opens offline, and file exports.

The report embeds plotly.js once, inline, and each figure as JSON in a `<script type="application/json">` block
with `<`, `>`, `&` written as JSON escapes, so no text can close the script. A Content-Security-Policy allows
inline code only, so the page fetches nothing. Dataset text reaches the page only through
`tiviz.safe_html.escape_text` (directly, or inside `tiviz.viz`).

    from tiviz.report import write_report
    write_report(read_table("results.parquet"), "report.html", scores=read_scores("eval/"))
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tiviz.errors import TableError
from tiviz.safe_html import escape_text
from tiviz.table import PROVENANCE_KEY, write_table

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from tiviz.evaluation import Evaluation

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
PAGE_CSS = """
body{font-family:ui-sans-serif,system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f1f24;margin:0;
  background:#f6f6f8}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #dcdce2;
  padding-bottom:6px}h3{font-size:16px;margin:22px 0 8px}
.sub{color:#5c5c66;font-size:13px}
nav a{margin-right:14px;color:#2c5aa0;text-decoration:none;font-size:14px}
.card{background:#fff;border:1px solid #e3e3e8;border-radius:10px;padding:14px 18px;margin:12px 0}
table.kv{border-collapse:collapse;font-size:13px;width:100%}
table.kv th{text-align:left;color:#5c5c66;font-weight:500;padding:4px 12px 4px 0;vertical-align:top;width:190px}
table.kv td{padding:4px 0;word-break:break-word}
table.grid{border-collapse:collapse;font-size:13px;margin:6px 0}
table.grid th,table.grid td{border-bottom:1px solid #ececf0;padding:5px 10px;text-align:right}
table.grid th:first-child,table.grid td:first-child{text-align:left}
table.grid .rand{color:#8a8a94;font-size:12px}
table.grid .better{font-weight:600;color:#17602a}
table.pair{border-collapse:collapse;width:100%;table-layout:fixed}
table.pair td,table.pair th{vertical-align:top;padding:6px 6px}
table.pair th{font-size:13px;color:#5c5c66;text-align:left}
table.pair .m{width:150px}
table.pair td.m{font-size:13px;color:#33333a;font-weight:600}
.figure{background:#fff;border:1px solid #e3e3e8;border-radius:10px;margin:12px 0;padding:4px}
.note{font-size:13px;color:#5c5c66}
code{font-size:12px;background:#f0f0f4;padding:1px 4px;border-radius:3px}
details summary{cursor:pointer;font-size:13px;color:#44444c}
.legends{display:flex;gap:40px;flex-wrap:wrap}
"""


# ---------------------------------------------------------------------------------------------- selection


def select(table: pd.DataFrame, *, pairs: str | Sequence[str] | None = None,
           methods: str | Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of the chosen pairs and methods, in table order, provenance kept.

    Args:
        pairs: pair ids or shell patterns (`harm-*`), as a list or one comma-separated string; None = all.
        methods: method ids, as a list or "a,b"; None = all.
    """
    out = table
    ids = list(dict.fromkeys(table["pair_id"]))
    if pairs is not None:
        pats = _split(pairs)
        keep = [p for p in ids if any(str(p) == pat or fnmatch.fnmatchcase(str(p), pat) for pat in pats)]
        if not keep:
            raise TableError(f"no pair id matches {', '.join(pats)!r} (the table has {len(ids)} pairs, e.g. "
                             f"{', '.join(map(str, ids[:3]))}). Fix: check --pairs-filter")
        out = out[out["pair_id"].isin(keep)]
    if methods is not None:
        names = _split(methods)
        present = list(dict.fromkeys(table["method"]))
        missing = [m for m in names if m not in present]
        if missing:
            raise TableError(f"method {missing[0]!r} is not in the table (it has {', '.join(present)}). "
                             "Fix: check --methods")
        out = out[out["method"].isin(names)]
    out = out.reset_index(drop=True)
    out.attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in table.attrs.items()}
    return out


def export_table(table: pd.DataFrame, out: str | Path, fmt: str | None = None, *,
                 pairs: str | Sequence[str] | None = None, methods: str | Sequence[str] | None = None) -> Path:
    """Write the selection as Parquet, CSV or JSON (format from the suffix unless given), provenance included
    and the selection recorded in it."""
    sel = select(table, pairs=pairs, methods=methods)
    prov = dict(sel.attrs.get(PROVENANCE_KEY, {}) or {})
    if pairs is not None or methods is not None:
        prov["selection"] = {"pairs": _split(pairs) if pairs is not None else None,
                             "methods": _split(methods) if methods is not None else None}
    sel.attrs[PROVENANCE_KEY] = prov
    return write_table(sel, out, fmt)


# ---------------------------------------------------------------------------------------------- report


def write_report(
    table: pd.DataFrame,
    out: str | Path,
    *,
    after: pd.DataFrame | None = None,
    pairs: str | Sequence[str] | None = None,
    methods: str | Sequence[str] | None = None,
    scores: Evaluation | pd.DataFrame | None = None,
    title: str | None = None,
    max_pairs: int = 20,
    labels: tuple[str, str] = ("before", "after"),
) -> Path:
    """Write the self-contained HTML report (see `report_html`) to `out`; returns the path."""
    html = report_html(table, after=after, pairs=pairs, methods=methods, scores=scores, title=title,
                       max_pairs=max_pairs, labels=labels)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def report_html(
    table: pd.DataFrame,
    *,
    after: pd.DataFrame | None = None,
    pairs: str | Sequence[str] | None = None,
    methods: str | Sequence[str] | None = None,
    scores: Evaluation | pd.DataFrame | None = None,
    title: str | None = None,
    max_pairs: int = 20,
    labels: tuple[str, str] = ("before", "after"),
) -> str:
    """The report as one HTML string: provenance, the distribution plots, the quality scores (when given),
    the before/after comparison (when `after` is given) and each pair's shaded chosen and rejected text.

    Args:
        table: the tidy table (the "before" one when `after` is given).
        after: a second table of the same pairs, tokenised the same way (e.g. after TI-DPO training).
        pairs, methods: the selection (see `select`); the plots use all selected pairs, the text shows at most
            `max_pairs` of them.
        scores: an `Evaluation` (scores and curves) or its scores DataFrame.
        labels: names of the two tables in the before/after section.
    """
    from tiviz import __version__
    from tiviz.compare import agreement_matrix, check_same_tokens, method_agreement, preference

    sel = select(table, pairs=pairs, methods=methods)
    sel_after = select(after, pairs=pairs, methods=methods) if after is not None else None
    if sel_after is not None:
        check_same_tokens(sel, sel_after, names=labels)
    figs = _Figures()
    names = list(dict.fromkeys(sel["method"]))
    ids = list(dict.fromkeys(sel["pair_id"]))
    sections: list[tuple[str, str, str]] = []

    prov_html = _provenance_html(sel, labels[0] if sel_after is not None else None)
    if sel_after is not None:
        prov_html += _provenance_html(sel_after, labels[1])
    sections.append(("provenance", "Provenance", prov_html))

    try:
        pref = preference(sel)
    except TableError:
        pref = None
    overview = [f"<p>{len(ids)} pairs × 2 sides × {len(names)} methods "
                f"({', '.join(escape_text(m) for m in names)}); {len(sel)} rows.</p>"]
    if pref is not None:
        overview.append(f"<p>Preference accuracy {pref.accuracy:.3f}, mean margin {pref.mean_margin:.4g} "
                        f"<span class='note'>(margins from {escape_text(pref.description)})</span></p>")
    sections.append(("overview", "Overview", f"<div class='card'>{''.join(overview)}</div>"))

    if scores is not None:
        sections.append(("scores", "Quality scores", _scores_html(scores, figs)))

    sections.append(("distributions", "Weight distributions", _distributions_html(sel, figs, agreement_matrix,
                                                                                   method_agreement)))
    if sel_after is not None:
        sections.append(("before-after", f"{labels[0].capitalize()} vs {labels[1]}",
                         _before_after_html(sel, sel_after, figs, labels)))
    sections.append(("pairs", "Pairs", _pairs_html(sel, sel_after, ids[:max_pairs], pref, labels)
                     + (f"<p class='note'>{len(ids) - max_pairs} more pairs not shown; select them with "
                        "--pairs-filter.</p>" if len(ids) > max_pairs else "")))

    from plotly.offline import get_plotlyjs

    from tiviz.viz import TOKENS_CSS

    heading = title or f"tiviz report: {sel.attrs.get(PROVENANCE_KEY, {}).get('model_id', 'attributions')}"
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{sid}">{escape_text(t)}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape_text(t)}</h2>{html}</section>' for sid, t, html in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="tiviz-figures" content="{len(figs)}">'
        f"<title>{escape_text(heading)}</title><style>{PAGE_CSS}{TOKENS_CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head><body><main>"
        f"<h1>{escape_text(heading)}</h1><div class='sub'>written {escape_text(now)} by tiviz "
        f"{escape_text(__version__)}; opens offline, plots are interactive (hover, zoom)</div><nav>{nav}</nav>"
        f"{body}</main>{figs.scripts()}{_RENDER_SCRIPT}</body></html>\n"
    )


_RENDER_SCRIPT = """<script>
document.querySelectorAll('div.tiviz-figure').forEach(function (div) {
  try {
    var spec = JSON.parse(document.getElementById(div.id + '-data').textContent);
    Plotly.newPlot(div, spec.data, spec.layout || {}, {displaylogo: false, responsive: true});
  } catch (err) { console.error('tiviz: figure ' + div.id + ' failed: ' + err); }
});
</script>"""


class _Figures:
    """Collects plotly figures: a placeholder div each, and its JSON in a script block rendered at the end."""

    def __init__(self) -> None:
        self._specs: list[str] = []

    def __len__(self) -> int:
        return len(self._specs)

    def add(self, fig: go.Figure) -> str:
        fid = f"fig-{len(self._specs) + 1}"
        self._specs.append(_script_json(fig.to_json()))
        height = int(fig.layout.height or 420)
        return f'<div class="figure"><div id="{fid}" class="tiviz-figure" style="height:{height}px"></div></div>'

    def scripts(self) -> str:
        return "".join(f'<script type="application/json" id="fig-{i}-data">{spec}</script>'
                       for i, spec in enumerate(self._specs, start=1))


def _script_json(text: str) -> str:
    """JSON safe inside a script element: no `<`, `>` or `&` left raw (so no `</script>` or `<!--`), and the
    two line separators JavaScript once treated as newlines escaped; JSON.parse reads it back unchanged."""
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                     ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


# ---------------------------------------------------------------------------------------------- sections


def _provenance_html(table: pd.DataFrame, label: str | None) -> str:
    prov = dict(table.attrs.get(PROVENANCE_KEY, {}) or {})
    data = prov.get("data") or {}
    settings = prov.get("settings") or {}
    targets = prov.get("method_targets") or {}
    rows = [
        ("model", f"{prov.get('model_id', 'unknown')}"
                  + (f" (revision {prov['model_revision']})" if prov.get("model_revision") else "")),
        ("reference model", prov.get("reference_model") or "none"),
        ("methods", ", ".join(prov.get("methods") or list(dict.fromkeys(table["method"])))),
        ("targets", ", ".join(f"{m}: {t or 'none'}" for m, t in targets.items()) or prov.get("target", "unknown")),
        ("data file", data.get("file", "unknown")),
        ("data sha256", data.get("sha256", "unknown")),
        ("pairs in the data", data.get("n_pairs", "unknown")),
        ("tiviz version", prov.get("tiviz_version", "unknown")),
        ("created", prov.get("created", "unknown")),
    ]
    rows += [(k, v) for k, v in prov.items() if k not in {"model_id", "model_revision", "reference_model", "methods",
                                                          "method_targets", "target", "settings", "data",
                                                          "tiviz_version", "created"}]
    cells = "".join(f"<tr><th>{escape_text(k)}</th><td>{escape_text(_plain(v))}</td></tr>" for k, v in rows)
    cells += (f"<tr><th>settings</th><td><code>{escape_text(json.dumps(settings, default=str))}</code></td></tr>"
              if settings else "")
    head = f"<h3>{escape_text(label)}</h3>" if label else ""
    return f"{head}<div class='card'><table class='kv'>{cells}</table></div>"


def _scores_html(scores: Evaluation | pd.DataFrame, figs: _Figures) -> str:
    from tiviz.evaluation.run import SCORE_LABELS
    from tiviz.viz import faithfulness_curves_figure, scores_figure

    frame = scores if isinstance(scores, pd.DataFrame) else scores.scores
    curves = None if isinstance(scores, pd.DataFrame) else scores.curves
    heads = [(c, h) for c, h in SCORE_LABELS.items() if c in frame.columns]
    th = "".join(f"<th>{escape_text(h)}</th>" for _, h in heads)
    extra = [c for c in ("spearman_mean", "n_sequences") if c in frame.columns]
    th += "".join(f"<th>{escape_text({'spearman_mean': 'mean ρ', 'n_sequences': 'n'}[c])}</th>" for c in extra)
    body = []
    for _, r in frame.iterrows():
        tds = []
        for c, _ in heads:
            v, rnd = r.get(c), r.get(f"{c}_random")
            better = _finite(v) and _finite(rnd) and ((v < rnd) if c == "sufficiency" else (v > rnd))
            tds.append(f"<td><span class='{'better' if better else ''}'>{_num(v)}</span> "
                       f"<span class='rand'>({_num(rnd)})</span></td>")
        tds += [f"<td>{_num(r.get(c)) if c != 'n_sequences' else escape_text(r.get(c))}</td>" for c in extra]
        body.append(f"<tr><td>{escape_text(r['method'])}</td>{''.join(tds)}</tr>")
    table = (f"<div class='card'><table class='grid'><tr><th>method</th>{th}</tr>{''.join(body)}</table>"
             "<p class='note'>In grey: a random ranking of the same tokens (exact expectation for AUPRC and hit@k, "
             "the mean of seeded permutations for the faithfulness scores). Bold: better than random. "
             "Sufficiency: lower is better. Definitions: docs/EVALUATION.md.</p></div>")
    parts = [table, figs.add(scores_figure(frame, [c for c, _ in heads]))]
    if curves is not None and len(curves):
        parts.append(figs.add(faithfulness_curves_figure(curves)))
    return "".join(parts)


def _distributions_html(sel: pd.DataFrame, figs: _Figures, agreement_matrix: Any, method_agreement: Any) -> str:
    from tiviz.analysis import concentration
    from tiviz.viz import concentration_figure, distribution_figure, position_profile_figure

    parts = ["<p class='note'>Response tokens only. weight × T (T the response length) is 1 for a uniform "
             "weighting, so responses of different lengths share one scale.</p>",
             figs.add(distribution_figure(sel, "box")), figs.add(distribution_figure(sel, "ecdf")),
             figs.add(position_profile_figure(sel)), figs.add(concentration_figure(concentration(sel)))]
    names = list(dict.fromkeys(sel["method"]))
    if len(names) >= 2:
        from tiviz.viz import rank_correlation_figure

        per = method_agreement(sel, names)
        parts.append(figs.add(rank_correlation_figure(agreement_matrix(per, "spearman", names),
                                                      "Method agreement: mean Spearman ρ over (pair, side)")))
    return "".join(parts)


def _before_after_html(before: pd.DataFrame, after: pd.DataFrame, figs: _Figures, labels: tuple[str, str]) -> str:
    from tiviz.compare import distribution_changes, preference_changes, token_changes
    from tiviz.viz import before_after_figure, histogram_figure, margin_change_figure

    a, b = (escape_text(x) for x in labels)
    parts = []
    try:
        pref, margins = preference_changes(before, after)
    except TableError as err:
        pref, margins = None, None
        parts.append(f"<p class='note'>No preference margins: {escape_text(err)}</p>")
    if pref is not None:
        parts.append(
            f"<div class='card'><table class='grid'><tr><th></th><th>{a}</th><th>{b}</th><th>change</th></tr>"
            f"<tr><td>preference accuracy</td><td>{_num(pref['accuracy_before'])}</td>"
            f"<td>{_num(pref['accuracy_after'])}</td><td>{_num(pref['accuracy_change'], sign=True)}</td></tr>"
            f"<tr><td>mean margin</td><td>{_num(pref['margin_before'])}</td><td>{_num(pref['margin_after'])}</td>"
            f"<td>{_num(pref['margin_change'], sign=True)}</td></tr></table>"
            f"<p class='note'>{pref['n_pairs']} pairs; margins from {escape_text(pref['description'])}.</p></div>")
    dists = distribution_changes(before, after)
    rows = "".join(
        f"<tr><td>{escape_text(r.method)}</td><td>{_num(r.entropy_before)} → {_num(r.entropy_after)}</td>"
        f"<td>{_num(r.top10_before)} → {_num(r.top10_after)}</td><td>{_num(r.ks_statistic)}</td>"
        f"<td>{_num(r.ks_pvalue, p=True)}</td></tr>" for r in dists.itertuples())
    parts.append("<div class='card'><table class='grid'><tr><th>method</th><th>entropy (1 = uniform)</th>"
                 "<th>top-10 % share</th><th>KS D</th><th>KS p</th></tr>" + rows + "</table>"
                 "<p class='note'>Means over sequences; KS: two-sample Kolmogorov–Smirnov test on the pooled "
                 "weight × T values of the response tokens.</p></div>")
    if margins is not None and len(margins):
        parts.append(figs.add(margin_change_figure(margins)))
    parts.append(figs.add(before_after_figure(before, after, labels=labels)))
    tokens = token_changes(before, after)
    rc = tokens.loc[tokens["method"] == "implicit_reward", ["in_response", "reward_change"]]
    rc = rc[rc["in_response"]]["reward_change"].dropna()
    if len(rc):
        parts.append(figs.add(histogram_figure(rc.to_numpy(), "per-token implicit reward change (after - before)")))
    return "".join(parts)


def _pairs_html(sel: pd.DataFrame, after: pd.DataFrame | None, ids: list[Any], pref: Any,
                labels: tuple[str, str]) -> str:
    from tiviz.viz import is_signed, legend_html, plain_text_html, shaded_tokens_html, shading_range

    names = list(dict.fromkeys(sel["method"]))
    signed = [m for m in names if is_signed(m, sel.loc[sel["method"] == m, "score"])]
    legends = []
    if signed:
        legends.append(legend_html(0.0, 1.0, scale="diverging", with_style=False,
                                   label=f"score / max |score| ({', '.join(signed)})"))
    if len(signed) < len(names):
        legends.append(legend_html(0.0, 1.0, scale="sequential", with_style=False,
                                   label=f"score / max score ({', '.join(m for m in names if m not in signed)})"))
    parts = ["<p class='note'>Each row: one method's scores on the two responses. Colours are scaled per pair and "
             "method to the largest |score| of its two responses (and of both tables, in a comparison). Hover a "
             "token for its score, weight and rank.</p>", f"<div class='legends'>{''.join(legends)}</div>"]
    margins = pref.per_pair.set_index("pair_id")["margin"] if pref is not None else None
    by_pair = dict(tuple(sel.groupby("pair_id", sort=False)))
    by_pair_after = dict(tuple(after.groupby("pair_id", sort=False))) if after is not None else {}
    for pid in ids:
        g = by_pair[pid]
        first = g[(g["method"] == names[0]) & (g["side"] == "chosen")].sort_values("position")
        prompt = "".join(first.loc[~first["in_response"], "text"].astype(str))
        meta = ""
        if margins is not None and str(pid) in margins.index:
            meta = f" <span class='note'>margin {_num(margins[str(pid)])}</span>"
        rows = []
        for m in names:
            versions = [("", g)] if after is None else [(f" ({labels[0]})", g), (f" ({labels[1]})", by_pair_after[pid])]
            vmax = max(shading_range(v[v["method"] == m]) for _, v in versions)
            for tag, v in versions:
                cells = []
                for side in ("chosen", "rejected"):
                    rows_side = v[(v["method"] == m) & (v["side"] == side)]
                    cells.append(f"<td>{shaded_tokens_html(rows_side, vmax=vmax, with_style=False)}</td>"
                                 if len(rows_side) else "<td></td>")
                rows.append(f"<tr><td class='m'>{escape_text(m + tag)}</td>{''.join(cells)}</tr>")
        parts.append(
            f"<div class='card'><h3>{escape_text(pid)}{meta}</h3><details><summary>prompt, as the model saw it"
            f"</summary>{plain_text_html(prompt, with_style=False)}</details>"
            f"<table class='pair'><tr><th class='m'></th><th>chosen</th><th>rejected</th></tr>{''.join(rows)}"
            "</table></div>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- formatting


def _split(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _plain(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _num(v: Any, *, sign: bool = False, p: bool = False) -> str:
    if not _finite(v):
        return "–"
    f = float(v)
    if p:
        return f"{f:.2g}"
    return f"{f:+.3f}" if sign else (f"{f:.3f}" if abs(f) < 1000 else f"{f:.4g}")
