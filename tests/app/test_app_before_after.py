"""Before / after page: weights under the base model and a finished run, their difference, the per-token
implicit reward, and the change in preference accuracy, checked against the library."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
from apptools import FALLBACK_METHOD, hand_logps, html_bodies, plotly_array, plotly_specs

from tiviz.data import load_pairs


def block_tips(at, side: str, method: str) -> list[str]:
    for b in html_bodies(at):
        if re.search(rf'{side} response · {re.escape(method)}', b):
            return [html.unescape(t) for t in re.findall(r'data-tip="([^"]*)"', b)]
    raise AssertionError(f"no block {side} {method}")


def test_without_runs_the_page_says_what_to_do(new_app):
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception
    assert any("No finished training run yet" in i.value for i in at.info)


def test_pair_before_after_change_and_reward(new_app, finished_run):
    from tiviz.attribution import attribute
    from tiviz.testing import tiny_model, tiny_tokenizer

    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="ba_run").value == "trained"
    titles = [m for b in html_bodies(at) for m in re.findall(r'(\w+) response · ([\w_]+)( · \w+)?</div>', b)]
    assert ("Chosen", FALLBACK_METHOD, " · before") in titles and ("Chosen", FALLBACK_METHOD, " · after") in titles
    assert ("Chosen", f"{FALLBACK_METHOD}_change", "") in titles and ("Rejected", "implicit_reward", "") in titles
    # the per-token implicit reward equals beta * (log pi_run - log pi_base), token by token
    pair = load_pairs("sample_data/train.jsonl")[:1]
    base = tiny_model(seed=0)
    ref = attribute(tiny_model(seed=1), pair, ["implicit_reward"], tokenizer=tiny_tokenizer(), ref_model=base)
    want = ref[(ref.side == "chosen") & ref.in_response].sort_values("position")["score"].to_numpy()
    tips = block_tips(at, "Chosen", "implicit_reward")
    got = np.array([float(re.search(r"score (\S+)", t).group(1)) for t in tips])
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, rtol=6e-3, atol=1e-7)  # shown with 3 significant digits
    assert np.abs(want).max() > 0  # two different models: a non-trivial reward
    # a run tiviz did not train (no TI-DPO settings) records no token weights, and the page says so
    assert any("No training weights to show" in i.value and "not a tiviz training run" in i.value.replace("\\", "")
               for i in at.info)


def test_dataset_accuracy_change(new_app, finished_run):
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    at.number_input(key="ba_n").set_value(3).run()
    at.button(key="ba_run_dataset").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from tiviz.testing import tiny_model, tiny_tokenizer

    # by hand, independently of tiviz's scoring: the run is seed 1, the base (and pi_ref) seed 0, beta 0.1
    tok, base_model, run_model = tiny_tokenizer(), tiny_model(seed=0), tiny_model(seed=1)
    base, run = [], []
    for pair in load_pairs("sample_data/train.jsonl")[:3]:
        (bc, br), (rc, rr) = hand_logps(base_model, tok, pair), hand_logps(run_model, tok, pair)
        base.append(bc - br)
        run.append((rc - rr, 0.1 * ((rc - bc) - (rr - br))))
    acc_b = np.mean([m > 0 for m in base])
    acc_a = np.mean([m > 0 for m, _ in run])
    shown = {m.label: m for m in at.metric}
    acc = shown["Preference accuracy (log-prob margin > 0)"]
    assert acc.value == f"{acc_a:.0%}" and acc.proto.delta == f"{acc_a - acc_b:+.0%} vs before"
    reward_acc = np.mean([r > 0 for _, r in run])
    assert shown["Reward accuracy (implicit reward margin > 0)"].value == f"{reward_acc:.0%}"
    scatter = next(s for s in plotly_specs(at) if any(t.get("name") == "pairs" for t in s["data"]))
    pts = next(t for t in scatter["data"] if t.get("name") == "pairs")
    assert plotly_array(pts["x"]).tolist() == pytest.approx(base, rel=1e-4, abs=1e-4)
    assert plotly_array(pts["y"]).tolist() == pytest.approx([m for m, _ in run], rel=1e-4, abs=1e-4)


def test_before_defaults_to_the_runs_own_base_model(new_app, finished_run, tmp_path, tiny_model_folder):
    """A run trained from another model than the app's: before and pi_ref are that model, read from config.json."""
    import json

    from tiviz.attribution import attribute
    from tiviz.models import LoadedModel, save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    other = tmp_path / "other-base"
    save_model(LoadedModel(tiny_model(seed=2), tiny_tokenizer(), "tiny-seed2"), other)
    (finished_run / "config.json").write_text(json.dumps({"model": str(other)}))
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="ba_base")
    assert picker.value == str(other) and picker.options[1] == str(tiny_model_folder)
    pair = load_pairs("sample_data/train.jsonl")[:1]
    want = attribute(tiny_model(seed=1), pair, ["implicit_reward"], tokenizer=tiny_tokenizer(),
                     ref_model=tiny_model(seed=2))
    want = want[(want.side == "chosen") & want.in_response].sort_values("position")["score"].to_numpy()
    got = np.array([float(re.search(r"score (\S+)", t).group(1)) for t in block_tips(at, "Chosen", "implicit_reward")])
    np.testing.assert_allclose(got, want, rtol=6e-3, atol=1e-7)
    before = block_tips(at, "Chosen", FALLBACK_METHOD)  # the first block of the method is "before": seed 2's
    at.selectbox(key="ba_base").set_value(str(tiny_model_folder)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert block_tips(at, "Chosen", FALLBACK_METHOD) != before  # the app's own model (seed 0) as before


def test_a_trl_output_folder_is_a_run(new_app, app_env):
    """A TRL / transformers run (weights only in checkpoint-N, no tiviz final/ or status) is listed and compared."""
    from tiviz.models import save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    run = app_env / "trl-dpo"
    save_model(tiny_model(seed=1), run / "checkpoint-1", tokenizer=tiny_tokenizer())
    save_model(tiny_model(seed=2), run / "checkpoint-2", tokenizer=tiny_tokenizer())
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="ba_run").value == "trl-dpo"
    from app import state

    assert state.run_weights("trl-dpo") == run.resolve() / "checkpoint-2"  # the latest checkpoint
    tips = block_tips(at, "Chosen", "implicit_reward")
    assert any(float(re.search(r"score (\S+)", t).group(1)) != 0 for t in tips)  # seed 2 against the base


ROOT = Path(__file__).resolve().parents[2]


def tips_scores(at, side: str, block: str) -> np.ndarray:
    return np.array([float(re.search(r"score (\S+)", t).group(1)) for t in block_tips(at, side, block)])


def train_tiny_run(runs: Path, model_folder: Path, name: str, **overrides) -> Path:
    """A real 2-step tiviz run of the app's model on sample_data/train.jsonl, in the app's runs folder."""
    from tiviz.training import config_from_preset, train

    cfg = config_from_preset("no-triplet", **{"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2,
                                              "save_steps": 0, "max_length": 96, "max_prompt_length": 48,
                                              **overrides})
    assert train(str(model_folder), str(ROOT / "sample_data" / "train.jsonl"), cfg, runs / name).state == "finished"
    return runs / name


def test_weights_training_used_at_the_start_and_the_end(new_app, app_env, tiny_model_folder):
    from tiviz.training.used_weights import training_weights

    run = train_tiny_run(app_env, tiny_model_folder, "tidpo-run")
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="ba_run").value == "tidpo-run"
    caps = [c.value.replace("\\", "") for c in at.caption]
    assert any("Weighting source: online: the L1 gradient of the max final logit (TI-DPO Eq. 4-5)" in c
               and "lam 0.7" in c for c in caps)
    pairs = load_pairs(ROOT / "sample_data" / "train.jsonl")
    shown = {}
    for when in ("start", "end"):
        want = training_weights(run, pairs, pair_ids=[pairs[0].id], when=when)  # the library, models from disk
        for side in ("chosen", "rejected"):
            rows = want[(want.side == side) & want.in_response].sort_values("position")["score"].to_numpy()
            assert rows.mean() == pytest.approx(1.0, rel=1e-5) and rows.std() > 0.01
            got = tips_scores(at, side.capitalize(), f"training_weights · {when}")
            np.testing.assert_allclose(got, rows, rtol=6e-3, atol=1e-7)  # shown with 3 significant digits
            shown[when, side] = got
    assert not np.allclose(shown["start", "chosen"], shown["end", "chosen"])  # the policy moved, so did w_t
    heads = [m.value for m in at.markdown]
    assert "**Start** (step 1: the policy is the run's base model)" in heads
    assert "**End** (the final model, after step 2)" in heads


def test_random_weights_need_the_runs_training_file(new_app, app_env, tiny_model_folder):
    from tiviz.training.used_weights import training_weights

    run = train_tiny_run(app_env, tiny_model_folder, "random-run", weighting="random", max_steps=1)
    at = new_app()
    at.switch_page("app_pages/before_after.py").run()
    assert not at.exception, [e.value for e in at.exception]
    pairs = load_pairs(ROOT / "sample_data" / "train.jsonl")
    want = training_weights(run, pairs, pair_ids=[pairs[0].id], when="start")
    want = want[(want.side == "chosen") & want.in_response].sort_values("position")["score"].to_numpy()
    np.testing.assert_allclose(tips_scores(at, "Chosen", "training_weights · start"), want, rtol=6e-3)
    assert any("random weights are a fresh draw at every step" in c.value.replace("\\", "") for c in at.caption)
    at.selectbox(key="dataset").set_value("sample: test").run()  # not the file the run trained on
    assert not at.exception, [e.value for e in at.exception]
    assert any("seeded by each pair's position" in i.value for i in at.info)
    assert not any("training_weights" in b for b in html_bodies(at))
