"""Export: the table behind the current selection (this pair under the Methods page's methods, or the
Distributions page's subset), its downloads with provenance, and the self-contained HTML report of
`tiviz.report`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from app import state
from app.app_pages.long_work import attribution, dataset_table
from app.app_pages.pickers import dataset_selection, finished_runs, kept, pair_selection
from tiviz.data import PreferencePair


@dataclass
class Selection:
    """What the Export page exports: the table and what made it."""

    table: pd.DataFrame
    pair_ids: list[str]
    methods: list[str]
    settings: dict[str, Any] | None


def export_selection(dataset: state.Dataset, pair: PreferencePair, what: str) -> Selection:
    """The table behind the current selection: this pair under the Methods page's methods, or the
    Distributions page's subset and methods (`pickers.pair_selection`, `pickers.dataset_selection`; computed
    on demand, instantly when cached)."""
    if what == "pair":
        chosen = pair_selection()
        methods = list(chosen.methods)
        settings: dict[str, Any] = {"n_steps": chosen.n_steps}
        st.caption(f"{len(methods)} methods ({', '.join(methods)}), as on the Methods page.")
        table = attribution(state.base_choice(), dataset, [pair.id], methods, settings, label="Attributing the pair")
        return Selection(table, [pair.id], methods, settings)
    subset = dataset_selection()
    n, methods = min(subset.n, len(dataset.pairs)), list(subset.methods)
    st.caption(f"The first {n} pairs under {', '.join(methods)}, as on the Distributions page.")
    ids = [p.id for p in dataset.subset(n)]
    return Selection(dataset_table(state.base_choice(), dataset, ids, methods, key="export_run"), ids, methods, None)


def table_downloads(table: pd.DataFrame, stem: str) -> None:
    """The table as Parquet, CSV or JSON, with its provenance."""
    st.caption(f"{len(table):,} rows: one per (pair, side, token, method), with the provenance (model, methods, "
               "settings, data file and its SHA-256).")
    fmt = st.radio("Format", ["parquet", "csv", "json"], key=kept("export_format"), horizontal=True)
    mime = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "json": "application/json"}[fmt]
    st.download_button(f"Download {stem}.{fmt}", state.export_bytes(table, fmt), file_name=f"{stem}.{fmt}",
                       mime=mime, key="export_table")


def report_download(table: pd.DataFrame, dataset: state.Dataset, pair_ids: Sequence[str],
                    methods: Sequence[str], settings: dict[str, Any] | None) -> None:
    """The self-contained HTML report from `tiviz.report` for the selection, optionally against a run."""
    runs = ["(none)", *[r.name for r in finished_runs()]]
    after_name = st.selectbox("Compare with a training run", runs, key="export_after",
                              help="Adds before / after sections: the same pairs and methods under the run")
    if st.button("Build the report", key="export_report_build"):
        from tiviz.report import write_report

        after = None
        if after_name != "(none)":
            after = attribution(state.run_choice(after_name), dataset, pair_ids, methods, settings,
                                label=f"Attributing under {after_name}")
        with st.spinner("Writing the report…"):
            path = state.session_dir() / "tiviz-report.html"
            write_report(table, path, after=after, title=f"tiviz: {dataset.name}",
                         labels=("base", after_name) if after is not None else ("before", "after"))
            st.session_state["_report_html"] = path.read_bytes()
    if st.session_state.get("_report_html"):
        st.download_button("Download tiviz-report.html", st.session_state["_report_html"],
                           file_name="tiviz-report.html", mime="text/html", key="export_report")
