"""Attention received by each token, from one forward of the decoder (no LM head: no logits are needed).

Only eager attention returns its weights, and eager is slower than sdpa on long sequences (+40 % of the decoder at
512 tokens on the default model). `last_layer` therefore runs every layer with the model's own implementation and
recomputes the last attention module alone, in eager mode, on the inputs it saw; `all_layers` and `rollout` need
every layer's weights and run the whole decoder eagerly.
"""

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
    last = last_layer_attention(model, batch) if agg == "last_layer" else None
    if last is not None:
        maps = [last.float().mean(1)]  # [(B, T, T)], mean over heads
    else:
        maps = [a.float().mean(1) for a in all_layer_attentions(model, batch)]  # L x (B, T, T)
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
        last_idx = last_valid_index(batch.attention_mask)  # (B,)
        scores = roll[torch.arange(roll.shape[0]), last_idx]  # (B, T)
        return scores * valid * (rows.unsqueeze(0) <= last_idx.unsqueeze(1))
    a = maps[-1] if agg == "last_layer" else torch.stack(maps).mean(0)  # (B, T, T)
    a = a * valid.unsqueeze(-1)  # keep valid queries only
    received = a.sum(1)  # (B, T): column sums
    seen_by = valid.flip(-1).cumsum(-1).flip(-1)  # (B, T): valid queries at or after j
    return received / seen_by.clamp_min(1.0) * valid


def all_layer_attentions(model: Any, batch: Batch) -> tuple[torch.Tensor, ...]:
    """Every layer's attention weights, L x (B, heads, T, T), from one eager forward of the decoder."""
    previous = set_attention(model, "eager")
    try:
        with torch.inference_mode():
            out = _decoder(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids, output_attentions=True, use_cache=False)
            if getattr(out, "attentions", None) is None:  # a decoder that does not report them: the whole model
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, output_attentions=True, use_cache=False)
    finally:
        set_attention(model, previous)
    return tuple(out.attentions)


def last_layer_attention(model: Any, batch: Batch) -> torch.Tensor | None:
    """The last layer's attention weights (B, heads, T, T), or None where the model's layout is not recognised.

    The decoder runs with the model's own attention implementation while a hook keeps the inputs of the last
    attention module; that module alone then runs again in eager mode, which returns its weights.
    """
    module = _last_attention_module(model)
    if module is None:
        return None
    seen: dict[str, Any] = {}

    def keep_inputs(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["args"], seen["kwargs"] = args, dict(kwargs)

    handle = module.register_forward_pre_hook(keep_inputs, with_kwargs=True)
    try:
        with torch.inference_mode():
            _decoder(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, use_cache=False)
    finally:
        handle.remove()
    if "kwargs" not in seen:
        return None
    args, kwargs = seen["args"], seen["kwargs"]
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        return None
    kwargs["attention_mask"] = _additive_mask(kwargs.get("attention_mask"), batch.attention_mask, hidden.dtype)
    previous = set_attention(model, "eager")
    try:
        with torch.inference_mode():
            out = module(*args, **kwargs)
    finally:
        set_attention(model, previous)
    weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    T = batch.input_ids.shape[1]
    if not isinstance(weights, torch.Tensor) or weights.dim() != 4 or weights.shape[-2:] != (T, T):
        return None
    return weights


def _decoder(model: Any) -> Any:
    """The model without its LM head (transformers' `get_decoder()`), or the model itself."""
    getter = getattr(model, "get_decoder", None)
    try:
        decoder = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError, ValueError):
        decoder = None
    return decoder if isinstance(decoder, torch.nn.Module) else model


def _last_attention_module(model: Any) -> torch.nn.Module | None:
    """The last module of the class transformers records `attentions` from (e.g. LlamaAttention)."""
    recorded = getattr(model, "_can_record_outputs", None) or {}
    spec = recorded.get("attentions") if isinstance(recorded, dict) else None
    cls = getattr(spec, "target_class", spec)
    if not isinstance(cls, type) or getattr(spec, "layer_name", None):
        return None
    modules = [m for m in model.modules() if isinstance(m, cls)]
    return modules[-1] if modules and isinstance(modules[-1], torch.nn.Module) else None


def _additive_mask(mask: torch.Tensor | None, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mask an eager attention adds to its scores (B, 1, T, T): 0 where allowed, the dtype's minimum elsewhere.

    `mask` is what the model built for its own implementation: boolean (True = attend), already additive, or None
    when the model relies on plain causal attention (then the causal mask with key padding is built here).
    """
    if mask is not None and mask.dtype != torch.bool:
        return mask
    if mask is None:
        T = attention_mask.shape[-1]
        causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()  # (T, T)
        mask = causal & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
