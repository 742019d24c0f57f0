"""The view of one pair: the prompt, both responses shaded token by token on one colour scale with its legend,
the preference scores and the most important tokens. Dataset text reaches the page escaped
(`tiviz.safe_html.escape_text` inside the `tiviz.viz` HTML builders)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.app_pages.pickers import kept
from tiviz import analysis, viz
from tiviz.data import PreferencePair

VALUE_HELP = {"score": "the method's raw score (signed methods: blue lowers, red raises the target)",
              "weight": "|score| normalised to sum 1 over the response"}


def show_prompt(pair: PreferencePair) -> None:
    st.html(viz.plain_text_html(pair.prompt_text(), title="Prompt"))


def show_pair(df: pd.DataFrame, pair_id: str, method: str, value: str = "score", *,
              scale: viz.Scale | None = None, vmax: float | None = None, caption: str = "") -> None:
    """Chosen and rejected side by side, shaded on one shared colour scale, with its legend."""
    rows = df[(df["pair_id"] == pair_id) & (df["method"] == method)]
    if vmax is None:
        vmax = viz.shading_range(rows, value)  # type: ignore[arg-type]
    if scale is None:
        scale = "diverging" if value == "score" and viz.is_signed(method, rows["score"]) else "sequential"
    left, right = st.columns(2)
    for col, side in ((left, "chosen"), (right, "rejected")):
        with col:
            side_rows = rows[rows["side"] == side]
            st.html(viz.shaded_tokens_html(side_rows, value=value, scale=scale, vmax=vmax,  # type: ignore[arg-type]
                                           title=f"{side.capitalize()} response · {method}{caption}"))
    values = rows[rows["in_response"]][value].abs()
    st.html(viz.legend_html(0.0, vmax, scale=scale, label=f"{method} {value}", clipped=bool((values > vmax * 1.000001).any())))


def show_scores(row: pd.Series, *, reference: bool) -> None:
    """The preference scores of a pair: log-probs, their margin, and implicit rewards with a reference."""
    c = st.columns(3)
    c[0].metric("log π(chosen | x)", f"{row['logp_chosen']:.2f}")
    c[1].metric("log π(rejected | x)", f"{row['logp_rejected']:.2f}")
    c[2].metric("log-prob margin", f"{row['logp_margin']:+.2f}",
                help="log π(chosen|x) − log π(rejected|x): > 0 means the model prefers the chosen response")
    if reference:
        c = st.columns(3)
        c[0].metric("implicit reward (chosen)", f"{row['reward_chosen']:+.3f}")
        c[1].metric("implicit reward (rejected)", f"{row['reward_rejected']:+.3f}")
        c[2].metric("reward margin", f"{row['reward_margin']:+.3f}",
                    help="β (log π − log π_ref), chosen minus rejected, with the base model as π_ref")
    else:
        st.caption("Implicit rewards need a reference: pick a finished training run as the model, and the base "
                   "model becomes its reference.")


def show_preference(table: pd.DataFrame) -> None:
    """The scorer's margin for one pair (a row of `tiviz.scoring.score_pairs`) and which side it prefers."""
    row = table.iloc[0]
    quantity = table.attrs.get("tiviz", {}).get("quantity", "score")
    c = st.columns(3)
    c[0].metric("score (chosen)", f"{row['chosen']:+.3f}", help=quantity)
    c[1].metric("score (rejected)", f"{row['rejected']:+.3f}", help=quantity)
    c[2].metric("scorer margin", f"{row['margin']:+.3f}", help=f"{quantity}: chosen minus rejected")
    winner = "the chosen response" if row["margin"] > 0 else "the rejected response" if row["margin"] < 0 else \
        "neither response (a tie)"
    st.markdown(f"The scorer ({quantity}) prefers **{winner}**.")


def show_top_k(df: pd.DataFrame, key: str, default_k: int = 10) -> None:
    """A sortable table of the most important response tokens of each side (click a header to sort)."""
    k = st.slider("Top-k tokens", 3, 30, default_k, key=kept(f"{key}_k"))
    top = analysis.top_tokens(df, k=k)
    drop = ["pair_id"] + (["method"] if top["method"].nunique() == 1 else [])
    st.dataframe(top.drop(columns=drop), hide_index=True, key=f"{key}_table",
                 column_config={"score": st.column_config.NumberColumn(format="%.4g"),
                                "weight": st.column_config.NumberColumn(format="%.4f")})
