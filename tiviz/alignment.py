"""Token alignment of a pair's two responses: which stretches they share and where they differ.

One alignment serves every view that contrasts the two sides: the diff view (shared stretches dimmed, differing
ones outlined) and the pair-level split of a margin (shared stretches cancel, see docs/METHOD.md). It is a plain
longest-matching-block alignment (`difflib.SequenceMatcher` without its junk heuristic), over token ids so that
the result does not depend on how the tokens print.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

SegmentKind = Literal["same", "differ"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the alignment: `chosen[c0:c1]` against `rejected[r0:r1]` (either may be empty if differ)."""

    kind: SegmentKind
    chosen: tuple[int, int]
    rejected: tuple[int, int]


def align_tokens(chosen: Sequence[Hashable], rejected: Sequence[Hashable]) -> list[Segment]:
    """Align two token sequences; consecutive segments alternate between "same" and "differ".

    Args:
        chosen, rejected: the response tokens (ids or strings) of each side.
    Returns:
        segments covering both sequences in order, end to end.
    """
    matcher = difflib.SequenceMatcher(a=list(chosen), b=list(rejected), autojunk=False)
    out: list[Segment] = []
    for tag, c0, c1, r0, r1 in matcher.get_opcodes():
        kind: SegmentKind = "same" if tag == "equal" else "differ"
        if out and out[-1].kind == kind:  # replace next to delete: one differing stretch
            prev = out.pop()
            out.append(Segment(kind, (prev.chosen[0], c1), (prev.rejected[0], r1)))
        else:
            out.append(Segment(kind, (c0, c1), (r0, r1)))
    return out


def token_status(chosen: Sequence[Hashable], rejected: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Per token of each side: True where it lies in a stretch the other side shares. Returns (chosen, rejected)."""
    same_c = np.zeros(len(chosen), dtype=bool)
    same_r = np.zeros(len(rejected), dtype=bool)
    for seg in align_tokens(chosen, rejected):
        if seg.kind == "same":
            same_c[seg.chosen[0] : seg.chosen[1]] = True
            same_r[seg.rejected[0] : seg.rejected[1]] = True
    return same_c, same_r


def shared_tokens(table: pd.DataFrame) -> pd.Series:
    """For each response row of a tidy table, whether its token is in a stretch both responses share.

    Alignment runs per pair on the response token ids of one method's rows (they are the same for every method).
    Returns a boolean Series on the table's index: NaN-free, False for prompt rows.
    """
    out = pd.Series(False, index=table.index)
    resp = table[table["in_response"].astype(bool)]
    if resp.empty:
        return out
    first = resp[resp["method"] == resp["method"].iloc[0]] if "method" in resp else resp
    for pid, rows in first.groupby("pair_id", sort=False):
        sides = {s: g.sort_values("position") for s, g in rows.groupby("side")}
        if set(sides) != {"chosen", "rejected"}:
            continue
        same_c, same_r = token_status(sides["chosen"]["token_id"].tolist(), sides["rejected"]["token_id"].tolist())
        for side, same in (("chosen", same_c), ("rejected", same_r)):
            shared_pos = set(sides[side]["position"].to_numpy()[same].tolist())
            hit = (resp["pair_id"] == pid) & (resp["side"] == side) & resp["position"].isin(shared_pos)
            out.loc[hit[hit].index] = True
    return out
