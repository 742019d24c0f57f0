"""The method pickers open on the method the quality benchmark ranks best for the scorer's kind (a ranking file
written here through the library, as the benchmark writes it), say why, follow the scorer while the user keeps
the default, and fall back to gradient without a ranking; any method, tidpo included, can still be picked."""

from __future__ import annotations

import pytest
from apptools import FALLBACK_METHOD, token_blocks

from tiviz.evaluation import method_ranking

ROWS = [  # benchmarks/preference_quality.py's rows: planted-cue AUPRC against random, per scorer
    {"data": "planted", "scorer": "base", "method": "gradient", "auprc": 0.40, "auprc_random": 0.20, "n_pairs": 40},
    {"data": "planted", "scorer": "base", "method": "attention", "auprc": 0.36, "auprc_random": 0.12, "n_pairs": 40},
    {"data": "planted", "scorer": "dpo", "method": "grad_x_input", "auprc": 0.55, "auprc_random": 0.2, "n_pairs": 40},
    {"data": "planted", "scorer": "dpo", "method": "attention", "auprc": 0.30, "auprc_random": 0.2, "n_pairs": 40},
]


def plain(text: str) -> str:
    return text.replace("\\", "").replace("\u2060", "")


def captions(at) -> list[str]:
    return [plain(c.value) for c in at.caption]


@pytest.fixture()
def ranked(tmp_path, monkeypatch):
    path = method_ranking.write_ranking(ROWS, tmp_path / "quality_ranking.json")
    monkeypatch.setattr(method_ranking, "RANKING_FILE", path)
    return path


def test_inspect_opens_on_the_best_ranked_method_and_follows_the_scorer(new_app, finished_run, ranked):
    at = new_app()
    picker = at.selectbox(key="inspect_method")
    assert picker.value == "attention"  # 3.0x random beats gradient's 2.0x
    assert any(c.startswith("Opened on attention for likelihood scorers: planted-cue AUPRC 0.36 vs 0.12 random "
                            "(3.0x), best of 2") and "docs/EVALUATION.md" in c for c in captions(at))
    assert ("chosen", "attention") in token_blocks(at)
    at.selectbox(key="inspect_model").set_value("trained").run()  # a run: its implicit reward is explained
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="inspect_method").value == "grad_x_input"
    assert any(c.startswith("Opened on grad_x_input for implicit reward scorers: planted-cue AUPRC 0.55")
               for c in captions(at))
    at.selectbox(key="inspect_method").set_value("tidpo").run()  # the user's pick stays, whatever the scorer
    at.selectbox(key="inspect_model").set_value("__base__").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="inspect_method").value == "tidpo" and ("chosen", "tidpo") in token_blocks(at)
    assert any(c.startswith("Default attention for likelihood scorers") for c in captions(at))
    assert "tidpo (TI-DPO's training weights)" in at.selectbox(key="inspect_method").options


def test_without_a_ranking_inspect_opens_on_gradient_and_says_so(new_app):
    at = new_app()
    assert at.selectbox(key="inspect_method").value == FALLBACK_METHOD == "gradient"
    assert any("no quality ranking for likelihood scorers" in c and "gradient first" in c for c in captions(at))


def test_before_after_opens_on_the_best_method_for_the_runs_scorer(new_app, finished_run, ranked):
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="ba_method").value == "grad_x_input"  # the run's kind: implicit reward
    assert any(c.startswith("Opened on grad_x_input for implicit reward scorers") for c in captions(at))
