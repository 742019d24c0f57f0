"""Inspect: one pair, one method: the prompt, both responses shaded token by token (or word by word), the two
responses aligned (the diff view), the preference scores and the most important tokens."""

import streamlit as st

from app.app_pages import long_work, pair_view, pickers
from tiviz.aggregate import apply_aggregate, template_tokens

st.title("Inspect a pair")
st.caption("Which tokens drive the model's preference? Hover a token for its score and rank.")
dataset, pair = pickers.require_pair()

left, mid, right = st.columns([2, 2, 1])
with left:
    model = pickers.model_picker("inspect_model", reward_models=True)
with mid:
    method = pickers.method_picker("inspect_method", reference=model.has_reference,
                                   reward_model=model.kind == "reward_model", kind=model.kind)
with right:
    value = st.radio("Shade by", ["score", "weight"], key=pickers.kept("inspect_value"), horizontal=True,
                     help=pair_view.VALUE_HELP["score"] + "; " + pair_view.VALUE_HELP["weight"])

words_col, template_col = st.columns(2)
with words_col:
    words = st.toggle("Word level", key=pickers.kept("inspect_words"),
                      help="subword tokens merged into words: scores summed, weights renormalised")
with template_col:
    hide_template = st.toggle("Hide template and special tokens", key=pickers.kept("inspect_hide_template"),
                              help="leave chat-template and special tokens out of the views; scores unchanged")

table = long_work.attribution(model, dataset, [pair.id], [method], label=f"Attributing {pair.id} with {method}")
table = apply_aggregate(table, "word" if words else "token")
hidden = template_tokens(table, [pair])
shown = table[~hidden] if hide_template else table
pair_view.show_prompt(pair)
pair_view.show_pair(shown, pair.id, method, value)

st.subheader("Chosen vs rejected, aligned")
st.caption("Stretches both responses share are dimmed; where they differ is outlined. Shading as above.")
pair_view.show_diff(table, pair.id, method, value, hide=hidden if hide_template else None)

st.subheader("Preference scores")
pair_view.show_preference(long_work.scorer_scores(model, dataset, [pair.id]))
if model.kind != "reward_model":
    pair_view.show_scores(long_work.scores(model, dataset, [pair.id]).iloc[0], reference=model.has_reference)

st.subheader("Most important tokens")
pair_view.show_top_k(shown, key="inspect_top")
