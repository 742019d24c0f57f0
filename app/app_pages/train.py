"""Train: TI-DPO on the current dataset, as a separate process (the app stays responsive), with live progress,
loss / reward margin / accuracy charts, a Cancel button, and the finished runs to pick as the "after" model."""

import streamlit as st

from app.app_pages import pickers, training_view

st.title("Train with TI-DPO")
dataset = pickers.require_dataset()

st.subheader("New run")
training_view.train_form(dataset)

st.subheader("This session's job")
training_view.job_panel()

st.subheader("Finished runs")
training_view.runs_table()
