"""Train: TI-DPO on the current dataset, as a separate process (the app stays responsive), with live progress,
loss / reward margin / accuracy charts, a Cancel button, and the finished runs to pick as the "after" model."""

import streamlit as st

from app.app_pages import components as ui

st.title("Train with TI-DPO")
dataset = ui.require_dataset()
if not ui.trainer_ready():
    st.stop()

st.subheader("New run")
ui.train_form(dataset)

st.subheader("This session's job")
ui.job_panel()

st.subheader("Finished runs")
ui.runs_table()
