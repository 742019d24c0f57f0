"""Integrated gradients over the input embeddings, through Captum, with a per-sequence convergence delta.

The baseline replaces the embeddings of the attributed span (the response by default) by one reference embedding
(the pad token's by default) and keeps every other position as it is. Measured on SmolLM2-135M (logprob target,
16 steps): replacing the whole sequence, chat-template tokens and attention sink included, leaves a convergence
delta several times |f(x) - f(baseline)|; replacing the response alone leaves about 1 %. Prompt tokens then get
zero attribution by construction; `span="full"` replaces them too.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from tiviz.attribution.gradient import embed, forward_logits, frozen_parameters
from tiviz.attribution.targets import scorer_target, target_value, through_scorer
from tiviz.tokenization import Batch


def baseline_embeddings(model: Any, batch: Batch, kind: str, tokenizer: Any, span: str = "response") -> torch.Tensor:
    """Baseline (B, L, H): on the span, a reference token's embedding (pad, unk), zeros, or the vocabulary's mean
    embedding; elsewhere (and on padding) the input itself."""
    emb = embed(model, batch.input_ids)  # (B, L, H)
    table = model.get_input_embeddings().weight.detach()  # (V, H)
    if kind == "zero":
        ref = torch.zeros_like(emb[0, 0])
    elif kind == "mean":
        ref = table.mean(0)
    else:
        tid = tokenizer.pad_token_id if kind == "pad" else tokenizer.unk_token_id
        if tid is None:
            tid = tokenizer.eos_token_id
        ref = table[int(tid)]
    span_mask = batch.response_mask if span == "response" else batch.attention_mask.bool()
    valid = span_mask.unsqueeze(-1)  # (B, L, 1)
    return torch.where(valid, ref.expand_as(emb), emb)


def integrated_gradients(
    scorer: Any,
    batch: Batch,
    *,
    target: str,
    sign: torch.Tensor,
    n_steps: int = 32,
    method: str = "gausslegendre",
    baseline: str = "pad",
    span: str = "response",
    internal_batch_size: int = 32,
    tolerance: float = 0.0,
    max_steps: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """IG attributions of a scorer's target (`tiviz.scoring.Scorer`) summed over the hidden dimension, refined
    per sequence until complete enough.

    The target is as in `tiviz.attribution.targets`: with a reference, `reward` and `margin` are the implicit
    reward through both models, so completeness holds on the reward itself; with a reward model, its score.
    Each sequence starts at `n_steps`; while a sequence's relative convergence error
    |delta| / |f(x) - f(baseline)| exceeds `tolerance` (0 = never refine), it alone is recomputed with twice the
    steps, up to `max_steps`. Sequences already complete are not recomputed.

    Returns:
        scores (B, L) signed, target values f(x) (B,), f(baseline) (B,), convergence delta (B,)
        = sum_i scores_i - (f(x) - f(baseline)) (Captum's definition; completeness wants it near 0).
    """
    B = batch.input_ids.shape[0]
    scores = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)
    f_x = torch.zeros(B, device=scores.device)
    f_b = torch.zeros(B, device=scores.device)
    delta = torch.zeros(B, device=scores.device)
    todo = torch.arange(B, device=scores.device)
    steps = n_steps
    while True:
        sub = _rows(batch, todo)
        s, fx, fb, d = _captum_ig(scorer, sub, target=target, sign=sign[todo], n_steps=steps, method=method,
                                  baseline=baseline, span=span, internal_batch_size=internal_batch_size)
        scores[todo], f_x[todo], f_b[todo], delta[todo] = s.to(scores.dtype), fx.float(), fb.float(), d.float()
        rel = d.abs() / (fx - fb).abs().clamp_min(1e-12)
        todo = todo[(rel > tolerance).to(todo.device)] if tolerance > 0 else todo[:0]
        if len(todo) == 0 or steps * 2 > max_steps:
            return scores, f_x, f_b, delta
        steps *= 2


def _rows(batch: Batch, rows: torch.Tensor) -> Batch:
    idx = rows.tolist()
    return Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows],
                 batch.response_mask[rows], [batch.offsets[i] for i in idx])


def _captum_ig(
    scorer: Any, batch: Batch, *, target: str, sign: torch.Tensor, n_steps: int, method: str, baseline: str,
    span: str, internal_batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fixed-step IG pass through Captum over the whole (sub-)batch."""
    from captum.attr import IntegratedGradients

    model = scorer.model

    def forward(emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                input_ids: torch.Tensor, response_mask: torch.Tensor, sgn: torch.Tensor) -> torch.Tensor:
        if through_scorer(scorer, target):  # the reference or a reward head: the scorer's own score
            rows = Batch(input_ids, attention_mask, position_ids, response_mask, [0] * input_ids.shape[0])
            return scorer_target(scorer, target, rows, emb, sgn)
        logits = forward_logits(model, emb, attention_mask, position_ids)
        return target_value(target, logits, input_ids, attention_mask, response_mask, sgn, torch.zeros_like(sgn),
                            1.0)

    inputs = embed(model, batch.input_ids)
    base = baseline_embeddings(model, batch, baseline, scorer.tokenizer, span)
    extra = (batch.attention_mask, batch.position_ids, batch.input_ids, batch.response_mask, sign)
    ig = IntegratedGradients(forward)
    reference = scorer.reference
    with frozen_parameters(model), frozen_parameters(reference) if reference is not None else nullcontext():
        attr, delta = ig.attribute(
            inputs, baselines=base, additional_forward_args=extra, n_steps=n_steps, method=method,
            internal_batch_size=max(internal_batch_size, inputs.shape[0]), return_convergence_delta=True,
        )
        with torch.no_grad():
            f_x = forward(inputs, *extra)
            f_b = forward(base, *extra)
    return attr.float().sum(-1).detach(), f_x.detach(), f_b.detach(), delta.detach()
