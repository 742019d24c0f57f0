"""The quality ranking that picks the method the app opens on: written from the benchmark's rows, read back with
its schema checked, the best available method per scorer kind with the figure behind it, and a fallback with
gradient first when there is no ranking."""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import pytest

from tiviz.errors import DataError
from tiviz.evaluation import method_ranking as ranking

ROWS = [  # as benchmarks/preference_quality.py collects them
    {"data": "planted", "scorer": "base", "method": "gradient", "auprc": 0.40, "auprc_random": 0.20, "n_pairs": 40},
    {"data": "planted", "scorer": "base", "method": "attention", "auprc": 0.36, "auprc_random": 0.12, "n_pairs": 40},
    {"data": "planted", "scorer": "base", "method": "tidpo", "auprc": 0.22, "auprc_random": 0.20, "n_pairs": 40},
    {"data": "planted", "scorer": "base", "method": "occlusion", "skipped": "too slow"},
    {"data": "planted", "scorer": "base", "method": "token_score", "auprc": math.nan, "auprc_random": 0.2,
     "n_pairs": 40},
    {"data": "sample", "scorer": "base", "method": "tidpo", "auprc": 0.99, "auprc_random": 0.10, "n_pairs": 20},
    {"data": "planted", "scorer": "dpo", "method": "implicit_reward", "auprc": 0.61, "auprc_random": 0.20,
     "n_pairs": 40},
    {"data": "planted", "scorer": "dpo", "method": "gradient", "auprc": 0.50, "auprc_random": 0.20, "n_pairs": 40},
    {"data": "planted", "scorer": "rm", "method": "grad_x_input", "auprc": 0.45, "auprc_random": 0.20, "n_pairs": 40},
]


@pytest.fixture()
def ranked(tmp_path, monkeypatch) -> Path:
    path = ranking.write_ranking(ROWS, tmp_path / "quality_ranking.json", source="benchmarks/x.py --write-ranking")
    monkeypatch.setattr(ranking, "RANKING_FILE", path)
    return path


def test_the_ranking_file_holds_planted_rows_best_lift_first(ranked):
    data = json.loads(ranked.read_text())
    assert data["source"] == "benchmarks/x.py --write-ranking"
    kinds = data["by_scorer_kind"]
    assert set(kinds) == {"likelihood", "implicit_reward", "reward_model"}
    # attention 0.36 / 0.12 = 3.0x beats gradient 0.40 / 0.20 = 2.0x: ranked by lift, not by raw AUPRC
    assert [e["method"] for e in kinds["likelihood"]] == ["attention", "gradient", "tidpo"]  # sample, NaN, skip out
    assert kinds["likelihood"][0] == {"method": "attention", "auprc": 0.36, "auprc_random": 0.12, "data": "planted",
                                      "n_pairs": 40}
    assert [e["method"] for e in kinds["implicit_reward"]] == ["implicit_reward", "gradient"]


def test_best_method_is_the_best_ranked_available_one_with_its_figure(ranked):
    method, reason = ranking.best_method("likelihood", ["gradient", "attention", "tidpo"])
    assert method == "attention"
    assert "AUPRC 0.36 vs 0.12 random (3.0x)" in reason and "best of 3" in reason and "40 pairs" in reason
    assert "measured by benchmarks/x.py --write-ranking; docs/EVALUATION.md" in reason  # the command behind it
    method, reason = ranking.best_method("likelihood", ["tidpo", "gradient"])
    assert method == "gradient" and "2nd of 3" in reason
    assert ranking.best_method("reward_model", ["grad_x_input"])[0] == "grad_x_input"
    assert ranking.best_method("reward_model", ["gradient"]) is None  # ranks none of them
    assert ranking.best_method("no_such_kind", ["gradient"]) is None


def test_no_ranking_file_means_none_and_a_gradient_first_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(ranking, "RANKING_FILE", tmp_path / "missing.json")
    assert ranking.best_method("likelihood", ["tidpo", "gradient"]) is None
    method, reason = ranking.default_method("likelihood", ["tidpo", "attention", "gradient"])
    assert method == "gradient" and "no quality ranking" in reason
    assert ranking.default_method("likelihood", ["tidpo", "attention"])[0] == "attention"
    assert ranking.default_method("likelihood", ["tidpo"])[0] == "tidpo"  # the only one left
    assert ranking.default_method("likelihood", ["tidpo", "some_new_method"])[0] == "some_new_method"


def test_a_ranking_is_preferred_to_the_fallback(ranked):
    assert ranking.default_method("likelihood", ["tidpo", "attention", "gradient"])[0] == "attention"
    assert ranking.default_method("reward_model", ["tidpo", "gradient"])[0] == "gradient"  # ranked: none of them


@pytest.mark.parametrize(("text", "field"), [
    ("[1, 2]", "by_scorer_kind"),
    ('{"by_scorer_kind": {"likelihood": {"method": "gradient"}}}', "by_scorer_kind.likelihood"),
    ('{"by_scorer_kind": {"likelihood": [{"method": "gradient", "auprc": 0.4}]}}', "by_scorer_kind.likelihood[0]"),
    ('{"by_scorer_kind": {"likelihood": [{"method": "gradient", "auprc": "high", "auprc_random": 0.2, '
     '"data": "planted", "n_pairs": 4}]}}', "by_scorer_kind.likelihood[0]"),
    ('{"by_scorer_kind": {"likelihood": [{"method": "gradient", "auprc": 0.4, "auprc_random": 0, '
     '"data": "planted", "n_pairs": 4}]}}', "by_scorer_kind.likelihood[0]"),
])
def test_a_file_breaking_the_schema_is_named_with_its_field(tmp_path, monkeypatch, text, field):
    path = tmp_path / "quality_ranking.json"
    path.write_text(text)
    monkeypatch.setattr(ranking, "RANKING_FILE", path)
    with pytest.raises(DataError) as err:
        ranking.best_method("likelihood", ["gradient"])
    assert err.value.source == str(path) and err.value.field == field
    method, reason = ranking.default_method("likelihood", ["tidpo", "gradient"])  # the default still exists
    assert method == "gradient" and "unreadable" in reason and field in reason


def test_not_json_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "quality_ranking.json"
    path.write_text("{not json")
    monkeypatch.setattr(ranking, "RANKING_FILE", path)
    with pytest.raises(DataError, match="not a readable JSON file"):
        ranking.read_ranking()


def test_an_unknown_benchmark_scorer_is_refused_naming_the_row():
    with pytest.raises(DataError, match="row 1, field 'scorer'"):
        ranking.ranking_from_rows([ROWS[0], {**ROWS[0], "scorer": "gpt"}])


def test_the_ranking_file_is_package_data():
    """pyproject ships *.json of tiviz.evaluation, so an installed package has the ranking beside this module."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setup["package-data"]["tiviz.evaluation"]
    assert any(fnmatch.fnmatch(ranking.RANKING_FILE.name, p) for p in patterns)
    assert ranking.RANKING_FILE.parent == Path(ranking.__file__).parent


def test_the_shipped_ranking_reads_and_ranks_only_methods_each_scorer_can_give():
    """The file the package ships (written by the benchmark) passes the schema, and every method it ranks for a
    scorer kind is one that kind can give, so the app never opens on a method it cannot compute."""
    from tiviz.attribution.methods import scorer_methods

    shipped = ranking.read_ranking(ranking.RANKING_FILE)
    if shipped is None:
        pytest.skip("no ranking shipped (benchmarks/preference_quality.py --write-ranking writes it)")
    assert shipped["by_scorer_kind"]
    for kind, entries in shipped["by_scorer_kind"].items():
        allowed = scorer_methods(kind)
        assert entries and all(e["method"] in allowed for e in entries), kind
        lifts = [ranking.lift(e) for e in entries]
        assert lifts == sorted(lifts, reverse=True), kind
