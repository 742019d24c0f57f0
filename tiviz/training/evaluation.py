"""Held-out evaluation of a training run through the one scoring path (`tiviz.scoring.score_pairs`): preference
accuracy and mean implicit-reward margin under TRL-style `eval/` names (docs/METHOD.md §3).

The margin of a pair is `beta * (sum log_ratio^w - sum log_ratio^l)` (unweighted, DPO's implicit reward);
accuracy is the share of pairs with margin > 0 (ties, e.g. before any training, count as wrong).
"""

from __future__ import annotations

from typing import Any

from tiviz.training.data import EncodedPair


def evaluate_policy(policy: Any, reference: Any | None, encoded: list[EncodedPair], *, beta: float,
                    batch_size: int = 8) -> dict[str, float]:
    """{"eval/accuracy", "eval/margin", "eval/n_pairs"} of `encoded` pairs under the policy against `reference`
    (None: the PEFT policy with its adapter disabled)."""
    from tiviz.scoring import make_scorer, margin_summary, score_pairs

    scorer = make_scorer(policy, reference=reference, beta=beta, adapter_reference=reference is None)
    summary = margin_summary(score_pairs(scorer, encoded, batch_size=batch_size)["margin"])
    return {"eval/accuracy": summary["accuracy"], "eval/margin": summary["mean_margin"],
            "eval/n_pairs": summary["n_pairs"]}
