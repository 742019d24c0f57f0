"""Gradient of a per-sequence target with respect to the input embeddings: one forward + backward per batch,
shared by `gradient`, `grad_x_input` and `tidpo`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from tiviz.tokenization import Batch


@contextmanager
def frozen_parameters(model: Any):
    """Turn off parameter gradients while attributing: the backward then skips every weight gradient."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)


def forward_logits(model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, L, V) from embeddings; position ids passed so left padding changes nothing."""
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False)
    return out.logits


def embed(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings (B, L, H), detached, in the embedding layer's dtype."""
    return model.get_input_embeddings()(input_ids).detach()


def embedding_gradients(
    model: Any, batch: Batch, target_fn: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d target / d embeddings for every sequence of the batch at once.

    Sequences are independent in eval mode, so the gradient of the batch sum is each sequence's own gradient.

    Args:
        model: a causal LM in eval mode.
        batch: padded input.
        target_fn: logits (B, L, V) -> values (B,).
    Returns:
        grads (B, L, H), embeddings (B, L, H), target values (B,) — all detached.
    """
    emb = embed(model, batch.input_ids).requires_grad_(True)  # (B, L, H)
    with frozen_parameters(model):
        logits = forward_logits(model, emb, batch.attention_mask, batch.position_ids)  # (B, L, V)
        values = target_fn(logits)  # (B,)
        (grad,) = torch.autograd.grad(values.sum(), emb)
    return grad.detach(), emb.detach(), values.detach()


def gradient_norm(grad: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """`||d f / d e_i||` per token, (B, L): L1 (TI-DPO Eq. 5, default) or L2."""
    g = grad.to(torch.promote_types(grad.dtype, torch.float32))
    return g.abs().sum(-1) if norm == "l1" else g.norm(dim=-1)


def grad_x_input(grad: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Signed `sum_h (d f / d e_ih) * e_ih` per token, (B, L): a first-order estimate of each token's share."""
    dtype = torch.promote_types(grad.dtype, torch.float32)
    return (grad.to(dtype) * emb.to(dtype)).sum(-1)
