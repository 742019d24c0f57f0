"""Distributions: token weights across a subset of the dataset, per method and side; how concentrated they
are; and where in the response the weight sits (the position profile shows TI-DPO's Gaussian prior)."""

import streamlit as st

from app.app_pages import components as ui

st.title("Distributions across the dataset")
dataset = ui.require_dataset()

left, mid, right = st.columns([1, 3, 1])
with left:
    n = st.number_input("Pairs", 1, len(dataset.pairs), min(10, len(dataset.pairs)), key=ui.kept("dist_n"),
                        help="The first N pairs of the dataset. Gradient methods cost about 0.5–1 s per pair on "
                             "the real model on a CPU.")
with mid:
    methods = ui.methods_multiselect("dist_methods", reference=False, default=["tidpo", "gradient", "attention"])
with right:
    bins = st.slider("Position bins", 10, 20, 10, key=ui.kept("dist_bins"))
if not methods:
    st.info("Pick at least one method.")
    st.stop()

pair_ids = [p.id for p in dataset.subset(n)]
table = ui.dataset_table(ui.base_model(), dataset, pair_ids, methods, key="dist_run")

kind = st.radio("Plot", ["histogram", "box", "violin", "ecdf"], key=ui.kept("dist_kind"), horizontal=True)
value = st.radio("Value", ["relative_weight", "weight", "score"], key=ui.kept("dist_value"), horizontal=True,
                 format_func=ui.value_label)
ui.show_distributions(table, kind, value, bins)
