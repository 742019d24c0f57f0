"""Inspect: one pair, one method: the prompt, both responses shaded token by token, the preference scores and
the most important tokens."""

import streamlit as st

from app.app_pages import long_work, pair_view, pickers

st.title("Inspect a pair")
st.caption("Which tokens drive the model's preference? Hover a token for its score and rank.")
dataset, pair = pickers.require_pair()

left, mid, right = st.columns([2, 2, 1])
with left:
    model = pickers.model_picker("inspect_model", reward_models=True)
with mid:
    method = pickers.method_picker("inspect_method", reference=model.has_reference,
                                   reward_model=model.kind == "reward_model")
with right:
    value = st.radio("Shade by", ["score", "weight"], key=pickers.kept("inspect_value"), horizontal=True,
                     help=pair_view.VALUE_HELP["score"] + "; " + pair_view.VALUE_HELP["weight"])

table = long_work.attribution(model, dataset, [pair.id], [method], label=f"Attributing {pair.id} with {method}")
pair_view.show_prompt(pair)
pair_view.show_pair(table, pair.id, method, value)

st.subheader("Preference scores")
pair_view.show_preference(long_work.scorer_scores(model, dataset, [pair.id]))
if model.kind != "reward_model":
    pair_view.show_scores(long_work.scores(model, dataset, [pair.id]).iloc[0], reference=model.has_reference)

st.subheader("Most important tokens")
pair_view.show_top_k(table, key="inspect_top")
