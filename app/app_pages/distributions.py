"""Distributions: token weights across a subset of the dataset, per method and side; how concentrated they
are; and where in the response the weight sits (the position profile shows TI-DPO's Gaussian prior)."""

import streamlit as st

from app import state
from app.app_pages import compare_view, long_work, pickers

st.title("Distributions across the dataset")
dataset = pickers.require_dataset()

left, mid, right = st.columns([1, 3, 1])
with left:
    n = st.number_input("Pairs", 1, len(dataset.pairs), min(pickers.DatasetSelection().n, len(dataset.pairs)),
                        key=pickers.kept("dist_n"),
                        help="The first N pairs of the dataset. Gradient methods took 0.8 to 1.0 s per pair on "
                             "the default model on a 2-core CPU (docs/BENCHMARKS.md).")
with mid:
    methods = pickers.methods_multiselect("dist_methods", reference=False,
                                          default=pickers.DatasetSelection().methods)
with right:
    bins = st.slider("Position bins", 10, 20, 10, key=pickers.kept("dist_bins"))
pickers.offer_dataset_selection(n, methods)
if not methods:
    st.info("Pick at least one method.")
    st.stop()

pair_ids = [p.id for p in dataset.subset(n)]
table = long_work.dataset_table(state.base_choice(), dataset, pair_ids, methods, key="dist_run")

kind = st.radio("Plot", ["histogram", "box", "violin", "ecdf"], key=pickers.kept("dist_kind"), horizontal=True)
value = st.radio("Value", ["relative_weight", "weight", "score"], key=pickers.kept("dist_value"), horizontal=True,
                 format_func=compare_view.value_label)
compare_view.show_distributions(table, kind, value, bins)
