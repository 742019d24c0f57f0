"""Methods: the same pair under every method at once, how far the methods agree, and integrated gradients'
convergence delta."""

import streamlit as st

from app import state
from app.app_pages import components as ui

st.title("Every method on one pair")
dataset, pair = ui.require_pair()

left, mid, right = st.columns([3, 1, 1])
with left:
    methods = ui.methods_multiselect("methods_list", reference=False,
                                     default=["tidpo", "gradient", "grad_x_input", "integrated_gradients", "attention"])
with mid:
    n_steps = st.slider("IG steps", 4, 64, 16, step=4, key=ui.kept("methods_ig_steps"),
                        help="Integrated gradients: quadrature points (more = smaller convergence delta, slower)")
with right:
    value = st.radio("Shade by", ["score", "weight"], key=ui.kept("methods_value"), horizontal=True)
if "integrated_gradients" in methods:
    st.caption("Integrated gradients run the model once per step: about 10 s per pair on the real model on a "
               "CPU. Results are cached, so coming back is instant.")
if not methods:
    st.info("Pick at least one method.")
    st.stop()

ui.show_prompt(pair)
tables = []
for method in methods:  # each method appears as soon as it is computed
    tables.append(ui.attribution(ui.base_model(), dataset, [pair.id], [method], {"n_steps": n_steps},
                                 label=f"Attributing {pair.id} with {method}"))
    ui.show_pair(tables[-1], pair.id, method, value)
table = state.combine_tables(tables)

st.subheader("Agreement between methods")
ui.show_agreement(table, methods)

if "integrated_gradients" in methods:
    st.subheader("Integrated gradients: convergence delta")
    ui.show_convergence(table)
