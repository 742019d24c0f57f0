"""Distributions page: a subset of the dataset attributed on demand; distribution, concentration and position
profile figures that carry the library's numbers."""

from __future__ import annotations

import pytest
from apptools import plotly_array, plotly_specs

from tiviz import analysis


@pytest.fixture()
def dist_page(new_app):
    at = new_app()
    at.switch_page("app_pages/distributions.py").run()
    at.number_input(key="dist_n").set_value(3).run()
    return at


def test_nothing_runs_until_asked_then_figures(dist_page):
    at = dist_page
    assert not at.get("plotly_chart")
    assert at.button(key="dist_run").label == "Attribute 3 pairs"
    at.button(key="dist_run").click().run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 3
    # cached: a rerun shows the figures without asking again
    at.run()
    assert len(at.get("plotly_chart")) == 3
    assert not [b for b in at.button if b.key == "dist_run"]


@pytest.mark.parametrize("kind", ["box", "violin", "ecdf"])
def test_every_kind(dist_page, kind):
    at = dist_page
    at.button(key="dist_run").click().run()
    at.radio(key="dist_kind").set_value(kind).run()
    assert not at.exception
    first = plotly_specs(at)[0]["data"][0]["type"]
    assert first == {"box": "box", "violin": "violin", "ecdf": "scatter"}[kind]


def test_concentration_and_profile_match_the_library(dist_page):
    from tiviz.attribution import attribute
    from tiviz.data import load_pairs
    from tiviz.testing import tiny_model, tiny_tokenizer

    at = dist_page
    at.button(key="dist_run").click().run()
    methods = at.multiselect(key="dist_methods").value
    table = attribute(tiny_model(seed=0), load_pairs("sample_data/train.jsonl")[:3], methods,
                      tokenizer=tiny_tokenizer())
    expected = analysis.concentration(table).groupby(["method", "side"])[["entropy", "top10_share"]].mean()
    shown = at.dataframe[0].value.set_index(["method", "side"])
    for idx, row in expected.iterrows():
        assert shown.loc[idx, "entropy"] == pytest.approx(row["entropy"], rel=1e-6)
        assert shown.loc[idx, "top10_share"] == pytest.approx(row["top10_share"], rel=1e-6)
    prof = analysis.position_profile(table, bins=10)
    spec = plotly_specs(at)[2]
    tidpo_chosen = next(t for t in spec["data"] if t.get("name") == "tidpo · chosen")
    want = prof[(prof.method == "tidpo") & (prof.side == "chosen")]["mean_weight"].tolist()
    assert plotly_array(tidpo_chosen["y"]).tolist() == pytest.approx(want)
