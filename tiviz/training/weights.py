"""Per-step token weights for the TI-DPO loss: tidpo (gradient importance + Gaussian prior), uniform, random.

All weights are constants in the loss (detached), 0 outside the response, and follow `config.span` for where
they are normalised ("response", the paper; "full" = prompt + response, the authors' code) and
`config.weight_scale` for their scale (mean 1 or sum 1 over that span).

    W = tidpo_weights(policy, batch, cfg)                      # (B, L), TI-DPO Eq. 4-7, one fwd + bwd
    W = weights_from_gradients(grad, batch, cfg)               # the same from an embedding gradient in hand
    W = uniform_weights(batch.response_mask)                   # (B, L) ones on the response (DPO)
    W = random_weights(batch, seeds, cfg)                      # (B, L) seeded, positive, mean 1 (ablation)
"""

from __future__ import annotations

from typing import Any

import torch

from tiviz.attribution.gradient import embedding_gradients, gradient_norm
from tiviz.attribution.hybrid import hybrid_weights
from tiviz.attribution.targets import max_logit_target
from tiviz.tokenization import Batch
from tiviz.training.config import TIDPOConfig


def span_mask(batch: Batch, span: str) -> torch.Tensor:
    """The tokens the weights are normalised over: the response, or every valid token ("full"). (B, L) bool."""
    return batch.response_mask if span == "response" else batch.attention_mask.bool()


def weights_from_importance(importance: torch.Tensor, batch: Batch, config: TIDPOConfig) -> torch.Tensor:
    """Hybrid weights (TI-DPO Eq. 7) from raw per-token importance, kept on the response tokens only.

    Args:
        importance: (B, L) non-negative raw importance, e.g. the L1 norm of the embedding gradient.
        batch: the sequences (masks decide the span).
        config: lam, sigma_divisor, use_prior, span and weight_scale are read.
    Returns:
        (B, L) float32 weights, detached, 0 outside the response.
    """
    w = hybrid_weights(
        importance.detach(),
        span_mask(batch, config.span),
        lam=config.lam,
        sigma_divisor=config.sigma_divisor,
        scale=config.weight_scale,
        use_prior=config.use_prior,
    )  # (B, L)
    return w * batch.response_mask.to(w.dtype)


def weights_from_gradients(grad: torch.Tensor, batch: Batch, config: TIDPOConfig) -> torch.Tensor:
    """TI-DPO weights from `d L_target / d e` (B, L, H): L1 norm over the hidden dimension (Eq. 5), then
    `weights_from_importance`."""
    return weights_from_importance(gradient_norm(grad.detach(), "l1"), batch, config)  # (B, L)


def tidpo_weights(model: Any, batch: Batch, config: TIDPOConfig) -> torch.Tensor:
    """TI-DPO weights computed directly: the current model in eval mode (no dropout), the gradient of the
    largest logit at each row's last valid position (Eq. 4) with respect to the input embeddings, its L1 norm
    (Eq. 5), mixed with the Gaussian prior (Eq. 6-7). One forward + backward, no parameter gradients.

    Args:
        model: the policy (a plain or PEFT causal LM, not a DDP wrapper); its train/eval mode is restored.
        batch: the sequences on the model's device.
        config: the weighting settings.
    Returns:
        (B, L) float32 weights, detached, 0 outside the response.
    """
    was_training = model.training
    model.eval()
    try:
        grad, _, _ = embedding_gradients(model, batch, lambda logits: max_logit_target(logits, batch.attention_mask))
    finally:
        model.train(was_training)
    return weights_from_gradients(grad, batch, config)


def uniform_weights(response_mask: torch.Tensor) -> torch.Tensor:
    """All-ones on the response tokens, 0 elsewhere: with these TI-DPO's DPO term is plain DPO. (B, L)."""
    return response_mask.to(torch.float32)


def random_weights(batch: Batch, seeds: list[int], config: TIDPOConfig) -> torch.Tensor:
    """Random positive weights on the same scale as tidpo's (the random-weights ablation).

    Each row draws from its own generator seeded with `seeds[row]`, so a row's weights do not depend on which
    other rows share its batch (or its process). Values are uniform in (0, 1], then rescaled over the span to mean
    1 (or sum 1, per `config.weight_scale`), and kept on the response tokens.

    Args:
        batch: the sequences.
        seeds: one integer seed per row.
        config: span and weight_scale are read.
    Returns:
        (B, L) float32 weights, strictly positive on the response, 0 elsewhere.
    """
    mask = span_mask(batch, config.span)  # (B, L)
    L = mask.shape[1]
    draws = torch.stack(
        [1.0 - torch.rand(L, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    ).to(mask.device)  # (B, L) in (0, 1]
    m = mask.to(torch.float32)
    w = draws * m
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, L) sum 1 over the span
    if config.weight_scale == "mean1":
        w = w * m.sum(-1, keepdim=True)
    return w * batch.response_mask.to(torch.float32)
