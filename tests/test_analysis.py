"""tiviz.analysis: top tokens, concentration, position profile, completeness and differences of the tidy
table, on hand-made tables with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from tabletools import side_table

from tiviz import analysis


def test_top_tokens_ranks_by_magnitude():
    df = side_table(["a", "b", "c", "d"], [0.1, -0.4, 0.2, 0.3])
    top = analysis.top_tokens(df, k=2)
    assert top["text"].tolist() == ["b", "d"] and top["rank"].tolist() == [1, 2]
    assert top["weight"].tolist() == pytest.approx([0.4, 0.3])


def test_concentration_hand_values():
    uniform = side_table(list("abcdefghijk"), [1.0] * 11, method="gradient")
    one_hot = side_table(list("abcd"), [0.0, 0.0, 2.0, 0.0], method="gradient", pair_id="p2")
    c = analysis.concentration(pd.concat([uniform, one_hot])).set_index("pair_id")
    assert c.loc["p1", "entropy"] == pytest.approx(1.0)
    assert c.loc["p1", "top10_share"] == pytest.approx(2 / 11)  # ceil(1.1) = 2 tokens of 11
    assert c.loc["p2", "entropy"] == pytest.approx(0.0)
    assert c.loc["p2", "top10_share"] == pytest.approx(1.0)
    two = side_table(["a", "b"], [1.0, 3.0], method="gradient")
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert analysis.concentration(two)["entropy"].iloc[0] == pytest.approx(h)


def test_position_profile_uniform_is_one_and_ramp_rises():
    flat = side_table(list("abcdefghij"), [1.0] * 10, method="gradient")
    prof = analysis.position_profile(flat, bins=5)
    assert prof["mean_weight"].tolist() == pytest.approx([1.0] * 5)
    assert prof["n"].tolist() == [2] * 5
    ramp = side_table(list("abcdefghij"), list(range(1, 11)), method="gradient")
    p = analysis.position_profile(ramp, bins=10)["mean_weight"].to_numpy()
    assert np.all(np.diff(p) > 0)
    assert p[0] == pytest.approx(1 / 55 * 10) and p[-1] == pytest.approx(10 / 55 * 10)


def test_convergence_summary_recovers_the_baseline_gap():
    df = side_table(["a", "b"], [0.6, 0.4], method="integrated_gradients")
    df["convergence_delta"] = 0.1
    df.loc[~df.in_response, "score"] = 0.0
    s = analysis.convergence_summary(df).iloc[0]
    assert s.f_x_minus_f_baseline == pytest.approx(0.9)  # sum 1.0 minus delta 0.1
    assert s.relative_delta == pytest.approx(0.1 / 0.9)


def test_weight_difference():
    before = side_table(["a", "b"], [1.0, 3.0], method="tidpo")
    after = side_table(["a", "b"], [3.0, 1.0], method="tidpo")
    d = analysis.weight_difference(before, after)
    resp = d[d.in_response].sort_values("position")
    assert resp["score"].tolist() == pytest.approx([0.5, -0.5])
    assert set(d["method"]) == {"tidpo_change"}
