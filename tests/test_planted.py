"""Planted-cue pairs: seeded, two differing spans only, the rationale on the cue alone, positions and label balanced."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from tiviz.data import load_pairs
from tiviz.errors import ConfigError
from tiviz.evaluation.plausibility import rationale_spans
from tiviz.planted import TEMPLATES, main, planted_pairs, split_pairs

PAIRS = planted_pairs(400, seed=0)
SIDES = ("chosen", "rejected")


def test_same_seed_same_pairs_other_seed_other_pairs():
    assert [p.to_record() for p in planted_pairs(40, seed=3)] == [p.to_record() for p in planted_pairs(40, seed=3)]
    assert [p.chosen for p in planted_pairs(40, seed=3)] != [p.chosen for p in planted_pairs(40, seed=4)]
    # pair i does not depend on how many pairs are drawn
    assert [p.to_record() for p in planted_pairs(8, seed=3)] == [p.to_record() for p in planted_pairs(40, seed=3)[:8]]


def test_every_template_appears_in_turn_and_can_be_chosen_alone():
    assert Counter(p.extra["template"] for p in PAIRS) == {t: 100 for t in TEMPLATES}
    assert {p.extra["template"] for p in planted_pairs(12, 0, "fact")} == {"fact"}
    with pytest.raises(ConfigError, match="template"):
        planted_pairs(4, 0, "nope")
    with pytest.raises(ConfigError, match="n"):
        planted_pairs(0, 0)


def test_responses_differ_in_exactly_the_cue_and_the_distractor():
    for p in PAIRS:
        (cs, ce), (rs, re) = p.extra["cue_chosen"], p.extra["cue_rejected"]
        (ds, de), (es, ee) = p.extra["distractor_chosen"], p.extra["distractor_rejected"]
        assert p.chosen[cs:ce] == p.extra["cue_correct"] and p.rejected[rs:re] == p.extra["cue_wrong"]
        assert p.chosen[ds:de] == p.extra["distractor_value_chosen"]
        assert p.rejected[es:ee] == p.extra["distractor_value_rejected"]
        assert p.chosen[cs:ce] != p.rejected[rs:re] and p.chosen[ds:de] != p.rejected[es:ee]

        def blanked(text: str, spans: list[list[int]]) -> str:
            for s, e in sorted(spans, reverse=True):
                text = text[:s] + "<>" + text[e:]
            return text

        assert blanked(p.chosen, [[cs, ce], [ds, de]]) == blanked(p.rejected, [[rs, re], [es, ee]])
        assert ce <= ds or de <= cs  # the two spans do not overlap


def test_rationale_marks_the_cue_once_and_nothing_else():
    for p in PAIRS:
        for side in SIDES:
            text = p.response_text(side)
            rationale = p.rationale_chosen if side == "chosen" else p.rationale_rejected
            assert rationale_spans(text, rationale) == [tuple(p.extra[f"cue_{side}"])]


def test_responses_are_long_and_cue_and_distractor_positions_vary():
    words = [len(p.chosen.split()) for p in PAIRS]
    assert min(words) >= 45 and max(words) <= 140
    relative = [p.extra["cue_chosen"][0] / len(p.chosen) for p in PAIRS]
    assert min(relative) < 0.15 and max(relative) > 0.85 and statistics.pstdev(relative) > 0.2
    assert len({p.extra["cue_chosen"][0] for p in PAIRS}) > 100
    assert len({p.extra["distractor_chosen"][0] for p in PAIRS}) > 100


def test_label_and_distractor_are_balanced_and_independent():
    before = sum(p.extra["cue_chosen"][0] < p.extra["distractor_chosen"][0] for p in PAIRS) / len(PAIRS)
    assert 0.4 < before < 0.6
    numbers = [p for p in PAIRS if p.extra["template"] == "arithmetic"]
    above = sum(int(p.extra["cue_wrong"]) > int(p.extra["cue_correct"]) for p in numbers) / len(numbers)
    assert 0.35 < above < 0.65  # the wrong number is not simply the larger one
    # which of the two drawn values goes to chosen is a fair coin: no value leans to one side
    chosen = Counter(p.extra["distractor_value_chosen"] for p in PAIRS)
    rejected = Counter(p.extra["distractor_value_rejected"] for p in PAIRS)
    values = set(chosen) | set(rejected)
    chi2 = sum((chosen[v] - rejected[v]) ** 2 / (chosen[v] + rejected[v]) for v in values)
    assert chi2 < 2 * len(values)  # about len(values) degrees of freedom under independence
    earlier = sum(p.extra["distractor_value_chosen"] < p.extra["distractor_value_rejected"] for p in PAIRS)
    assert 0.4 < earlier / len(PAIRS) < 0.6
    assert all(p.extra["cue_correct"] != p.extra["cue_wrong"] for p in PAIRS)


def test_cli_writes_balanced_splits_that_load(tmp_path):
    main(["--n", "48", "--seed", "1", "--out", str(tmp_path)])
    train, test = load_pairs(tmp_path / "train.jsonl"), load_pairs(tmp_path / "test.jsonl")
    assert (len(train), len(test)) == (36, 12)
    assert not {p.id for p in train} & {p.id for p in test}
    assert Counter(p.extra["template"] for p in test) == {t: 3 for t in TEMPLATES}
    assert [p.to_record() for p in train + test] == [p.to_record() for p in split_pairs(planted_pairs(48, 1))[0]
                                                     + split_pairs(planted_pairs(48, 1))[1]]
    assert train[0].rationale_chosen and train[0].extra["cue_chosen"]


def test_fillers_set_the_response_length():
    short = planted_pairs(40, seed=0, fillers=(1, 3))
    assert max(len(p.chosen.split()) for p in short) < min(len(p.chosen.split()) for p in PAIRS[:40])
    assert all(rationale_spans(p.chosen, p.rationale_chosen) == [tuple(p.extra["cue_chosen"])] for p in short)
    with pytest.raises(ConfigError, match="fillers"):
        planted_pairs(4, 0, fillers=(3, 1))
