"""The on-disk attribution cache: the same table as without it, nothing computed twice, and a new key whenever
the weights, the settings or the text change."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from tiviz.attribution import attribute, core

METHODS = ["gradient", "attention", "tidpo"]


@pytest.fixture()
def calls(monkeypatch):
    """The methods each `_score_batch` call computed, in order."""
    seen: list[list[str]] = []
    real = core._score_batch

    def counting(scorer, batch, names, cfg):
        seen.append(list(names))
        return real(scorer, batch, names, cfg)

    monkeypatch.setattr(core, "_score_batch", counting)
    return seen


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False,
                                  rtol=1e-5, atol=1e-7)


def test_cached_table_equals_the_computed_one_and_computes_nothing(tok, pairs, model, tmp_path, calls):
    plain = attribute(model, pairs[:3], METHODS, tokenizer=tok)
    first = attribute(model, pairs[:3], METHODS, tokenizer=tok, cache=tmp_path)
    assert calls[-1] == METHODS and len(list(tmp_path.rglob("*.parquet"))) == 3 * len(METHODS)
    same_rows(first, plain)  # the cache does not change rows or their order
    n = len(calls)
    again = attribute(model, pairs[:3], METHODS, tokenizer=tok, cache=tmp_path, batch_size=1)  # batching: same key
    assert len(calls) == n  # no forward at all
    same_rows(again, plain)


def test_a_new_method_computes_only_that_method(tok, pairs, model, tmp_path, calls):
    attribute(model, pairs[:2], ["gradient"], tokenizer=tok, cache=tmp_path)
    calls.clear()
    both = attribute(model, pairs[:2], ["gradient", "attention"], tokenizer=tok, cache=tmp_path)
    assert calls == [["attention"]]
    same_rows(both, attribute(model, pairs[:2], ["gradient", "attention"], tokenizer=tok))


def test_new_weights_settings_or_text_mean_new_keys(tok, pairs, model, tmp_path, calls):
    attribute(model, pairs[:1], ["tidpo"], tokenizer=tok, cache=tmp_path)
    calls.clear()
    attribute(model, pairs[:1], ["tidpo"], tokenizer=tok, cache=tmp_path, lam=0.5)  # a setting that changes scores
    assert calls == [["tidpo"]]
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # weights changed in place: a different model
    calls.clear()
    attribute(model, pairs[:1], ["tidpo"], tokenizer=tok, cache=tmp_path)
    assert calls == [["tidpo"]]
    import dataclasses

    edited = dataclasses.replace(pairs[0], chosen=pairs[0].chosen + " More.")
    calls.clear()
    attribute(model, [edited], ["tidpo"], tokenizer=tok, cache=tmp_path)
    assert calls == [["tidpo"]]


def test_a_damaged_entry_is_recomputed(tok, pairs, model, tmp_path, calls, caplog):
    want = attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)
    (entry,) = tmp_path.rglob("*.parquet")
    entry.write_bytes(b"not parquet")
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="tiviz.attribution.cache"):
        got = attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)
    assert calls == [["gradient"]] and "unreadable" in caplog.text
    same_rows(got, want)
    pd.read_parquet(entry)  # rewritten whole


# Another value for every setting that changes only some methods (`tiviz.config.SETTING_SCOPE`).
OTHER_VALUES = {"n_steps": 4, "ig_tolerance": 0.0, "ig_max_steps": 8, "ig_method": "riemann_trapezoid",
                "ig_baseline": "zero", "ig_span": "full", "target": "reward", "norm": "l2", "attention_agg": "rollout",
                "lam": 0.3, "sigma_divisor": 2.0, "span": "full", "weight_scale": "sum1", "beta": 0.5}


def test_other_values_cover_every_scoped_setting():
    from tiviz.config import SETTING_SCOPE

    assert set(OTHER_VALUES) == {k for k, scope in SETTING_SCOPE.items() if scope}


@pytest.mark.parametrize("method", ["gradient", "grad_x_input", "integrated_gradients", "attention", "tidpo",
                                    "implicit_reward"])
def test_settings_a_method_does_not_depend_on_leave_its_rows_unchanged(tok, pairs, model, method):
    """The cache key's rule (`result_settings`) is right: what it leaves out of a method's key cannot change
    that method's rows. With a reference model, so that the reward target and beta are live."""
    from tiviz.config import result_settings
    from tiviz.testing import tiny_model

    ref = tiny_model(seed=1)
    base = attribute(model, pairs[:1], [method], tokenizer=tok, ref_model=ref)
    left_out = [k for k, v in OTHER_VALUES.items() if not result_settings(method, {k: v})]
    assert left_out  # every method ignores some settings
    for name in left_out:
        same_rows(attribute(model, pairs[:1], [method], tokenizer=tok, ref_model=ref, **{name: OTHER_VALUES[name]}),
                  base)
    assert len(left_out) < len(OTHER_VALUES)  # and depends on some
