"""All default methods on the real offline model, on one sample pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiviz.attribution import DEFAULT_METHODS, attribute
from tiviz.data import load_pairs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_default_methods_on_smollm2(smol):
    pair = load_pairs(ROOT / "sample_data" / "test.jsonl")[:1]
    df = attribute(smol, pair, DEFAULT_METHODS)
    resp = df[df.in_response]
    for side in ("chosen", "rejected"):
        text = pair[0].response_text(side)
        for m in DEFAULT_METHODS:
            rows = resp[(resp.side == side) & (resp.method == m)].sort_values("position")
            assert "".join(rows.text) == text
            assert rows.score.notna().all() and rows.weight.sum() == pytest.approx(1.0)
    ig = df[df.method == "integrated_gradients"].groupby("side").agg(s=("score", "sum"), d=("convergence_delta", "first"))
    rel = (ig.d.abs() / (ig.s - ig.d).abs()).max()
    assert rel < 0.1, f"IG completeness error {rel:.1%} of |f(x) - f(baseline)| at the default settings"
