"""Inspect: one pair, one method: the prompt, both responses shaded token by token, the preference scores and
the most important tokens."""

import streamlit as st

from app.app_pages import components as ui

st.title("Inspect a pair")
st.caption("Which tokens drive the model's preference? Hover a token for its score and rank.")
dataset, pair = ui.require_pair()

left, mid, right = st.columns([2, 2, 1])
with left:
    model = ui.model_picker("inspect_model")
with mid:
    method = ui.method_picker("inspect_method", reference=model.has_reference)
with right:
    value = st.radio("Shade by", ["score", "weight"], key=ui.kept("inspect_value"), horizontal=True,
                     help=ui.VALUE_HELP["score"] + "; " + ui.VALUE_HELP["weight"])

table = ui.attribution(model, dataset, [pair.id], [method], label=f"Attributing {pair.id} with {method}")
ui.show_prompt(pair)
ui.show_pair(table, pair.id, method, value)

st.subheader("Preference scores")
ui.show_scores(ui.scores(model, dataset, [pair.id]).iloc[0], reference=model.has_reference)

st.subheader("Most important tokens")
ui.show_top_k(table, key="inspect_top")
