"""Summaries of the tidy table that figures, reports, comparisons and the app read: the top tokens, how
concentrated the weights are, where in the response they sit, integrated gradients' completeness, and the
change between two tables. Pure pandas: no drawing here (that is `tiviz.viz`).

    from tiviz.analysis import concentration, top_tokens
    top = top_tokens(table, k=5)            # one row per (pair_id, side, method, rank)
    conc = concentration(table)             # entropy and top-10 % share per sequence
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

Value = Literal["score", "weight", "relative_weight"]
SEQUENCE = ["pair_id", "side", "method"]  # one attributed sequence: a response under one method


def relative_weight(rows: pd.DataFrame) -> pd.Series:
    """weight × T, T the number of response tokens of the row's (pair_id, side, method): 1 is uniform, so
    sequences of different lengths share one scale."""
    n = rows["in_response"].astype(int).groupby([rows[c] for c in SEQUENCE]).transform("sum")
    return rows["weight"].astype(float) * n


def table_values(rows: pd.DataFrame, value: Value) -> pd.Series:
    """One value column of the table as floats: score, weight, or relative_weight (`relative_weight`)."""
    if value == "score":
        return rows["score"].astype(float)
    if value == "weight":
        return rows["weight"].astype(float)
    if value == "relative_weight":
        if "relative_weight" in rows.columns:
            return rows["relative_weight"].astype(float)
        return relative_weight(rows)
    raise ValueError(f"unknown value {value!r}; allowed: score, weight, relative_weight")


def top_tokens(df: pd.DataFrame, k: int = 10, value: Value = "weight") -> pd.DataFrame:
    """The k response tokens with the largest |value| per (pair_id, side, method), ranked from 1.

    Columns: pair_id, side, method, rank, position, text, score, weight. Text is raw (escape it before HTML;
    Streamlit's dataframe shows it as text).
    """
    rows = df[df["in_response"]].copy()
    rows["_abs"] = table_values(rows, value).abs()
    rows = rows.sort_values([*SEQUENCE, "_abs"], ascending=[True, True, True, False])
    rows["rank"] = rows.groupby(SEQUENCE).cumcount() + 1
    rows = rows[rows["rank"] <= k]
    rows["text"] = [t if t else tok for t, tok in zip(rows["text"], rows["token"], strict=True)]
    return rows[["pair_id", "side", "method", "rank", "position", "text", "score", "weight"]].reset_index(drop=True)


def with_relative_position(df: pd.DataFrame) -> pd.DataFrame:
    """Response rows with `rel_pos` (0 = first response token, 1 = last) and `relative_weight` (weight × T)."""
    rows = df[df["in_response"]].copy()
    g = rows.groupby(SEQUENCE)["position"]
    first, n = g.transform("min"), g.transform("count")
    rows["n_response"] = n
    rows["rel_pos"] = np.where(n > 1, (rows["position"] - first) / (n - 1).clip(lower=1), 0.5)
    rows["relative_weight"] = relative_weight(rows)
    return rows


def concentration(df: pd.DataFrame) -> pd.DataFrame:
    """How concentrated the weights are, per (pair_id, side, method).

    Columns: n_tokens; entropy (Shannon entropy of the weights divided by log T: 1 = uniform, near 0 = one
    token holds everything); top10_share (the mass held by the top 10 % of tokens, at least one token).
    """
    out = []
    for (pid, side, method), g in df[df["in_response"]].groupby(SEQUENCE, sort=True):
        w = g["weight"].to_numpy(dtype=float)
        w = w[np.isfinite(w)]
        n = len(w)
        if n == 0 or w.sum() <= 0:
            ent, top = np.nan, np.nan
        else:
            p = w / w.sum()
            nz = p[p > 0]
            ent = float(-(nz * np.log(nz)).sum() / math.log(n)) if n > 1 else 1.0
            k = max(1, math.ceil(0.1 * n))
            top = float(np.sort(p)[::-1][:k].sum())
        out.append({"pair_id": pid, "side": side, "method": method, "n_tokens": n, "entropy": ent,
                    "top10_share": top})
    return pd.DataFrame(out, columns=["pair_id", "side", "method", "n_tokens", "entropy", "top10_share"])


def position_profile(df: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Mean relative weight (weight × T, 1 = uniform) by relative position in the response, per method and side.

    Args:
        bins: number of equal-width bins over [0, 1] (10 to 20 reads well).
    Returns:
        columns method, side, bin, center (bin centre in [0, 1]), mean_weight, n (tokens in the bin).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    rows = with_relative_position(df)
    rows["bin"] = np.minimum((rows["rel_pos"] * bins).astype(int), bins - 1)
    prof = (rows.groupby(["method", "side", "bin"], sort=True)["relative_weight"]
            .agg(mean_weight="mean", n="count").reset_index())
    prof["center"] = (prof["bin"] + 0.5) / bins
    return prof[["method", "side", "bin", "center", "mean_weight", "n"]]


def convergence_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Integrated gradients' completeness per (pair_id, side): f(x), the convergence delta, and the delta
    relative to |f(x) - f(baseline)| (recovered as sum(scores) - delta, since delta = sum - (f(x) - f(b)))."""
    ig = df[df["method"] == "integrated_gradients"]
    if ig.empty:
        return pd.DataFrame(columns=["pair_id", "side", "f_x", "f_x_minus_f_baseline", "delta", "relative_delta"])
    g = ig.groupby(["pair_id", "side"], sort=True).agg(
        f_x=("target_value", "first"), total=("score", "sum"), delta=("convergence_delta", "first"))
    g["f_x_minus_f_baseline"] = g["total"] - g["delta"]
    g["relative_delta"] = g["delta"].abs() / g["f_x_minus_f_baseline"].abs().where(g["f_x_minus_f_baseline"] != 0)
    return g.reset_index()[["pair_id", "side", "f_x", "f_x_minus_f_baseline", "delta", "relative_delta"]]


def weight_difference(before: pd.DataFrame, after: pd.DataFrame, value: Value = "weight") -> pd.DataFrame:
    """Rows of `after` with `score` replaced by after - before (same pair, side, position, method) and weight by
    the same difference, ready for `shaded_tokens_html(..., scale="diverging")`; method gets a `_change` suffix."""
    key = ["pair_id", "side", "position", "method"]
    b = before.set_index(key)
    a = after.set_index(key)
    common = a.index.intersection(b.index)
    diff = a.loc[common].copy()
    d = table_values(a.loc[common], value) - table_values(b.loc[common], value)
    diff["score"] = d.to_numpy()
    diff["weight"] = d.to_numpy()
    out = diff.reset_index()
    out["method"] = out["method"].astype(str) + "_change"
    return out
