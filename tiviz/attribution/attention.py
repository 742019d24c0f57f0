"""Attention received by each token, from one forward with eager attention (sdpa returns no weights)."""

from __future__ import annotations

from typing import Any

import torch

from tiviz.attribution.hybrid import last_valid_index
from tiviz.models import set_attention
from tiviz.tokenization import Batch


def attention_scores(model: Any, batch: Batch, agg: str = "last_layer") -> torch.Tensor:
    """Per-token attention score (B, L), padding 0.

    - last_layer: last layer, mean over heads; token j's score is the mean attention it receives from the
      valid queries that can see it (i >= j), which removes the causal mask's bias towards early tokens;
    - all_layers: the same, averaged over layers;
    - rollout: attention rollout (Abnar & Zuidema 2020): `prod_l (0.5 A_l + 0.5 I)`, rows renormalised, read at
      the last valid position (the one whose logits the targets use).
    """
    previous = set_attention(model, "eager")
    try:
        with torch.inference_mode():
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, output_attentions=True, use_cache=False)
    finally:
        set_attention(model, previous)
    maps = [a.float().mean(1) for a in out.attentions]  # L x (B, T, T), mean over heads
    valid = batch.attention_mask.float()  # (B, T)
    if agg == "rollout":
        T = valid.shape[-1]
        eye = torch.eye(T, device=valid.device).expand_as(maps[0])
        roll = eye.clone()
        for a in maps:
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
            roll = a @ roll  # (B, T, T)
        rows = torch.arange(T, device=valid.device)
        last = last_valid_index(batch.attention_mask)  # (B,)
        scores = roll[torch.arange(roll.shape[0]), last]  # (B, T)
        return scores * valid * (rows.unsqueeze(0) <= last.unsqueeze(1))
    a = maps[-1] if agg == "last_layer" else torch.stack(maps).mean(0)  # (B, T, T)
    a = a * valid.unsqueeze(-1)  # keep valid queries only
    received = a.sum(1)  # (B, T): column sums
    seen_by = valid.flip(-1).cumsum(-1).flip(-1)  # (B, T): valid queries at or after j
    return received / seen_by.clamp_min(1.0) * valid
