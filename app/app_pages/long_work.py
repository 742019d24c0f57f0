"""Long work under a progress bar: the attribution table and the preference scores, shown at once when cached,
otherwise computed by `app.state` (the library does the work) with a bar that goes when it ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st

from app import state
from tiviz.errors import TivizError


@contextmanager
def progress(label: str) -> Iterator[state.Progress]:
    """A progress bar for long work, removed when it ends."""
    bar = st.progress(0.0, text=state.md_literal(label))

    def update(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=state.md_literal(f"{label}: {message}"))

    try:
        yield update
    finally:
        bar.empty()


def attribution(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str],
                methods: Sequence[str], settings: dict[str, Any] | None = None, label: str = "Attributing") -> pd.DataFrame:
    """The attribution table, instantly when cached, else computed under a progress bar; errors shown, page
    stopped."""
    hit = state.cached_attribution(choice, dataset, pair_ids, methods, settings)
    if hit is not None:
        return hit
    try:
        with progress(label) as update:
            return state.attribution(choice, dataset, pair_ids, methods, settings, progress=update)
    except TivizError as err:
        st.error(state.describe_error(err))
        st.stop()
        raise  # unreachable: st.stop raises


def dataset_table(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str],
                  methods: Sequence[str], *, key: str) -> pd.DataFrame:
    """A dataset-wide table: shown at once when cached, else computed when the user presses the button (it
    can take a while on the real model), stopping the page until then."""
    hit = state.cached_attribution(choice, dataset, pair_ids, methods)
    if hit is not None:
        return hit
    ask = st.empty()
    with ask.container():
        st.caption(f"{len(pair_ids)} pairs × {len(methods)} methods are not computed yet.")
        clicked = st.button(f"Attribute {len(pair_ids)} pairs", key=key, type="primary")
    if not clicked:
        st.stop()
    ask.empty()
    return attribution(choice, dataset, pair_ids, methods, label=f"Attributing {len(pair_ids)} pairs")


def scores(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str]) -> pd.DataFrame:
    """The pairs' preference scores under a progress bar."""
    with progress("Scoring") as update:
        return state.preference_scores(choice, dataset, pair_ids, progress=update)


def scorer_scores(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str]) -> pd.DataFrame:
    """The pairs' scores under the choice's own scorer, under a progress bar."""
    with progress("Scoring") as update:
        return state.scorer_scores(choice, dataset, pair_ids, progress=update)


def training_weights(run: state.ModelChoice, dataset: state.Dataset, pair_id: str, when: str) -> pd.DataFrame | None:
    """The token weights the run's training gave a pair at its start or end, under a spinner; None, with the
    error shown, when there are none to show."""
    try:
        with st.spinner(f"Recomputing the run's token weights ({when})…"):
            return state.training_weights(run, dataset, pair_id, when)
    except TivizError as err:
        st.error(state.describe_error(err))
        return None
