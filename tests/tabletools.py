"""Hand-made tidy tables for the tests of the table's readers (imported by test_viz and test_analysis)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def side_table(texts, scores, *, method="grad_x_input", side="chosen", pair_id="p1", prompt=("Q",)):
    """A tidy table for one (pair, side, method): prompt tokens then response tokens."""
    rows = []
    pos = 0
    for t in prompt:
        rows.append({"pair_id": pair_id, "side": side, "position": pos, "token_id": pos, "token": t, "text": t,
                     "char_start": 0, "char_end": len(t), "in_response": False, "method": method,
                     "score": 0.5, "weight": np.nan, "target_value": 1.0, "convergence_delta": np.nan})
        pos += 1
    total = sum(abs(s) for s in scores)
    for t, s in zip(texts, scores, strict=True):
        rows.append({"pair_id": pair_id, "side": side, "position": pos, "token_id": pos, "token": t or "</s>",
                     "text": t, "char_start": 0, "char_end": len(t), "in_response": True, "method": method,
                     "score": s, "weight": abs(s) / total, "target_value": 1.0, "convergence_delta": np.nan})
        pos += 1
    return pd.DataFrame(rows)
