"""Held-out evaluation of a training run: preference accuracy and mean implicit-reward margin (docs/METHOD.md,
the implicit reward).

The margin of a pair is `beta * (sum log_ratio^w - sum log_ratio^l)` (unweighted, DPO's implicit reward);
accuracy is the share of pairs with margin > 0 (ties, e.g. before any training, count as wrong).
"""

from __future__ import annotations

from typing import Any

import torch

from tiviz.training.data import EncodedPair, pair_rows
from tiviz.training.reference import Reference

EVAL_KEYS = ("eval/accuracy", "eval/margin", "eval/n_pairs")


def eval_metrics(margins: torch.Tensor) -> dict[str, float]:
    """{"eval/accuracy", "eval/margin", "eval/n_pairs"} from the pairs' margins (N,)."""
    m = margins.float()
    return {"eval/accuracy": (m > 0).float().mean().item(), "eval/margin": m.mean().item(),
            "eval/n_pairs": float(m.numel())}


def evaluate_pairs(policy: Any, reference: Reference, encoded: list[EncodedPair], pad_id: int, *, beta: float,
                   batch_size: int = 8) -> dict[str, float]:
    """Held-out accuracy and mean margin of `encoded` pairs under the policy against `reference`."""
    return eval_metrics(pair_margins(policy, reference, encoded, pad_id, beta=beta, batch_size=batch_size))


@torch.no_grad()
def pair_margins(policy: Any, reference: Reference, encoded: list[EncodedPair], pad_id: int, *, beta: float,
                 batch_size: int = 8) -> torch.Tensor:
    """Each pair's implicit-reward margin under the policy against `reference`, (N,)."""
    from tiviz.attribution.targets import token_logps
    from tiviz.training.losses import token_log_ratios

    was_training = policy.training
    policy.eval()
    margins = []
    device = next(policy.parameters()).device
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = pair_rows(chunk, pad_id).to(device)
            logps = token_logps(policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       position_ids=batch.position_ids, use_cache=False).logits,
                                batch.input_ids)  # (2b, L)
            ratio = token_log_ratios(logps, reference.logps(batch), batch.response_mask)  # (2b, L)
            b = len(chunk)
            margins.append(beta * (ratio[:b].sum(-1) - ratio[b:].sum(-1)))  # (b,)
    finally:
        policy.train(was_training)
    return torch.cat(margins)
