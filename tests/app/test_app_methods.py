"""Methods page: every method on one pair at once, their agreement heatmap, and IG's convergence delta."""

from __future__ import annotations

import re

import pytest
from apptools import html_bodies, plotly_array, plotly_specs

from tiviz.data import load_pairs

DEFAULT = ["tidpo", "gradient", "grad_x_input", "integrated_gradients", "attention"]


@pytest.fixture()
def methods_page(new_app):
    at = new_app()
    at.switch_page("app_pages/methods.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shaded_blocks(at) -> list[tuple[str, str]]:
    return [m for b in html_bodies(at) for m in re.findall(r'(\w+) response · ([\w_]+)</div>', b)]


def test_every_method_shaded_on_both_sides(methods_page):
    at = methods_page
    blocks = shaded_blocks(at)
    assert sorted(blocks) == sorted((side, m) for m in DEFAULT for side in ("Chosen", "Rejected"))


def test_agreement_heatmap_matches_the_library(methods_page):
    from tiviz.attribution import attribute
    from tiviz.compare import agreement_matrix, method_agreement
    from tiviz.testing import tiny_model, tiny_tokenizer

    at = methods_page
    heat = next(s for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap")["data"][0]
    assert heat["x"] == DEFAULT
    pair = load_pairs("sample_data/train.jsonl")[:1]
    table = attribute(tiny_model(seed=0), pair, DEFAULT, tokenizer=tiny_tokenizer(), n_steps=16)
    expected = agreement_matrix(method_agreement(table, DEFAULT), "spearman", DEFAULT).to_numpy()
    got = plotly_array(heat["z"])
    for i in range(len(DEFAULT)):
        for j in range(len(DEFAULT)):
            assert got[i, j] == pytest.approx(expected[i, j], abs=1e-6)


def test_convergence_delta_is_shown(methods_page):
    at = methods_page
    deltas = [m for m in at.metric if "delta / |f(x) − f(baseline)|" in m.label]
    assert [m.label.split(":")[0] for m in deltas] == ["chosen", "rejected"]
    for m in deltas:
        assert m.value.endswith("%") and float(m.value.rstrip("%")) < 5.0  # completeness within 5 %


def test_fewer_methods_and_more_steps(methods_page):
    at = methods_page
    at.multiselect(key="methods_list").set_value(["attention", "gradient"]).run()
    at.slider(key="methods_ig_steps").set_value(8).run()
    assert not at.exception
    assert sorted({m for _, m in shaded_blocks(at)}) == ["attention", "gradient"]
    assert not [m for m in at.metric if "delta" in m.label]  # no IG, no delta
    at.multiselect(key="methods_list").set_value([]).run()
    assert any("at least one method" in i.value for i in at.info)
