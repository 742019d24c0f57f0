"""The frozen reference pi_ref of a training run (docs/METHOD.md §3): a separate copy of the starting model,
or the LoRA policy with its adapter disabled; optionally its log-probs of every training pair computed once.

    ref = Reference(model=reference_copy(...), policy=lambda: trainer.policy, autocast=acc.autocast)
    ref.logits(batch)                      # (N, L, V), no gradient
    ref.precompute(encoded, pad_id, bs)    # then ref.cached_logps(pairs, width) at every step
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from tiviz.attribution.targets import token_logps
from tiviz.tokenization import Batch
from tiviz.training.data import EncodedPair, pair_rows


class Reference:
    """pi_ref: `model` (frozen, no gradient), or `policy()` under `disable_adapter()` when `model` is None.

    Args:
        model: the reference model, or None for the LoRA policy with its adapter disabled.
        policy: returns the current (unwrapped) policy.
        autocast: the mixed-precision context of the run (`Accelerator.autocast`).
    """

    def __init__(self, model: Any | None, policy: Callable[[], Any],
                 autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
        self.model = model
        self._policy = policy
        self._autocast = autocast
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.freed = False

    @property
    def device(self) -> torch.device:
        return next((self.model if self.model is not None else self._policy()).parameters()).device

    def logits(self, batch: Batch) -> torch.Tensor:
        """Reference logits (N, L, V), no gradient."""
        if self.freed:
            raise RuntimeError("the reference model was freed after precomputing its log-probs")
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "position_ids": batch.position_ids, "use_cache": False}
        with torch.no_grad(), self._autocast():
            if self.model is not None:
                return self.model(**inputs).logits
            policy = self._policy()
            with policy.disable_adapter():
                return policy(**inputs).logits

    def logps(self, batch: Batch) -> torch.Tensor:
        """Reference per-token log-probs (N, L), no gradient."""
        return token_logps(self.logits(batch), batch.input_ids)

    def precompute(self, encoded: list[EncodedPair], pad_id: int, batch_size: int) -> None:
        """Reference log-probs of every pair, once; read back with `cached_logps`."""
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        device = self.device
        for start in range(0, len(encoded), max(batch_size, 1)):
            chunk = encoded[start : start + batch_size]
            batch = pair_rows(chunk, pad_id).to(device)
            lp = self.logps(batch).float().cpu()  # (2b, L)
            for i, p in enumerate(chunk):
                cache[p.index] = (lp[i, : len(p.chosen)].clone(), lp[len(chunk) + i, : len(p.rejected)].clone())
        self.cache = cache

    def cached_logps(self, pairs: list[EncodedPair], width: int) -> torch.Tensor:
        """(2B, width) reference log-probs of [chosen; rejected] rows from the cache, right-padded."""
        assert self.cache is not None, "Reference.cached_logps: call precompute first"
        rows = [self.cache[p.index][0] for p in pairs] + [self.cache[p.index][1] for p in pairs]
        out = torch.zeros(len(rows), width)
        for r, v in enumerate(rows):
            out[r, : len(v)] = v
        return out

    def free(self) -> None:
        """Drop the reference model (its precomputed log-probs stay): nothing may call `logits` afterwards."""
        self.model = None
        self.freed = True
