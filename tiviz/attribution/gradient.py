"""Gradient of a per-sequence target with respect to the input embeddings: one forward + backward per batch,
shared by `gradient`, `grad_x_input` and `tidpo`.

Speed: parameters are frozen (the backward computes no weight gradient), and where the target reads only some
positions' logits (`positions`), the model's own `logits_to_keep` keeps the LM head off every other position.
Several targets share one forward (one backward each).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
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
                   position_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits from embeddings; position ids passed so left padding changes nothing.

    Args:
        positions: (B, K) long, optional: return only these positions' logits, (B, K, V), instead of (B, L, V).
            Models that take `logits_to_keep` (transformers' causal LMs) then skip the LM head elsewhere; others
            compute every position and are sliced afterwards (same values, no saving).
    """
    kwargs: dict[str, Any] = {}
    if positions is not None and accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = positions
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, **kwargs)
    logits = out.logits
    if positions is not None and not kwargs:
        logits = torch.take_along_dim(logits, positions.unsqueeze(-1), dim=1)  # (B, K, V)
    return logits


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (a 2-D tensor of positions per row since transformers 5)."""
    cls: Any = type(model)
    return _forward_takes(cls, "logits_to_keep")


@functools.cache
def _forward_takes(cls: Any, name: str) -> bool:
    try:
        return name in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def embed(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings (B, L, H), detached, in the embedding layer's dtype."""
    return model.get_input_embeddings()(input_ids).detach()


def embedding_gradients(
    model: Any, batch: Batch, target_fn: Callable[[torch.Tensor], torch.Tensor],
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d target / d embeddings for every sequence of the batch at once.

    Sequences are independent in eval mode, so the gradient of the batch sum is each sequence's own gradient.

    Args:
        model: a causal LM in eval mode.
        batch: padded input.
        target_fn: logits -> values (B,); the logits are (B, L, V), or (B, K, V) at `positions` when given.
        positions: (B, K) long, optional: the only positions whose logits the target reads.
    Returns:
        grads (B, L, H), embeddings (B, L, H), target values (B,) — all detached.
    """
    grads, emb, values = shared_embedding_gradients(model, batch, [target_fn], positions)
    return grads[0], emb, values[0]


def shared_embedding_gradients(
    model: Any, batch: Batch, target_fns: Sequence[Callable[[Any], torch.Tensor]],
    positions: torch.Tensor | None = None, *, forward: Callable[[torch.Tensor], Any] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """`embedding_gradients` for several targets from one forward: one backward per target.

    Args:
        forward: embeddings (B, L, H) -> whatever the targets read (default: the model's logits at `positions`),
            for scorers that read more than one model's logits (a reference, a reward head).
    Returns:
        grads [(B, L, H)] and values [(B,)] in the order of `target_fns`, embeddings (B, L, H); all detached.
    """
    emb = embed(model, batch.input_ids).requires_grad_(True)  # (B, L, H)
    grads: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    with frozen_parameters(model):
        if forward is None:
            out = forward_logits(model, emb, batch.attention_mask, batch.position_ids, positions)  # (B, K, V)
        else:
            out = forward(emb)
        for i, fn in enumerate(target_fns):
            v = fn(out)  # (B,)
            (g,) = torch.autograd.grad(v.sum(), emb, retain_graph=i < len(target_fns) - 1)
            grads.append(g.detach())
            values.append(v.detach())
    return grads, emb.detach(), values


def gradient_norm(grad: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """`||d f / d e_i||` per token, (B, L): L1 (TI-DPO Eq. 5, default) or L2."""
    g = grad.to(torch.promote_types(grad.dtype, torch.float32))
    return g.abs().sum(-1) if norm == "l1" else g.norm(dim=-1)


def grad_x_input(grad: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Signed `sum_h (d f / d e_ih) * e_ih` per token, (B, L): a first-order estimate of each token's share."""
    dtype = torch.promote_types(grad.dtype, torch.float32)
    return (grad.to(dtype) * emb.to(dtype)).sum(-1)
