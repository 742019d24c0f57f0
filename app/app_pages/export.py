"""Export: the table of the current selection as Parquet, CSV or JSON (with its provenance), and the
self-contained HTML report."""

import streamlit as st

from app import state
from app.app_pages import export_view, pickers

st.title("Export")
dataset, pair = pickers.require_pair()

what = st.radio("Selection", ["pair", "dataset"], key=pickers.kept("export_what"), horizontal=True,
                format_func=lambda w: f"this pair ({state.md_literal(pair.id)})" if w == "pair" else "the dataset subset")
selection = export_view.export_selection(dataset, pair, what)

st.subheader("Table")
export_view.table_downloads(selection.table, stem=f"tiviz-{what}")

st.subheader("HTML report")
export_view.report_download(selection.table, dataset, selection.pair_ids, selection.methods, selection.settings)
