"""Planted pairs under the default tokenizer: every slot value is one token, the two sides of each pair have the
same token count (so a likelihood margin is not a length count), and the cue falls on whole tokens."""

from __future__ import annotations

import pytest

from tiviz.evaluation.plausibility import span_labels
from tiviz.planted import CAPITALS, CITIES, COLOURS, NAMES, planted_pairs

pytestmark = pytest.mark.integration


def test_slot_values_are_single_tokens_and_sides_match_in_length(smol):
    tok = smol.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    for value in NAMES + COLOURS + CITIES + tuple(city for _, city in CAPITALS):
        assert len(ids(" " + value)) == 1, value
    for p in planted_pairs(400, seed=0):
        assert len(ids(p.chosen)) == len(ids(p.rejected)), p.id
        for side in ("chosen", "rejected"):
            text = p.response_text(side)
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            s, e = p.extra[f"cue_{side}"]
            covered = [(a, b) for a, b in enc["offset_mapping"] if span_labels([(a, b)], [(s, e)]).any()]
            assert covered and covered[0][0] >= s - 1 and covered[-1][1] <= e, (p.id, side, covered)
