"""Before vs after: what training changed, token by token and over the dataset; and how far methods agree.

Two tables compare only when they tokenise the same pairs identically (same pair ids, sides, positions, token
ids, response spans); `check_same_tokens` names the first place they differ.

    from tiviz.compare import compare_tables, method_agreement
    cmp = compare_tables(read_table("before.parquet"), read_table("after.parquet"))
    print(cmp.summary_text()); cmp.write("compare/")
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tiviz.errors import TableError
from tiviz.scoring import margin_summary
from tiviz.table import PROVENANCE_KEY

log = logging.getLogger(__name__)

SEQ = ["pair_id", "side"]
TOKEN_KEY = ["pair_id", "side", "position"]
MarginSource = Literal["implicit_reward", "reward", "logprob", "margin"]
MARGIN_SOURCES: dict[str, str] = {
    "implicit_reward": "implicit reward sum_t beta (log pi - log pi_ref) of each response (implicit_reward "
                       "method's target_value); margin = reward(chosen) - reward(rejected)",
    "reward": "implicit reward beta (log pi(y|x) - log pi_ref(y|x)) (target 'reward'); "
              "margin = reward(chosen) - reward(rejected)",
    "logprob": "response log-likelihood log pi(y|x) (target 'logprob', no reference model); "
               "margin = log pi(chosen|x) - log pi(rejected|x)",
    "margin": "signed target 'margin' (chosen +, rejected -); margin = value(chosen) + value(rejected)",
}


# ---------------------------------------------------------------------------------------------- tokenisation


def sequence_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (pair_id, side, position) with token_id, token, in_response: the table without its methods."""
    cols = [*TOKEN_KEY, "token_id", "token", "in_response"]
    return table[cols].drop_duplicates(TOKEN_KEY).reset_index(drop=True)


def check_same_tokens(before: pd.DataFrame, after: pd.DataFrame, names: tuple[str, str] = ("before", "after")) -> None:
    """Raise `TableError` unless both tables hold the same sequences token for token.

    Same (pair_id, side) sequences, same positions, same token ids and the same response span are required;
    the error names the first mismatching pair, side and position (in the first table's order).
    """
    a, b = sequence_tokens(before), sequence_tokens(after)
    na, nb = names
    seq_a = list(dict.fromkeys(zip(a["pair_id"], a["side"], strict=True)))
    seq_b = list(dict.fromkeys(zip(b["pair_id"], b["side"], strict=True)))
    set_a, set_b = set(seq_a), set(seq_b)
    for s in seq_a:
        if s not in set_b:
            raise TableError(f"cannot compare: pair {s[0]!r} ({s[1]}) is in {na} but not in {nb}. Fix: attribute "
                             "the same pairs for both tables")
    extra = [s for s in seq_b if s not in set_a]
    if extra:
        raise TableError(f"cannot compare: pair {extra[0][0]!r} ({extra[0][1]}) is in {nb} but not in {na}. Fix: "
                         "attribute the same pairs for both tables")
    m = a.merge(b, on=TOKEN_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    # NaN (a position only one table has) compares unequal, so those rows are flagged too
    bad = ((m["_merge"] != "both") | m["token_id_a"].ne(m["token_id_b"]) | m["in_response_a"].ne(m["in_response_b"]))
    if not bad.any():
        return
    order = {s: i for i, s in enumerate(seq_a)}
    m = m[bad].copy()
    m["_order"] = [order[s] for s in zip(m["pair_id"], m["side"], strict=True)]
    row = m.sort_values(["_order", "position"]).iloc[0]
    where = f"pair {row['pair_id']!r}, side {row['side']}, position {int(row['position'])}"
    fix = "Fix: attribute both tables from the same pairs with the same tokenizer, chat template and max_length"
    if row["_merge"] == "left_only":
        raise TableError(f"cannot compare: tokenisation differs at {where}: {nb}'s sequence ends before it. {fix}")
    if row["_merge"] == "right_only":
        raise TableError(f"cannot compare: tokenisation differs at {where}: {na}'s sequence ends before it. {fix}")
    if row["token_id_a"] != row["token_id_b"]:
        raise TableError(f"cannot compare: tokenisation differs at {where}: {na} has token {int(row['token_id_a'])} "
                         f"({row['token_a']!r}), {nb} has {int(row['token_id_b'])} ({row['token_b']!r}). {fix}")
    raise TableError(f"cannot compare: the response starts at a different token at {where} (in_response "
                     f"{bool(row['in_response_a'])} in {na}, {bool(row['in_response_b'])} in {nb}). {fix}")


# ---------------------------------------------------------------------------------------------- per token


def token_changes(before: pd.DataFrame, after: pd.DataFrame, methods: list[str] | None = None) -> pd.DataFrame:
    """Per token and method: weight and score before, after, and the change (after - before).

    Also, per token, the implicit reward `beta (log pi - log pi_ref)` before, after and its change, from the
    `implicit_reward` method's scores when both tables have it (NaN otherwise).

    Returns:
        one row per (pair_id, side, position, method) of the methods in both tables: token, text, in_response,
        weight_before, weight_after, weight_change, score_before, score_after, score_change, reward_before,
        reward_after, reward_change.
    """
    check_same_tokens(before, after)
    common = _common_methods(before, after, methods)
    cols = [*TOKEN_KEY, "method", "score", "weight"]
    b = before[before["method"].isin(common)]
    a = after[after["method"].isin(common)][cols]
    out = b[[*TOKEN_KEY, "method", "token", "text", "in_response", "score", "weight"]].merge(
        a, on=[*TOKEN_KEY, "method"], how="inner", suffixes=("_before", "_after"))
    for v in ("weight", "score"):
        out[f"{v}_change"] = out[f"{v}_after"] - out[f"{v}_before"]
    if "implicit_reward" in common:
        r = out[out["method"] == "implicit_reward"][[*TOKEN_KEY, "score_before", "score_after"]]
        r = r.rename(columns={"score_before": "reward_before", "score_after": "reward_after"})
        out = out.merge(r, on=TOKEN_KEY, how="left")
        out["reward_change"] = out["reward_after"] - out["reward_before"]
    else:
        log.info("no implicit_reward method in both tables: per-token reward changes left empty")
        for c in ("reward_before", "reward_after", "reward_change"):
            out[c] = np.nan
    order = ["pair_id", "side", "position", "method", "token", "text", "in_response", "weight_before",
             "weight_after", "weight_change", "score_before", "score_after", "score_change", "reward_before",
             "reward_after", "reward_change"]
    return out[order].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- per dataset


def distribution_changes(before: pd.DataFrame, after: pd.DataFrame, methods: list[str] | None = None) -> pd.DataFrame:
    """Per method: how the response-token weight distribution moved.

    Columns: method; entropy_before/after/change (mean over sequences of the Shannon entropy of the weights
    divided by log T, 1 = uniform); top10_before/after/change (mean share of the weight held by the top
    ceil(10 % of T) tokens); ks_statistic, ks_pvalue (two-sample Kolmogorov-Smirnov test on the pooled
    weight x T values, T the response length, so sequences of different lengths share one scale);
    n_sequences.
    """
    from scipy.stats import ks_2samp

    from tiviz.analysis import concentration

    check_same_tokens(before, after)
    rows = []
    for m in _common_methods(before, after, methods):
        cb = concentration(before[before["method"] == m])
        ca = concentration(after[after["method"] == m])
        wb, wa = _relative_weights(before, m), _relative_weights(after, m)
        if len(wb) and len(wa):
            ks = ks_2samp(wb, wa)
            stat, p = float(ks.statistic), float(ks.pvalue)
        else:
            stat, p = math.nan, math.nan
        row: dict[str, Any] = {"method": m}
        for name, col in (("entropy", "entropy"), ("top10", "top10_share")):
            row[f"{name}_before"] = float(cb[col].mean())
            row[f"{name}_after"] = float(ca[col].mean())
            row[f"{name}_change"] = row[f"{name}_after"] - row[f"{name}_before"]
        row.update(ks_statistic=stat, ks_pvalue=p, n_sequences=int(cb["entropy"].notna().sum()))
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Preference:
    """Per-pair preference margins of one table and where they come from."""

    source: str  # a key of MARGIN_SOURCES
    per_pair: pd.DataFrame  # pair_id, chosen, rejected, margin

    @property
    def accuracy(self) -> float:
        """Share of pairs whose margin is > 0 (ties count as wrong, as TRL's rewards/accuracies)."""
        return margin_summary(self.per_pair["margin"])["accuracy"]

    @property
    def mean_margin(self) -> float:
        return margin_summary(self.per_pair["margin"])["mean_margin"]

    @property
    def description(self) -> str:
        return MARGIN_SOURCES[self.source]


def margin_sources(table: pd.DataFrame) -> dict[str, str]:
    """The margin sources a table supports, best first, each with the method whose target_value gives it."""
    prov = table.attrs.get(PROVENANCE_KEY, {}) or {}
    targets = dict(prov.get("method_targets") or {})
    present = list(dict.fromkeys(table["method"]))
    found: dict[str, str] = {}
    if "implicit_reward" in present:
        found["implicit_reward"] = "implicit_reward"
    for m in present:
        t = targets.get(m, prov.get("target") if m in ("gradient", "grad_x_input", "integrated_gradients") else None)
        if t in ("reward", "logprob", "margin") and t not in found:
            vals = table.loc[table["method"] == m, "target_value"]
            if vals.notna().any():
                found[t] = m
    return {s: found[s] for s in MARGIN_SOURCES if s in found}


def preference(table: pd.DataFrame, source: str | None = None) -> Preference:
    """Per-pair margins from the sequences' target values: the best source the table has, or `source`."""
    sources = margin_sources(table)
    if source is None:
        if not sources:
            raise TableError("no method in the table carries a per-sequence reward or log-prob target value. Fix: "
                             "attribute with implicit_reward (and --ref-model), or a gradient method with target "
                             "logprob or reward")
        source = next(iter(sources))
    if source not in sources:
        raise TableError(f"the table cannot give margins from {source!r}; it can from: "
                         f"{', '.join(sources) or 'nothing'}")
    m = sources[source]
    seq = table[table["method"] == m].groupby(SEQ, sort=False)["target_value"].first().unstack("side")
    for side in ("chosen", "rejected"):
        if side not in seq.columns:
            seq[side] = np.nan
    seq = seq.dropna(subset=["chosen", "rejected"])
    margin = seq["chosen"] + seq["rejected"] if source == "margin" else seq["chosen"] - seq["rejected"]
    per_pair = pd.DataFrame({"pair_id": seq.index.astype(str), "chosen": seq["chosen"].to_numpy(),
                             "rejected": seq["rejected"].to_numpy(), "margin": margin.to_numpy()})
    return Preference(source, per_pair.reset_index(drop=True))


def preference_changes(before: pd.DataFrame, after: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Preference accuracy and mean margin before and after, from the best source both tables share.

    Returns:
        (summary dict: source, description, accuracy_before/after/change, margin_before/after/change, n_pairs;
        per-pair frame: pair_id, margin_before, margin_after, margin_change)
    """
    sb, sa = margin_sources(before), margin_sources(after)
    shared = [s for s in sb if s in sa]
    if not shared:
        raise TableError(f"the tables share no margin source (before: {', '.join(sb) or 'none'}; after: "
                         f"{', '.join(sa) or 'none'}). Fix: attribute both with the same methods and target")
    pb, pa = preference(before, shared[0]), preference(after, shared[0])
    pp = pb.per_pair[["pair_id", "margin"]].merge(pa.per_pair[["pair_id", "margin"]], on="pair_id",
                                                   suffixes=("_before", "_after"))
    pp["margin_change"] = pp["margin_after"] - pp["margin_before"]
    summary = {
        "source": shared[0], "description": MARGIN_SOURCES[shared[0]],
        "accuracy_before": pb.accuracy, "accuracy_after": pa.accuracy, "accuracy_change": pa.accuracy - pb.accuracy,
        "margin_before": pb.mean_margin, "margin_after": pa.mean_margin,
        "margin_change": pa.mean_margin - pb.mean_margin, "n_pairs": len(pp),
    }
    return summary, pp


# ---------------------------------------------------------------------------------------------- agreement


def method_agreement(table: pd.DataFrame, methods: list[str] | None = None,
                     value: Literal["weight", "score"] = "weight") -> pd.DataFrame:
    """Spearman and Kendall (tau-b) rank correlation between every two methods, per (pair, side), over the
    response tokens.

    `value` "weight" (default) ranks by |score| (importance whatever its sign); "score" by the signed score.
    A method constant on a sequence has no ranking: its correlations there are NaN.

    Returns:
        pair_id, side, method_a, method_b, n_tokens, spearman, kendall.
    """
    from scipy.stats import kendalltau, spearmanr

    present = list(dict.fromkeys(table["method"]))
    names = [m for m in (methods or present) if m in present]
    resp = table[table["in_response"] & table["method"].isin(names)]
    rows = []
    for (pid, side), g in resp.groupby(SEQ, sort=False):
        wide = g.pivot(index="position", columns="method", values=value)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if a not in wide or b not in wide:
                    continue
                x = wide[a].to_numpy(dtype=float)
                y = wide[b].to_numpy(dtype=float)
                ok = np.isfinite(x) & np.isfinite(y)
                x, y = x[ok], y[ok]
                rho = tau = math.nan
                if len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        rho = float(spearmanr(x, y).statistic)
                        tau = float(kendalltau(x, y).statistic)
                rows.append({"pair_id": pid, "side": side, "method_a": a, "method_b": b, "n_tokens": len(x),
                             "spearman": rho, "kendall": tau})
    return pd.DataFrame(rows, columns=["pair_id", "side", "method_a", "method_b", "n_tokens", "spearman", "kendall"])


def agreement_summary(per_sequence: pd.DataFrame) -> pd.DataFrame:
    """Mean Spearman and Kendall per pair of methods over the sequences where both rank (NaN left out)."""
    g = per_sequence.groupby(["method_a", "method_b"], sort=False)
    out = g.agg(spearman=("spearman", "mean"), kendall=("kendall", "mean"),
                n_sequences=("spearman", lambda s: int(s.notna().sum()))).reset_index()
    return out


def agreement_matrix(per_sequence: pd.DataFrame, stat: Literal["spearman", "kendall"] = "spearman",
                     methods: list[str] | None = None) -> pd.DataFrame:
    """Square method x method matrix of the mean correlation (diagonal 1), for heatmaps."""
    names = methods or list(dict.fromkeys([*per_sequence["method_a"], *per_sequence["method_b"]]))
    mat = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for r in agreement_summary(per_sequence).itertuples():
        if r.method_a in mat.index and r.method_b in mat.index:
            mat.loc[r.method_a, r.method_b] = mat.loc[r.method_b, r.method_a] = getattr(r, stat)
    return mat


# ---------------------------------------------------------------------------------------------- bundle


@dataclass
class Comparison:
    """Everything `compare_tables` measured; `write(folder)` saves it, `summary_text()` prints it."""

    tokens: pd.DataFrame
    distributions: pd.DataFrame
    preference: dict[str, Any]
    margins: pd.DataFrame
    before_provenance: dict[str, Any]
    after_provenance: dict[str, Any]

    def summary_text(self) -> str:
        p = self.preference
        lines = [f"preference ({p['n_pairs']} pairs; margins from {p['source']}: {p['description']})",
                 f"  accuracy     {p['accuracy_before']:.3f} -> {p['accuracy_after']:.3f} "
                 f"({p['accuracy_change']:+.3f})",
                 f"  mean margin  {p['margin_before']:.4g} -> {p['margin_after']:.4g} ({p['margin_change']:+.4g})",
                 "weight distributions (entropy: 1 = uniform; top10: share of the top 10 % tokens)",
                 f"  {'method':<22}{'entropy':>22}{'top10':>22}{'KS D':>8}{'p':>10}"]
        for r in self.distributions.itertuples():
            lines.append(f"  {r.method:<22}{r.entropy_before:>9.3f} -> {r.entropy_after:<9.3f}"
                         f"{r.top10_before:>9.3f} -> {r.top10_after:<9.3f}{r.ks_statistic:>8.3f}{r.ks_pvalue:>10.3g}")
        rc = self.tokens["reward_change"].dropna()
        if len(rc):
            lines.append(f"per-token implicit reward change: mean {rc.mean():+.4g}, largest |change| "
                         f"{rc.abs().max():.4g}")
        return "\n".join(lines)

    def write(self, folder: str | Path) -> list[Path]:
        """Write tokens.parquet, distributions.csv, margins.csv and summary.json into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "tokens.parquet", folder / "distributions.csv", folder / "margins.csv",
                 folder / "summary.json"]
        self.tokens.to_parquet(paths[0], index=False)
        self.distributions.to_csv(paths[1], index=False)
        self.margins.to_csv(paths[2], index=False)
        summary = {"preference": self.preference, "distributions": self.distributions.to_dict("records"),
                   "before": self.before_provenance, "after": self.after_provenance}
        paths[3].write_text(json.dumps(summary, indent=2, default=_json_default, allow_nan=True), encoding="utf-8")
        return paths


def compare_tables(before: pd.DataFrame, after: pd.DataFrame, methods: list[str] | None = None) -> Comparison:
    """Token, distribution and preference changes between two tables of the same pairs (see the functions)."""
    tokens = token_changes(before, after, methods)
    dists = distribution_changes(before, after, methods)
    pref, margins = preference_changes(before, after)
    return Comparison(tokens, dists, pref, margins, dict(before.attrs.get(PROVENANCE_KEY, {})),
                      dict(after.attrs.get(PROVENANCE_KEY, {})))


def _common_methods(before: pd.DataFrame, after: pd.DataFrame, methods: list[str] | None) -> list[str]:
    in_after = set(after["method"])
    common = [m for m in dict.fromkeys(before["method"]) if m in in_after and (methods is None or m in methods)]
    if not common:
        raise TableError(f"the tables share no method (before: {', '.join(dict.fromkeys(before['method']))}; "
                         f"after: {', '.join(dict.fromkeys(after['method']))})")
    return common


def _relative_weights(table: pd.DataFrame, method: str) -> np.ndarray:
    """weight x T over the response tokens of one method (1 = uniform), NaN dropped."""
    from tiviz.analysis import relative_weight

    v = relative_weight(table[(table["method"] == method) & table["in_response"]]).to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
