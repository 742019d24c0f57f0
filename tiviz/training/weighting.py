"""Where each training step's token weights come from (docs/TRAINING.md, token-weight sources).

Any attribution method of the registry (`tiviz.attribution.methods.METHODS`), `uniform` or `random` gives a raw
per-token importance; every importance then goes through the paper's hybrid step (TI-DPO Eq. 5-7: normalised over
the span, mixed with the Gaussian prior by lambda, rescaled to mean 1; `lam=1` is importance alone). Signed methods
(grad_x_input, integrated_gradients, implicit_reward...) become non-negative by `weighting_sign`: the absolute value
(default: a token that pushes the target down matters as much as one that pushes it up) or the positive part.

Online sources are recomputed from the current policy at every step. `tidpo`, `gradient` and `grad_x_input` reuse
the training forward when the policy has no active dropout (then its train-mode forward is its eval-mode forward):
one backward to the input embeddings only. `implicit_reward` reads the training forward's log-ratios. The other
methods run the attribution code on the policy in eval mode.

    source = OnlineWeights(cfg, tokenizer, fused=True)
    w = source.before_forward(policy, batch, pairs, step, reference)     # (2B, L) or None: needs the forward
    w = source.from_forward(batch, logits, emb, ref_logps)                # (2B, L) from the forward in hand
"""

from __future__ import annotations

from typing import Any

import torch

from tiviz.attribution.gradient import grad_x_input, gradient_norm
from tiviz.attribution.methods import METHODS
from tiviz.attribution.targets import target_value, token_logps
from tiviz.tokenization import Batch
from tiviz.training.config import TIDPOConfig
from tiviz.training.data import EncodedPair
from tiviz.training.reference import Reference
from tiviz.training.weights import random_weights, tidpo_weights, uniform_weights, weights_from_importance

FUSED_METHODS = ("tidpo", "gradient", "grad_x_input")
"""Online methods whose importance is a gradient of the training forward (reused when there is no dropout)."""


def method_target(cfg: TIDPOConfig) -> str:
    """The target a gradient method explains: `tidpo` always the paper's max_logit (Eq. 4), the others
    `weighting_target`."""
    return "max_logit" if cfg.weighting == "tidpo" else cfg.weighting_target


def non_negative(scores: torch.Tensor, method: str, sign: str) -> torch.Tensor:
    """Raw scores made non-negative for the hybrid step: signed methods by |s| ("abs") or max(s, 0)
    ("positive"); unsigned methods unchanged."""
    if method in METHODS and not METHODS[method].signed:
        return scores
    return scores.abs() if sign == "abs" else scores.clamp_min(0)


def pair_signs(batch: Batch) -> torch.Tensor:
    """+1 on the chosen rows (first half), -1 on the rejected rows (second half): the margin target's sign. (2B,)"""
    B = batch.input_ids.shape[0] // 2
    return torch.cat([torch.ones(B), -torch.ones(B)]).to(batch.input_ids.device)


def gradient_importance(cfg: TIDPOConfig, grad: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """A gradient method's importance from `d target / d e` (B, L, H): the L1 norm (TI-DPO Eq. 5; `tidpo`,
    `gradient`) or gradient x input (`grad_x_input`, signed). (B, L)"""
    if cfg.weighting == "grad_x_input":
        return non_negative(grad_x_input(grad, emb), "grad_x_input", cfg.weighting_sign)
    return gradient_norm(grad, "l1")


class OnlineWeights:
    """Token weights recomputed from the current policy at each step (docs/TRAINING.md, token-weight sources).

    Args:
        cfg: weighting, weighting_target, weighting_sign and the hybrid settings are read.
        tokenizer: the policy's tokenizer (integrated gradients' baseline token).
        fused: the policy has no active dropout, so gradient methods may reuse the training forward.
    """

    def __init__(self, cfg: TIDPOConfig, tokenizer: Any, *, fused: bool) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.method = cfg.weighting
        # reward / margin targets differentiate through policy AND reference (the scorer's definition): only the
        # attribution path computes that, so they are not fused
        self.needs_embedding_grad = (fused and self.method in FUSED_METHODS
                                     and method_target(cfg) in ("max_logit", "logprob"))
        self.uses_forward = self.needs_embedding_grad or self.method == "implicit_reward"

    def _seeds(self, pairs: list[EncodedPair], step: int) -> list[int]:
        """One seed per row from (seed, step, pair index, side): a row's random weights ignore its batch."""
        base = (self.cfg.seed * 1_000_003 + step) * 100_003
        return [((base + p.index) * 2 + side) % (1 << 62) for side in (0, 1) for p in pairs]

    def before_forward(self, policy: Any, batch: Batch, pairs: list[EncodedPair], step: int,
                       reference: Reference) -> torch.Tensor | None:
        """The step's weights (2B, L) when they do not come from the training forward; None when they do."""
        cfg = self.cfg
        if self.method == "uniform":
            return uniform_weights(batch.response_mask)
        if self.method == "random":
            return random_weights(batch, self._seeds(pairs, step), cfg)
        if self.uses_forward:
            return None
        if self.method == "tidpo":
            return tidpo_weights(policy, batch, cfg)
        return weights_from_importance(self._attributed(policy, batch, reference), batch, cfg)

    def from_forward(self, batch: Batch, logits: torch.Tensor, emb: torch.Tensor,
                     ref_logps: torch.Tensor) -> torch.Tensor:
        """The step's weights (2B, L) from the training forward: its logits (2B, L, V) with graph to `emb`
        (N, W, H), the embeddings the forward started from (under DDP padded and joined with the anchor rows);
        the graph is kept for the loss's backward."""
        cfg = self.cfg
        mask = batch.response_mask
        if self.method == "implicit_reward":
            ratio = token_logps(logits.detach(), batch.input_ids) - ref_logps.to(logits.dtype)  # (2B, L)
            importance = non_negative(cfg.beta * ratio * mask, "implicit_reward", cfg.weighting_sign)
            return weights_from_importance(importance, batch, cfg)
        ref_seq = (ref_logps * mask.to(ref_logps.dtype)).sum(-1)  # (2B,)
        target = target_value(method_target(cfg), logits, batch.input_ids, batch.attention_mask, mask,
                              pair_signs(batch), ref_seq.float(), cfg.beta)  # (2B,)
        (grad,) = torch.autograd.grad(target.sum(), emb, retain_graph=True)  # (N, W, H), N >= 2B, W >= L
        n, L = batch.input_ids.shape
        importance = gradient_importance(cfg, grad[:n, :L], emb.detach()[:n, :L])  # (2B, L)
        return weights_from_importance(importance, batch, cfg)

    def _attributed(self, policy: Any, batch: Batch, reference: Reference) -> torch.Tensor:
        """Raw importance (2B, L) from the attribution code on the policy in eval mode (rows re-ordered to the
        chosen, rejected alternation `method_scores` expects, and back)."""
        from tiviz.attribution.core import method_scores

        cfg = self.cfg
        B = batch.input_ids.shape[0] // 2
        order = torch.stack([torch.arange(B), torch.arange(B) + B], dim=1).reshape(-1)  # (2B,) w0 l0 w1 l1 ...
        inverse = torch.argsort(order)
        inter = _rows(batch, order)
        was_training = policy.training
        policy.eval()
        try:
            needs_ref = METHODS[self.method].needs_reference or method_target(cfg) in ("reward", "margin")
            scores = method_scores(policy, self.tokenizer, inter, [self.method], attribution_config(cfg),
                                   reference.model if needs_ref else None,
                                   adapter_reference=needs_ref and reference.model is None)[self.method]
        finally:
            policy.train(was_training)
        return non_negative(scores.detach().float(), self.method, cfg.weighting_sign)[inverse.to(scores.device)]


def attribution_config(cfg: TIDPOConfig) -> Any:
    """The `AttributionConfig` a training weight source runs the attribution methods with: the training's
    target (max_logit for tidpo), beta, span and hybrid settings, L1 gradient norm."""
    from tiviz.config import AttributionConfig

    return AttributionConfig(target=method_target(cfg), norm="l1", beta=cfg.beta, lam=cfg.lam,
                             sigma_divisor=cfg.sigma_divisor, span=cfg.span, weight_scale=cfg.weight_scale,
                             max_length=cfg.max_length)


def _rows(batch: Batch, index: torch.Tensor) -> Batch:
    """The batch with its rows taken in `index` order."""
    idx = index.to(batch.input_ids.device)
    return Batch(batch.input_ids[idx], batch.attention_mask[idx], batch.position_ids[idx], batch.response_mask[idx],
                 [batch.offsets[int(i)] for i in index])
