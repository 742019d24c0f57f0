"""Methods: the same pair under every method at once, how far the methods agree, and integrated gradients'
convergence delta."""

import streamlit as st

from app import state
from app.app_pages import compare_view, long_work, pair_view, pickers

st.title("Every method on one pair")
dataset, pair = pickers.require_pair()

left, mid, right = st.columns([3, 1, 1])
with left:
    methods = pickers.methods_multiselect("methods_list", reference=False,
                                          default=pickers.PairSelection().methods)
with mid:
    n_steps = st.slider("IG steps", 4, 64, pickers.PairSelection().n_steps, step=4,
                        key=pickers.kept("methods_ig_steps"),
                        help="Integrated gradients: quadrature points (more = smaller convergence delta, slower)")
with right:
    value = st.radio("Shade by", ["score", "weight"], key=pickers.kept("methods_value"), horizontal=True)
pickers.offer_pair_selection(methods, n_steps)
if "integrated_gradients" in methods:
    st.caption("Integrated gradients run the model once per step: 29 s per pair of 113 tokens, 57 s per sample "
               "pair, on the default model on a 2-core CPU (docs/BENCHMARKS.md). Results are cached, so coming "
               "back is instant.")
if not methods:
    st.info("Pick at least one method.")
    st.stop()

pair_view.show_prompt(pair)
tables = []
for method in methods:  # each method appears as soon as it is computed
    tables.append(long_work.attribution(state.base_choice(), dataset, [pair.id], [method], {"n_steps": n_steps},
                                        label=f"Attributing {pair.id} with {method}"))
    pair_view.show_pair(tables[-1], pair.id, method, value)
table = state.combine_tables(tables)

st.subheader("Agreement between methods")
compare_view.show_agreement(table, methods)

if "integrated_gradients" in methods:
    st.subheader("Integrated gradients: convergence delta")
    compare_view.show_convergence(table)
