"""The pair-level split of a margin from `token_score` (each response token's own exact term of the score).

The two responses are aligned (`tiviz.alignment`): in a stretch both share, a token's term differs between the
sides only because an earlier difference changed its context (a shared prefix cancels exactly); in a differing
stretch the tokens themselves differ. So

    margin = sum_chosen terms - sum_rejected terms = from_differing + from_shared

with `from_differing` the terms of the differing stretches (chosen minus rejected) and `from_shared` those of the
shared ones. For a reward model the prompt-only score is the same on both sides and cancels in the margin.
"""

from __future__ import annotations

import pandas as pd

from tiviz.alignment import shared_tokens
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


def pair_terms(table: pd.DataFrame, method: str = "token_score") -> pd.DataFrame:
    """A pair view of a decomposition, for ranking tokens by what they do to the margin: in a shared stretch each
    token's value is half its own term minus its aligned counterpart's (0 where an earlier difference left its
    likelihood alone), in a differing stretch its own term. So sum(chosen values) - sum(rejected values) is the
    margin, as `margin_split` splits it. Returns the method's rows with those values, as method `METHOD_pair`.
    """
    from tiviz.alignment import align_tokens

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
        sc, sr = c["score"].to_numpy(float), r["score"].to_numpy(float)
        for seg in align_tokens(c["token_id"].tolist(), r["token_id"].tolist()):
            if seg.kind != "same":
                continue
            ci, ri = slice(*seg.chosen), slice(*seg.rejected)
            half = (sc[ci] - sr[ri]) / 2
            rows.loc[c.index[ci], "score"] = half
            rows.loc[r.index[ri], "score"] = -half
    # weights as `attribute` sets them: |score| over the response, normalised to sum 1 per sequence
    mag = rows["score"].abs().where(rows["in_response"].astype(bool))
    total = mag.groupby([rows["pair_id"], rows["side"]]).transform("sum")
    rows["weight"] = (mag / total).where(total > 0)
    rows["method"] = f"{method}_pair"
    return rows
