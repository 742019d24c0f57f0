"""Before / after: what a training run changed. For one pair, the token weights under the base model and the
trained one, their difference, the per-token implicit reward and the weights training itself used; across
pairs, the weight distributions overlaid and the change in preference accuracy and margins."""

import streamlit as st

from app import state
from app.app_pages import compare_view, pair_view, pickers

st.title("Before / after training")
dataset, pair = pickers.require_pair()
top = st.columns(2)
with top[1]:
    run = pickers.run_picker("ba_run")
with top[0]:
    base = pickers.base_picker("ba_base", run)

left, right = st.columns([2, 1])
with left:
    method = pickers.method_picker("ba_method", reference=False, kind=run.kind)
with right:
    value = st.radio("Shade by", ["weight", "score"], key=pickers.kept("ba_value"), horizontal=True)

st.subheader(f"Pair {state.md_literal(pair.id)}")
pair_view.show_prompt(pair)
compare_view.show_before_after_pair(run, base, dataset, pair.id, method, value)

st.subheader("Weights training used")
compare_view.show_training_weights(run, dataset, pair.id)

st.subheader("Across the dataset")
n = st.columns(4)[0].number_input("Pairs", 1, len(dataset.pairs), min(10, len(dataset.pairs)),
                                  key=pickers.kept("ba_n"),
                                  help="The first N pairs of the dataset, attributed under both models")
compare_view.show_before_after_dataset(run, base, dataset, [p.id for p in dataset.subset(n)], method)
