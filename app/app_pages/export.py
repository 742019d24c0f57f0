"""Export: the table of the current selection as Parquet, CSV or JSON (with its provenance), and the
self-contained HTML report."""

import streamlit as st

from app import state
from app.app_pages import components as ui

st.title("Export")
dataset, pair = ui.require_pair()

what = st.radio("Selection", ["pair", "dataset"], key=ui.kept("export_what"), horizontal=True,
                format_func=lambda w: f"this pair ({state.md_literal(pair.id)})" if w == "pair" else "the dataset subset")
selection = ui.export_selection(dataset, pair, what)

st.subheader("Table")
ui.table_downloads(selection.table, stem=f"tiviz-{what}")

st.subheader("HTML report")
ui.report_download(selection.table, dataset, selection.pair_ids, selection.methods, selection.settings)
