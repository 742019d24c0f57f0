"""One micro-batch of TI-DPO as named pieces (docs/METHOD.md §3): the loss terms from the policy's and the
reference's outputs, the triplet term, and the metrics logged under TRL's names plus ours.

    terms = loss_terms(cfg, batch, logits, weights, ref_logps, ref_logits, anchors)
    metrics = step_metrics(terms, batch, weights, cfg.beta, anchors)

Row layout everywhere: rows 0..B-1 chosen, B..2B-1 rejected (`tiviz.training.data.pair_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiviz.attribution.targets import token_logps
from tiviz.tokenization import Batch
from tiviz.training.config import TIDPOConfig
from tiviz.training.losses import (
    align_responses,
    preference_metrics,
    sequential_kl,
    tidpo_dpo_loss,
    token_log_ratios,
    total_loss,
    triplet_loss,
    weight_entropy,
    weighted_dpo_delta,
)


@dataclass
class Anchors:
    """The triplet term's anchors: responses sampled from the policy, with the policy's logits (with graph) and
    the reference's log-probs."""

    rows: Batch  # (B, La) prompt + sampled response
    logits: torch.Tensor  # (B, La, V)
    ref_logps: torch.Tensor  # (B, La)


@dataclass
class LossTerms:
    """What one micro-batch's loss is made of."""

    loss: torch.Tensor  # () the total, with graph
    dpo: torch.Tensor  # (B,) weighted DPO (+ sequential KL) per pair
    triplet: torch.Tensor | float  # () or 0.0 without anchors
    policy_logps: torch.Tensor  # (2B, L)
    log_ratio: torch.Tensor  # (2B, L) log pi - log pi_ref on the response, 0 elsewhere
    kl: torch.Tensor | None  # (2B,) sequential KL, None when alpha_kl is 0


def triplet_term(anchors: Anchors, log_ratio_w: torch.Tensor, mask_w: torch.Tensor, log_ratio_l: torch.Tensor,
                 mask_l: torch.Tensor, margin: float) -> torch.Tensor:
    """The triplet loss on response-aligned log-ratios of anchor, chosen and rejected (docs/METHOD.md §4)."""
    a_ratio = token_log_ratios(token_logps(anchors.logits, anchors.rows.input_ids), anchors.ref_logps,
                               anchors.rows.response_mask)  # (B, La)
    a, a_m = align_responses(a_ratio, anchors.rows.response_mask)  # (B, Ra)
    w, w_m = align_responses(log_ratio_w, mask_w)  # (B, Rw)
    r, r_m = align_responses(log_ratio_l, mask_l)  # (B, Rl)
    return triplet_loss(a, a_m, w, w_m, r, r_m, margin=margin)


def loss_terms(cfg: TIDPOConfig, batch: Batch, logits: torch.Tensor, weights: torch.Tensor,
               ref_logps: torch.Tensor, ref_logits: torch.Tensor | None = None,
               anchors: Anchors | None = None) -> LossTerms:
    """Weighted DPO with TDPO2's sequential KL, plus gamma times the triplet term
    (docs/METHOD.md §3, §5).

    Args:
        cfg: beta, alpha_kl, gamma and margin are read.
        batch: the pair rows (2B, L).
        logits: (2B, L, V) the policy's, with graph.
        weights: (2B, L) token weights, detached.
        ref_logps: (2B, L) the reference's per-token log-probs.
        ref_logits: (2B, L, V) the reference's logits; needed when alpha_kl > 0 (the KL reads every token).
        anchors: the triplet term's anchors, or None (gamma 0).
    """
    B = batch.input_ids.shape[0] // 2
    mask = batch.response_mask  # (2B, L)
    policy_logps = token_logps(logits, batch.input_ids)  # (2B, L)
    log_ratio = token_log_ratios(policy_logps, ref_logps.to(policy_logps.dtype), mask)  # (2B, L)
    delta = weighted_dpo_delta(log_ratio[:B], weights[:B], log_ratio[B:], weights[B:], mask[:B], mask[B:])  # (B,)
    kl = None
    if cfg.alpha_kl > 0:
        assert ref_logits is not None, "loss_terms: the sequential KL needs the reference logits"
        kl = sequential_kl(logits, ref_logits, mask)  # (2B,)
    dpo = tidpo_dpo_loss(delta, kl[:B] if kl is not None else None, kl[B:] if kl is not None else None,
                         beta=cfg.beta, alpha_kl=cfg.alpha_kl)  # (B,)
    trip: torch.Tensor | float = 0.0
    if anchors is not None:
        trip = triplet_term(anchors, log_ratio[:B], mask[:B], log_ratio[B:], mask[B:], cfg.margin)
    return LossTerms(total_loss(dpo, trip, gamma=cfg.gamma), dpo, trip, policy_logps, log_ratio, kl)


def step_metrics(terms: LossTerms, batch: Batch, weights: torch.Tensor, beta: float,
                 anchors: Anchors | None = None) -> dict[str, float]:
    """TRL's metric names (`rewards/*`, `logps/*`, `loss`) and ours (`loss/dpo_w`, `loss/triplet`, `kl/*`,
    `weights/entropy`, `anchor/length`) for one micro-batch; see `tiviz.training.metrics`."""
    B = batch.input_ids.shape[0] // 2
    mask = batch.response_mask
    ratio = terms.log_ratio.detach()
    metrics = preference_metrics(ratio[:B], ratio[B:], mask[:B], mask[B:], beta)
    metrics["loss"] = terms.loss.item()
    metrics["loss/dpo_w"] = terms.dpo.mean().item()
    trip = terms.triplet
    metrics["loss/triplet"] = float(trip.item() if isinstance(trip, torch.Tensor) else trip)
    seq_logps = (terms.policy_logps.detach() * mask.to(terms.policy_logps.dtype)).sum(-1)  # (2B,)
    metrics["logps/chosen"] = seq_logps[:B].mean().item()
    metrics["logps/rejected"] = seq_logps[B:].mean().item()
    if terms.kl is not None:
        metrics["kl/chosen"] = terms.kl[:B].mean().item()
        metrics["kl/rejected"] = terms.kl[B:].mean().item()
    metrics["weights/entropy"] = weight_entropy(weights, mask).mean().item()
    if anchors is not None:
        metrics["anchor/length"] = float(anchors.rows.response_mask.sum(-1).float().mean().item())
    return metrics
