"""Before/after comparison and method agreement on hand-built tables whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tiviz.compare import (
    agreement_matrix,
    agreement_summary,
    check_same_tokens,
    compare_tables,
    distribution_changes,
    method_agreement,
    preference,
    preference_changes,
    token_changes,
)
from tiviz.errors import TableError
from tiviz.table import PROVENANCE_KEY, validate

PROMPT = 2  # prompt tokens before each response


def toy_table(scores: dict[str, dict[tuple[str, str], list[float]]], *, targets: dict[str, dict] | None = None,
              method_targets: dict[str, str | None] | None = None, token_ids=None) -> pd.DataFrame:
    """A valid tidy table: `scores[method][(pair, side)]` are the response tokens' scores, after PROMPT prompt
    tokens; `targets[method][(pair, side)]` the sequence target value."""
    rows = []
    for m, seqs in scores.items():
        for (pid, side), sc in seqs.items():
            resp = np.asarray(sc, dtype=float)
            total = np.abs(resp).sum()
            n = PROMPT + len(resp)
            ids = token_ids[(pid, side)] if token_ids else list(range(10, 10 + n))
            for pos in range(n):
                in_resp = pos >= PROMPT
                s = resp[pos - PROMPT] if in_resp else 0.5
                rows.append({
                    "pair_id": pid, "side": side, "position": pos, "token_id": ids[pos], "token": f"t{ids[pos]}",
                    "text": f"w{pos} ", "char_start": 3 * (pos - PROMPT if in_resp else pos),
                    "char_end": 3 * (pos - PROMPT if in_resp else pos) + 3, "in_response": in_resp, "method": m,
                    "score": s, "weight": abs(s) / total if in_resp and total > 0 else np.nan,
                    "target_value": (targets or {}).get(m, {}).get((pid, side), np.nan),
                    "convergence_delta": np.nan,
                })
    df = validate(pd.DataFrame(rows))
    df.attrs[PROVENANCE_KEY] = {"model_id": "toy", "target": "logprob",
                                "method_targets": method_targets or {m: None for m in scores}}
    return df


SEQS = [("a", "chosen"), ("a", "rejected"), ("b", "chosen"), ("b", "rejected")]


def flat(method_scores: list[float]) -> dict[tuple[str, str], list[float]]:
    return {s: list(method_scores) for s in SEQS}


# ---------------------------------------------------------------------------------------------- tokenisation


def test_same_tables_pass_and_mismatches_are_named():
    base = toy_table({"m": flat([1, 2, 3])})
    check_same_tokens(base, base.copy())
    ids = {s: list(range(10, 15)) for s in SEQS}
    ids[("b", "rejected")] = [10, 11, 12, 99, 14]
    changed = toy_table({"m": flat([1, 2, 3])}, token_ids=ids)
    with pytest.raises(TableError, match=r"pair 'b', side rejected, position 3: before has token 13 .* after has 99"):
        check_same_tokens(base, changed)
    shorter = toy_table({"m": {**flat([1, 2, 3]), ("a", "chosen"): [1, 2]}})
    with pytest.raises(TableError, match=r"pair 'a', side chosen, position 4: after's sequence ends before it"):
        check_same_tokens(base, shorter)
    missing = toy_table({"m": {s: [1, 2, 3] for s in SEQS[:3]}})
    with pytest.raises(TableError, match=r"pair 'b' \(rejected\) is in before but not in after"):
        check_same_tokens(base, missing)
    shifted = base.copy()
    shifted.loc[(shifted["pair_id"] == "a") & (shifted["side"] == "chosen") & (shifted["position"] == 1),
                "in_response"] = True
    with pytest.raises(TableError, match=r"response starts at a different token at pair 'a', side chosen, position 1"):
        check_same_tokens(base, shifted)


def test_compare_refuses_mismatched_tables():
    base = toy_table({"m": flat([1, 2, 3])})
    other = toy_table({"m": {**flat([1, 2, 3]), ("a", "rejected"): [1, 2, 3, 4]}})
    with pytest.raises(TableError, match="tokenisation differs"):
        compare_tables(base, other)


# ---------------------------------------------------------------------------------------------- per token


def test_token_changes_hand_computed():
    before = toy_table({"m": flat([1, 1, 2]), "implicit_reward": flat([0, 0, 0])})
    after = toy_table({"m": flat([1, 2, 1]), "implicit_reward": flat([0.1, -0.2, 0.3])})
    t = token_changes(before, after)
    r = t[(t["pair_id"] == "a") & (t["side"] == "chosen") & (t["method"] == "m") & t["in_response"]]
    assert r["weight_before"].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert r["weight_after"].tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert r["weight_change"].tolist() == pytest.approx([0.0, 0.25, -0.25])
    assert r["reward_change"].tolist() == pytest.approx([0.1, -0.2, 0.3])  # every method's row carries it
    no_reward = token_changes(toy_table({"m": flat([1, 1, 2])}), toy_table({"m": flat([1, 2, 1])}))
    assert no_reward["reward_change"].isna().all()


# ---------------------------------------------------------------------------------------------- per dataset


def test_distribution_changes_identical_and_concentrated():
    spread = toy_table({"m": flat([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])})
    same = distribution_changes(spread, spread.copy()).iloc[0]
    assert same["entropy_before"] == pytest.approx(1.0) and same["entropy_change"] == pytest.approx(0.0)
    assert same["top10_before"] == pytest.approx(0.1)  # ceil(10 % of 10) = 1 token of 10 equal ones
    assert same["ks_statistic"] == 0.0 and same["ks_pvalue"] == pytest.approx(1.0)
    peaked = toy_table({"m": flat([20, 1, 1, 1, 1, 1, 1, 1, 1, 1])})
    d = distribution_changes(spread, peaked).iloc[0]
    assert d["entropy_change"] < 0 and d["top10_after"] == pytest.approx(20 / 29)
    assert d["ks_statistic"] == pytest.approx(0.9)  # 9 of 10 relative weights fell from 1 to 10/29, one rose
    assert d["ks_pvalue"] < 1e-6 and d["n_sequences"] == 4


def test_preference_from_implicit_reward_then_logprob():
    tv = {("a", "chosen"): 2.0, ("a", "rejected"): 1.0, ("b", "chosen"): -1.0, ("b", "rejected"): 0.5}
    both = toy_table({"implicit_reward": flat([1, 2]), "gradient": flat([1, 2])},
                     targets={"implicit_reward": tv, "gradient": {k: 10 * v for k, v in tv.items()}},
                     method_targets={"implicit_reward": None, "gradient": "logprob"})
    p = preference(both)
    assert p.source == "implicit_reward"
    assert p.per_pair.set_index("pair_id")["margin"].to_dict() == pytest.approx({"a": 1.0, "b": -1.5})
    assert p.accuracy == 0.5 and p.mean_margin == pytest.approx(-0.25)
    lp = preference(both, "logprob")
    assert lp.mean_margin == pytest.approx(-2.5) and "log pi" in lp.description
    signed = {("a", "chosen"): 2.0, ("a", "rejected"): -1.0, ("b", "chosen"): -1.0, ("b", "rejected"): -0.5}
    margin_t = toy_table({"gradient": flat([1, 2])}, targets={"gradient": signed},
                         method_targets={"gradient": "margin"})
    assert preference(margin_t).per_pair["margin"].tolist() == pytest.approx([1.0, -1.5])
    with pytest.raises(TableError, match="no method in the table carries"):
        preference(toy_table({"attention": flat([1, 2])}))


def test_preference_changes_before_after():
    tv_b = {("a", "chosen"): 0.0, ("a", "rejected"): 0.0, ("b", "chosen"): 0.0, ("b", "rejected"): 0.0}
    tv_a = {("a", "chosen"): 1.0, ("a", "rejected"): -1.0, ("b", "chosen"): 0.5, ("b", "rejected"): 1.0}
    before = toy_table({"implicit_reward": flat([0, 0])}, targets={"implicit_reward": tv_b})
    after = toy_table({"implicit_reward": flat([1, 1])}, targets={"implicit_reward": tv_a})
    summary, per_pair = preference_changes(before, after)
    assert summary["source"] == "implicit_reward"
    assert summary["accuracy_before"] == 0.0 and summary["accuracy_after"] == 0.5  # ties count as wrong
    assert summary["margin_after"] == pytest.approx((2.0 - 0.5) / 2)
    assert per_pair["margin_change"].tolist() == pytest.approx([2.0, -0.5])
    cmp = compare_tables(before, after)
    assert "accuracy     0.000 -> 0.500" in cmp.summary_text()


# ---------------------------------------------------------------------------------------------- agreement


def test_method_agreement_known_rankings():
    t = toy_table({"up": flat([1, 2, 3, 4]), "same": flat([10, 20, 30, 40]), "down": flat([4, 3, 2, 1]),
                   "flat": flat([1, 1, 1, 1])})
    per = method_agreement(t)
    assert len(per) == 4 * 6  # 4 sequences x 6 pairs of methods
    s = agreement_summary(per).set_index(["method_a", "method_b"])
    assert s.loc[("up", "same"), "spearman"] == pytest.approx(1.0)
    assert s.loc[("up", "same"), "kendall"] == pytest.approx(1.0)
    assert s.loc[("up", "down"), "spearman"] == pytest.approx(-1.0)
    assert s.loc[("up", "down"), "kendall"] == pytest.approx(-1.0)
    assert math.isnan(s.loc[("up", "flat"), "spearman"]) and s.loc[("up", "flat"), "n_sequences"] == 0
    m = agreement_matrix(per)
    assert m.loc["down", "up"] == m.loc["up", "down"] == pytest.approx(-1.0)
    assert np.diag(m.to_numpy()).tolist() == [1.0] * 4


def test_method_agreement_hand_computed_partial_order():
    # x = 1 2 3 4, y = 1 3 2 4: one discordant pair of six -> tau = (5 - 1) / 6; rho = 1 - 6*2/(4*15) = 0.8
    t = toy_table({"x": {("a", "chosen"): [1, 2, 3, 4]}, "y": {("a", "chosen"): [1, 3, 2, 4]}})
    r = method_agreement(t).iloc[0]
    assert r["spearman"] == pytest.approx(0.8) and r["kendall"] == pytest.approx(4 / 6) and r["n_tokens"] == 4


# ---------------------------------------------------------------------------------------------- files and CLI


def test_comparison_write_and_cli(tmp_path, capsys):
    from tiviz.cli import main
    from tiviz.table import write_table

    tv = {k: v for k, v in zip(SEQS, (1.0, 0.0, 2.0, 3.0), strict=True)}
    before = toy_table({"implicit_reward": flat([0, 0, 0]), "m": flat([1, 2, 3])}, targets={"implicit_reward": tv})
    after = toy_table({"implicit_reward": flat([0.1, 0, 0]), "m": flat([3, 2, 1])}, targets={"implicit_reward": tv})
    paths = compare_tables(before, after).write(tmp_path / "direct")
    assert {p.name for p in paths} == {"tokens.parquet", "distributions.csv", "margins.csv", "summary.json"}
    write_table(before, tmp_path / "before.parquet")
    write_table(after, tmp_path / "after.parquet")
    assert main(["compare", "--before", str(tmp_path / "before.parquet"), "--after", str(tmp_path / "after.parquet"),
                 "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "margins from implicit_reward" in out and "accuracy     0.500 -> 0.500" in out
    assert pd.read_csv(tmp_path / "cli" / "margins.csv")["margin_change"].tolist() == pytest.approx([0.0, 0.0])
    assert main(["compare", "--before", str(tmp_path / "before.parquet")]) == 0
    assert "method agreement" in capsys.readouterr().out
    bad = toy_table({"m": flat([1, 2])})
    write_table(bad, tmp_path / "bad.parquet")
    assert main(["compare", "--before", str(tmp_path / "before.parquet"), "--after", str(tmp_path / "bad.parquet")]) == 2
    assert "tokenisation differs" in capsys.readouterr().err
