"""`attribute()`: every pair, both sides, every method, one tidy table.

Both sides of a pair, and up to `batch_size` pairs of similar length, go through the model as one padded batch
of at most `TOKENS_PER_FORWARD` tokens (a single long pair may exceed it), so memory stays bounded for long
sequences. The gradient methods share one forward: one backward per distinct target (`gradient` and
`grad_x_input` explain the configured target, `tidpo` the max final logit), and the LM head runs only at the
positions the targets read.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tiviz.attribution.attention import attention_scores
from tiviz.attribution.cache import AttributionCache, default_folder, side_major
from tiviz.attribution.gradient import grad_x_input, gradient_norm, shared_embedding_gradients
from tiviz.attribution.hybrid import hybrid_weights
from tiviz.attribution.integrated import integrated_gradients
from tiviz.attribution.methods import METHODS, resolve_methods
from tiviz.attribution.occlusion import occlusion_for_target
from tiviz.attribution.targets import target_positions, target_value_at, token_logps
from tiviz.config import AttributionConfig
from tiviz.data import PreferencePair, load_pairs
from tiviz.errors import ConfigError
from tiviz.table import COLUMNS, PROVENANCE_KEY, validate
from tiviz.tokenization import (
    SIDES,
    TOKENS_PER_FORWARD,
    Batch,
    EncodedSequence,
    collate,
    encode_pair,
    length_batches,
    pad_token_id,
)

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]



def attribute(
    model: Any,
    pairs: Sequence[PreferencePair] | Any,
    methods: str | Sequence[str] | None = None,
    *,
    tokenizer: Any | None = None,
    ref_model: Any | None = None,
    config: AttributionConfig | None = None,
    progress: Progress | None = None,
    model_id: str | None = None,
    data_info: dict[str, Any] | None = None,
    cache: bool | str | Path = False,
    **settings: Any,
) -> pd.DataFrame:
    """Attribute every pair with every method; returns the tidy table (see `tiviz.table.COLUMNS`).

    Args:
        model: a `LoadedModel` or a Hugging Face causal LM (then pass `tokenizer`).
        pairs: `PreferencePair`s, or anything `load_pairs` accepts (a path, a list of dicts).
        methods: ids from `list_methods()`, as a list or "a,b"; default gradient, integrated_gradients,
            attention, tidpo.
        ref_model: the reference pi_ref, needed by `implicit_reward` and the `reward` target.
        config: an `AttributionConfig`; `settings` override its fields (e.g. `n_steps=32`).
        progress: called as progress(pairs_done, pairs_total) after each batch.
        data_info: provenance of the data (file, sha256) recorded in the table.
        cache: True (the tiviz cache folder) or a folder: reuse (pair, method) results computed before with the
            same weights, texts and settings, and store the new ones (see `tiviz.attribution.cache`).
    """
    cfg = AttributionConfig.from_dict({**(config.to_dict() if config else {}), **settings})
    names = resolve_methods(methods)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
        provenance_model = model.provenance() if hasattr(model, "provenance") else {}
        model = getattr(model, "model", model)
    else:
        provenance_model = {}
    if tokenizer is None:
        raise ConfigError("tokenizer", None, "a tokenizer, or a LoadedModel that carries one")
    if not isinstance(pairs, list | tuple) or (pairs and not isinstance(pairs[0], PreferencePair)):
        pairs = load_pairs(pairs)
    needs_ref = [m for m in names if METHODS[m].needs_reference]
    if ref_model is None and (needs_ref or cfg.target == "reward"):
        what = f"method {needs_ref[0]!r}" if needs_ref else "target 'reward'"
        raise ConfigError("ref_model", None, f"a reference model: {what} compares the policy with pi_ref")
    model.eval()
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    total = len(pairs)
    encoded = [encode_pair(tokenizer, p, max_length=cfg.max_length, truncation_mode=cfg.truncation_mode)
               for p in pairs]
    store = None
    if cache:
        store = AttributionCache(default_folder() if cache is True else Path(cache), model, ref_model, cfg)
    # per pair and method: its cache key, and its rows from the cache or None (to compute)
    keys = [{m: store.key(p, e, m) for m in names} if store else {} for p, e in zip(pairs, encoded, strict=True)]
    parts: list[dict[str, pd.DataFrame | None]] = [
        {m: store.get(k[m]) if store else None for m in names} for k in keys]
    todo: dict[tuple[str, ...], list[int]] = {}  # the methods still to compute -> the pairs that need them
    for i, got in enumerate(parts):
        missing = tuple(m for m in names if got[m] is None)
        if missing:
            todo.setdefault(missing, []).append(i)
    done = total - sum(len(idx) for idx in todo.values())
    if progress is not None and done:
        progress(done, total)
    for missing, idx in todo.items():
        for group in length_batches([max(len(s) for s in encoded[i]) for i in idx], cfg.batch_size,
                                    TOKENS_PER_FORWARD):
            group = [idx[g] for g in group]
            chunk = [pairs[i] for i in group]
            seqs = [s for i in group for s in encoded[i]]
            batch = collate(seqs, pad, cfg.padding_side).to(device)  # type: ignore[arg-type]
            scores = _score_batch(model, tokenizer, batch, list(missing), cfg, ref_model)
            for i, by_method in zip(group, _rows(chunk, seqs, batch, scores), strict=True):
                parts[i].update(by_method)
                if store:
                    for m, rows in by_method.items():
                        store.put(keys[i][m], rows)
            done += len(group)
            if progress is not None:
                progress(done, total)
    frames = [side_major([got[m] for m in names if got[m] is not None], SIDES) for got in parts]
    kept = [f for f in frames if len(f)]
    df = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=list(COLUMNS))
    df = validate(df)
    df.attrs[PROVENANCE_KEY] = _provenance(model, provenance_model, model_id, names, cfg, ref_model, data_info)
    if store:
        df.attrs[PROVENANCE_KEY]["cache"] = {"folder": str(store.folder), "reused": store.hits,
                                             "computed": store.misses}
    return df


MethodScores = dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def _score_batch(model: Any, tokenizer: Any, batch: Batch, names: list[str], cfg: AttributionConfig,
                 ref_model: Any | None) -> MethodScores:
    """(scores (B, L), target values (B,) or None, convergence delta (B,) or None) per method."""
    B, L = batch.input_ids.shape
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(B)], device=batch.input_ids.device)
    ref_tok = None
    ref_seq = torch.zeros(B, device=batch.input_ids.device)
    if ref_model is not None:
        with torch.inference_mode():
            ref_logits = ref_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids, use_cache=False).logits
            ref_tok = token_logps(ref_logits, batch.input_ids) * batch.response_mask  # (B, L)
            ref_seq = ref_tok.sum(-1)
            del ref_logits
    scale = cfg.beta if ref_model is not None else 1.0

    wanted = [cfg.target] if {"gradient", "grad_x_input"} & set(names) else []
    if "tidpo" in names and "max_logit" not in wanted:
        wanted.append("max_logit")
    grads = _gradients(model, batch, wanted, sign, ref_seq, scale)
    out: MethodScores = {}
    for m in names:
        if m == "gradient":
            g, _, v = grads[cfg.target]
            out[m] = (gradient_norm(g, cfg.norm), v, None)
        elif m == "grad_x_input":
            g, e, v = grads[cfg.target]
            out[m] = (grad_x_input(g, e), v, None)
        elif m == "tidpo":
            g, _, v = grads["max_logit"]
            span = batch.response_mask if cfg.span == "response" else batch.attention_mask.bool()
            w = hybrid_weights(gradient_norm(g, "l1"), span, lam=cfg.lam, sigma_divisor=cfg.sigma_divisor,
                               scale=cfg.weight_scale)  # type: ignore[arg-type]
            out[m] = (w, v, None)
        elif m == "integrated_gradients":
            s, fx, _, delta = integrated_gradients(
                model, tokenizer, batch, target=cfg.target, sign=sign, ref_logp=ref_seq, reward_scale=scale,
                n_steps=cfg.n_steps, method=cfg.ig_method, baseline=cfg.ig_baseline, span=cfg.ig_span,
                internal_batch_size=min(cfg.internal_batch_size, max(B, TOKENS_PER_FORWARD // L)),
                tolerance=cfg.ig_tolerance, max_steps=cfg.ig_max_steps)
            out[m] = (s, fx, delta)
        elif m == "attention":
            out[m] = (attention_scores(model, batch, cfg.attention_agg), None, None)
        elif m == "occlusion":
            s, v = occlusion_for_target(model, tokenizer, batch, cfg.target, sign, ref_model=ref_model,
                                        beta=cfg.beta, removal=cfg.occlusion_removal)
            out[m] = (s, v, None)
        elif m == "implicit_reward":
            assert ref_tok is not None
            with torch.inference_mode():
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, use_cache=False).logits
                pol = token_logps(logits, batch.input_ids) * batch.response_mask
            r = cfg.beta * (pol - ref_tok)  # (B, L)
            out[m] = (r, r.sum(-1), None)
    return out


def _gradients(model: Any, batch: Batch, names: list[str], sign: torch.Tensor, ref_seq: torch.Tensor,
               scale: float) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(grads (B, L, H), embeddings, values (B,)) per target name, all from one forward.

    The LM head runs only at the union of the positions the targets read (response positions for logprob,
    reward and margin; the last valid position for max_logit).
    """
    if not names:
        return {}
    spans = [target_positions(n, batch.attention_mask, batch.response_mask) for n in names]
    positions = torch.cat([p for p, _ in spans], dim=1)  # (B, K1 + K2 + ...)
    fns = []
    start = 0
    for name, (pos, valid) in zip(names, spans, strict=True):
        cols = slice(start, start + pos.shape[1])
        start += pos.shape[1]
        fns.append(lambda lg, name=name, pos=pos, valid=valid, cols=cols: target_value_at(
            name, lg[:, cols], pos, valid, batch.input_ids, sign, ref_seq, scale))
    grads, emb, values = shared_embedding_gradients(model, batch, fns, positions)
    return {n: (g, emb, v) for n, g, v in zip(names, grads, values, strict=True)}


def _rows(chunk: Sequence[PreferencePair], seqs: list[EncodedSequence], batch: Batch,
          scores: MethodScores) -> list[dict[str, pd.DataFrame]]:
    """Unpad each sequence and lay its tokens out once per method; per pair (in `chunk` order), method -> its
    rows, chosen side first (the unit the cache stores)."""
    out: list[dict[str, pd.DataFrame]] = []
    sides: dict[str, list[pd.DataFrame]] = {}
    for b, seq in enumerate(seqs):
        pair, side = chunk[b // 2], SIDES[b % 2]
        n, off = len(seq), batch.offsets[b]
        in_resp = np.arange(n) >= seq.response_start
        base = {
            "pair_id": pair.id, "side": side, "position": np.arange(n), "token_id": np.asarray(seq.input_ids),
            "token": seq.tokens, "text": [seq.token_text(i) for i in range(n)],
            "char_start": [s for s, _ in seq.char_spans], "char_end": [e for _, e in seq.char_spans],
            "in_response": in_resp,
        }
        for m, (s, value, delta) in scores.items():
            sc = s[b, off : off + n].detach().float().cpu().numpy().astype(np.float64)
            mag = np.abs(np.where(in_resp, sc, 0.0))
            total = mag.sum()
            weight = np.where(in_resp, mag / total if total > 0 else np.nan, np.nan)
            sides.setdefault(m, []).append(pd.DataFrame({
                **base, "method": m, "score": sc, "weight": weight,
                "target_value": float(value[b]) if value is not None else np.nan,
                "convergence_delta": float(delta[b]) if delta is not None else np.nan,
            }))
        if b % 2 == 1:  # both sides of the pair are laid out
            out.append({m: pd.concat(frames, ignore_index=True) for m, frames in sides.items()})
            sides = {}
    return out


def _provenance(model: Any, loaded: dict[str, Any], model_id: str | None, names: list[str],
                cfg: AttributionConfig, ref_model: Any | None, data_info: dict[str, Any] | None) -> dict[str, Any]:
    from tiviz import __version__

    targets = {m: (cfg.target if METHODS[m].uses_target else
                   "max_logit" if m == "tidpo" else None) for m in names}
    prov: dict[str, Any] = {
        "model_id": model_id or loaded.get("model_id") or getattr(model.config, "name_or_path", "") or "unknown",
        "model_revision": loaded.get("model_revision"),
        "methods": names,
        "target": cfg.target,
        "method_targets": targets,
        "settings": cfg.to_dict(),
        "reference_model": getattr(getattr(ref_model, "config", None), "name_or_path", None) if ref_model else None,
        "tiviz_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if data_info:
        prov["data"] = data_info
    if "implicit_reward" in names:
        prov["notes"] = ["implicit_reward is all zeros while the policy equals its reference (before training)"]
    return prov


def method_scores(model: Any, tokenizer: Any, batch: Batch, methods: Sequence[str], config: AttributionConfig,
                  ref_model: Any | None = None) -> dict[str, torch.Tensor]:
    """Each method's raw per-token scores (B, L) on a padded batch whose rows alternate chosen, rejected (as
    `attribute` lays them out): the same computation as `attribute`, without the table. Used by training to take
    its token weights from any method (docs/TRAINING.md, token-weight sources)."""
    return {m: s for m, (s, _, _) in _score_batch(model, tokenizer, batch, list(methods), config, ref_model).items()}
