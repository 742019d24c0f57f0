"""TI-DPO's hybrid token weights as pure tensor functions (TI-DPO Eq. 5-7, docs/METHOD.md §2).

Everything takes a `span_mask` (B, T) of the tokens being weighted, so left and right padding, prompt tokens and
padding are handled by the caller's mask alone. Outside the span every weight is 0.
"""

from __future__ import annotations

from typing import Literal

import torch

Scale = Literal["mean1", "sum1"]


def gaussian_prior(span_mask: torch.Tensor, sigma_divisor: float = 4.0) -> torch.Tensor:
    """Gaussian prior over positions of the span, normalised to sum 1 per row (TI-DPO Eq. 6).

    `P(t) = exp(-0.5 ((t - mu) / sigma)^2)`, `t = 0..T-1` counted inside the span, `mu = (T-1)/2`,
    `sigma = T / sigma_divisor` (paper: 4, authors' code: 8).

    Args:
        span_mask: (B, L) bool or 0/1 tensor; True on the tokens being weighted (need not be contiguous).
        sigma_divisor: float, default 4.0.
    Returns:
        (B, L) float tensor, rows summing to 1 over the span (rows with an empty span are all 0).
    """
    mask = span_mask.to(torch.float32)  # (B, L)
    t = torch.cumsum(mask, dim=-1) - 1.0  # (B, L) position inside the span
    n = mask.sum(-1, keepdim=True)  # (B, 1) span length T
    mu = (n - 1.0) / 2.0
    sigma = (n / sigma_divisor).clamp_min(1e-6)
    prior = torch.exp(-0.5 * ((t - mu) / sigma) ** 2) * mask  # (B, L)
    return prior / prior.sum(-1, keepdim=True).clamp_min(1e-12)


def normalise_importance(scores: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """`I_norm = I / sum_j I_j` over the span (TI-DPO Eq. 5); rows with zero total become uniform."""
    mask = span_mask.to(scores.dtype)
    s = scores.clamp_min(0) * mask  # (B, L)
    total = s.sum(-1, keepdim=True)
    uniform = mask / mask.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.where(total > 0, s / total.clamp_min(1e-30), uniform)


def hybrid_weights(
    importance: torch.Tensor,
    span_mask: torch.Tensor,
    *,
    lam: float = 0.7,
    sigma_divisor: float = 4.0,
    scale: Scale = "mean1",
    use_prior: bool = True,
) -> torch.Tensor:
    """TI-DPO hybrid weights `W = lam * I_norm + (1 - lam) * P`, rescaled (TI-DPO Eq. 7).

    Args:
        importance: (B, L) non-negative raw importance (L1 norm of the embedding gradient).
        span_mask: (B, L) the tokens being weighted.
        lam: float, default 0.7; 1 = gradient only, 0 = prior only.
        sigma_divisor: float, default 4.0 (sigma = T / sigma_divisor).
        scale: "mean1" (default: weights average 1 over the span, so beta keeps its meaning) or "sum1".
        use_prior: bool, default True; False drops the prior (the `no-prior` ablation, equivalent to lam=1).
    Returns:
        (B, L) weights, 0 outside the span. Rows with fewer than 2 span tokens get uniform weights.
    """
    mask = span_mask.to(torch.float32)
    i_norm = normalise_importance(importance.detach().to(torch.float32), mask)
    if use_prior:
        w = lam * i_norm + (1.0 - lam) * gaussian_prior(mask, sigma_divisor)
    else:
        w = i_norm
    n = mask.sum(-1, keepdim=True)  # (B, 1)
    w = torch.where(n < 2, mask / n.clamp_min(1.0), w)  # short rows: uniform
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, L) sum 1 over the span
    if scale == "mean1":
        w = w * n
    elif scale != "sum1":
        raise ValueError(f"scale must be 'mean1' or 'sum1', got {scale!r}")
    return w * mask


def last_valid_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask; right for left *and* right padding (not `sum - 1`)."""
    L = attention_mask.shape[-1]
    positions = torch.arange(L, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(-1).values
