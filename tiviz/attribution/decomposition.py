"""The pair-level split of a margin from `token_score` (each response token's own exact term of the score).

The two responses are aligned (`tiviz.alignment`): in a stretch both share, a token's term differs between the
sides only because an earlier difference changed its context (a shared prefix cancels exactly); in a differing
stretch the tokens themselves differ. So

    margin = sum_chosen terms - sum_rejected terms = from_differing + from_shared

with `from_differing` the terms of the differing stretches (chosen minus rejected) and `from_shared` those of the
shared ones. For a reward model the prompt-only score is the same on both sides and cancels in the margin.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from tiviz.alignment import align_tokens, shared_tokens
from tiviz.errors import TableError

DECOMPOSED = ("token_score", "implicit_reward")


def margin_split(table: pd.DataFrame, method: str = "token_score") -> pd.DataFrame:
    """Split each pair's margin into the part from the stretches where the responses differ and the part from
    the stretches they share.

    Args:
        table: a tidy table with `method` rows (`token_score`, or its old id `implicit_reward`).
    Returns:
        one row per pair: pair_id, margin, from_differing, from_shared (margin = from_differing + from_shared),
        n_differing_chosen, n_differing_rejected, n_shared (shared response tokens per side).
    """
    if method not in DECOMPOSED:
        raise TableError(f"margin_split reads a decomposition ({', '.join(DECOMPOSED)}), not {method!r}")
    rows = table[(table["method"] == method) & table["in_response"].astype(bool)]
    if rows.empty:
        raise TableError(f"the table has no response rows of method {method!r}. Fix: attribute with "
                         f"methods including {method!r}")
    rows = rows.assign(shared=shared_tokens(rows).to_numpy(),
                       signed=rows["score"].where(rows["side"] == "chosen", -rows["score"]))
    out = []
    for pid, g in rows.groupby("pair_id", sort=False):
        differ = g[~g["shared"]]
        out.append({
            "pair_id": pid, "margin": float(g["signed"].sum()),
            "from_differing": float(differ["signed"].sum()), "from_shared": float(g.loc[g["shared"], "signed"].sum()),
            "n_differing_chosen": int((differ["side"] == "chosen").sum()),
            "n_differing_rejected": int((differ["side"] == "rejected").sum()),
            "n_shared": int((g["shared"] & (g["side"] == "chosen")).sum()),
        })
    return pd.DataFrame(out)


def pair_values(chosen_ids: Sequence[Hashable], rejected_ids: Sequence[Hashable], chosen_terms: ArrayLike,
                rejected_terms: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """One pair's response terms in the pair view (docs/METHOD.md §9): in a stretch both responses share, each
    token gets half its own term minus its aligned counterpart's (the rejected side the negative), elsewhere its
    own term; so sum(chosen) - sum(rejected) is unchanged. Returns (chosen values, rejected values), float64."""
    sc, sr = np.asarray(chosen_terms, dtype=np.float64), np.asarray(rejected_terms, dtype=np.float64)
    c, r = sc.copy(), sr.copy()
    for seg in align_tokens(chosen_ids, rejected_ids):
        if seg.kind == "same":
            ci, ri = slice(*seg.chosen), slice(*seg.rejected)
            c[ci] = (sc[ci] - sr[ri]) / 2
            r[ri] = -c[ci]
    return c, r


def pair_terms(table: pd.DataFrame, method: str = "token_score") -> pd.DataFrame:
    """A pair view of a decomposition in a table (`pair_values` per pair), for ranking tokens by what they do to
    the margin: sum(chosen values) - sum(rejected values) is the margin, as `margin_split` splits it. Returns the
    method's rows with those values, as method `METHOD_pair`. (`attribute(..., methods=["token_score_pair"])`
    computes the same view from the model directly.)
    """
    if method not in DECOMPOSED:
        raise TableError(f"pair_terms reads a decomposition ({', '.join(DECOMPOSED)}), not {method!r}")
    rows = table[table["method"] == method].copy()
    if rows.empty:
        raise TableError(f"the table has no rows of method {method!r}. Fix: attribute with methods including "
                         f"{method!r}")
    resp = rows[rows["in_response"].astype(bool)]
    for _, g in resp.groupby("pair_id", sort=False):
        sides = {s: x.sort_values("position") for s, x in g.groupby("side")}
        if set(sides) != {"chosen", "rejected"}:
            continue
        c, r = sides["chosen"], sides["rejected"]
        vc, vr = pair_values(c["token_id"].tolist(), r["token_id"].tolist(), c["score"].to_numpy(float),
                             r["score"].to_numpy(float))
        rows.loc[c.index, "score"] = vc
        rows.loc[r.index, "score"] = vr
    # weights as `attribute` sets them: |score| over the response, normalised to sum 1 per sequence
    mag = rows["score"].abs().where(rows["in_response"].astype(bool))
    total = mag.groupby([rows["pair_id"], rows["side"]]).transform("sum")
    rows["weight"] = (mag / total).where(total > 0)
    rows["method"] = f"{method}_pair"
    return rows
