"""`attribute()`: every pair, both sides, every method, one tidy table.

Both sides of a pair, and up to `batch_size` pairs of similar length, go through the model as one padded batch
of at most `TOKENS_PER_FORWARD` tokens (a single long pair may exceed it), so memory stays bounded for long
sequences. The gradient methods share one forward: one backward per distinct target (`gradient` and
`grad_x_input` explain the configured target, `tidpo` the max final logit), and the LM head runs only at the
positions the targets read.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tiviz.aggregate import apply_aggregate, check_level
from tiviz.attribution.attention import attention_scores
from tiviz.attribution.cache import AttributionCache, default_folder, side_major
from tiviz.attribution.decomposition import pair_values
from tiviz.attribution.gradient import (
    forward_logits,
    frozen_parameters,
    grad_x_input,
    gradient_norm,
    shared_embedding_gradients,
)
from tiviz.attribution.hybrid import hybrid_weights
from tiviz.attribution.integrated import integrated_gradients
from tiviz.attribution.methods import METHODS, READS_LM_LOGITS, resolve_methods, scorer_methods
from tiviz.attribution.occlusion import occlusion_for_target, scorer_occlusion
from tiviz.attribution.targets import check_scorer_target, target_positions, target_value_at, through_scorer
from tiviz.config import AttributionConfig
from tiviz.data import PreferencePair, load_pairs
from tiviz.errors import ConfigError
from tiviz.models import LoadedModel
from tiviz.scoring import QUANTITIES, Scorer, make_scorer
from tiviz.table import COLUMNS, PROVENANCE_KEY, validate
from tiviz.tokenization import (
    SIDES,
    TOKENS_PER_FORWARD,
    Batch,
    EncodedSequence,
    collate,
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
    scorer: Scorer | None = None,
    config: AttributionConfig | None = None,
    progress: Progress | None = None,
    model_id: str | None = None,
    data_info: dict[str, Any] | None = None,
    cache: bool | str | Path = False,
    aggregate: str = "token",
    **settings: Any,
) -> pd.DataFrame:
    """Attribute every pair with every method; returns the tidy table (see `tiviz.table.COLUMNS`).

    Every method explains a scorer's score (`tiviz.scoring`): a causal LM's likelihood, a policy's implicit reward
    against `ref_model` (differentiated through both models), or a reward model's score.

    Args:
        model: a `LoadedModel`, a Hugging Face causal LM or reward model (then pass `tokenizer`), or a `Scorer`.
        pairs: `PreferencePair`s, or anything `load_pairs` accepts (a path, a list of dicts).
        methods: ids from `list_methods()`, as a list or "a,b"; default gradient, integrated_gradients,
            attention, tidpo.
        ref_model: the reference pi_ref (module or LoadedModel): the scorer becomes the implicit reward
            beta * (log pi - log pi_ref), with beta from the settings.
        scorer: a `Scorer` to explain (instead of `model` / `ref_model`).
        config: an `AttributionConfig`; `settings` override its fields (e.g. `n_steps=32`).
        progress: called as progress(pairs_done, pairs_total) after each batch.
        data_info: provenance of the data (file, sha256) recorded in the table.
        cache: True (the tiviz cache folder) or a folder: reuse (pair, method) results computed before with the
            same weights, texts and settings, and store the new ones (see `tiviz.attribution.cache`).
        aggregate: "token" (default) or "word": subword tokens merged into words (`tiviz.aggregate`).
    """
    cfg = AttributionConfig.from_dict({**(config.to_dict() if config else {}), **settings})
    names = resolve_methods(methods)
    check_level(aggregate)
    if isinstance(model, Scorer):
        scorer, model = model, None
    provenance_model = model.provenance() if isinstance(model, LoadedModel) else {}
    if scorer is None:
        if model is None:
            raise ConfigError("model", None, "a model, a LoadedModel or a Scorer")
        scorer = make_scorer(model, reference=ref_model, beta=cfg.beta, tokenizer=tokenizer, model_id=model_id)
    elif ref_model is not None:
        raise ConfigError("ref_model", "given with a scorer", "none: the scorer carries its reference")
    tokenizer = scorer.tokenizer
    if tokenizer is None:
        raise ConfigError("tokenizer", None, "a tokenizer, or a LoadedModel that carries one")
    if not isinstance(pairs, list | tuple) or (pairs and not isinstance(pairs[0], PreferencePair)):
        pairs = load_pairs(pairs)
    check_methods(scorer, names, cfg)
    model = scorer.model
    model.eval()
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    total = len(pairs)
    encoded = [scorer.encode_pair(p, max_length=cfg.max_length, truncation_mode=cfg.truncation_mode)
               for p in pairs]
    store = None
    if cache:
        store = AttributionCache(default_folder() if cache is True else Path(cache), model, scorer.reference, cfg,
                                 scorer=scorer.provenance())
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
            scores = _score_batch(scorer, batch, list(missing), cfg)
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
    df.attrs[PROVENANCE_KEY] = _provenance(scorer, provenance_model, model_id, names, cfg, data_info)
    if store:
        df.attrs[PROVENANCE_KEY]["cache"] = {"folder": str(store.folder), "reused": store.hits,
                                             "computed": store.misses}
    return apply_aggregate(df, aggregate)


def check_methods(scorer: Scorer, names: Sequence[str], cfg: AttributionConfig) -> None:
    """Raise `ConfigError` unless the scorer can give every method (and the configured target) asked for."""
    needs_ref = [m for m in names if METHODS[m].needs_reference]
    if scorer.kind != "implicit_reward" and (needs_ref or (cfg.target == "reward" and scorer.kind == "likelihood")):
        what = f"method {needs_ref[0]!r}" if needs_ref else "target 'reward'"
        raise ConfigError("ref_model", None, f"a reference model: {what} compares the policy with pi_ref")
    if any(METHODS[m].uses_target for m in names):
        check_scorer_target(scorer.kind, cfg.target)
    logits = [m for m in names if m in READS_LM_LOGITS]
    if scorer.kind == "reward_model" and logits:
        raise ConfigError("methods", logits[0], f"{', '.join(scorer_methods('reward_model'))} with a reward model "
                          "(TI-DPO's weights read a causal LM's final logits)")


MethodScores = dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
Gradients = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class BatchContext:
    """What every method's scoring function reads for one padded batch (both sides of each pair)."""

    scorer: Scorer
    batch: Batch
    cfg: AttributionConfig
    sign: torch.Tensor  # (B,) +1 on chosen rows, -1 on rejected rows
    grads: Gradients  # target name -> (d target / d embeddings (B, L, H), embeddings, target values (B,))
    memo: dict[str, Any] = field(default_factory=dict)  # results methods share (token_score's forward)


MethodFn = Callable[[BatchContext], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def gradient_targets(names: Sequence[str], cfg: AttributionConfig) -> list[str]:
    """The targets whose embedding gradients the methods need (all from one forward)."""
    wanted = [cfg.target] if {"gradient", "grad_x_input"} & set(names) else []
    if "tidpo" in names and "max_logit" not in wanted:
        wanted.append("max_logit")
    return wanted


def _score_batch(scorer: Scorer, batch: Batch, names: list[str], cfg: AttributionConfig) -> MethodScores:
    """(scores (B, L), target values (B,) or None, convergence delta (B,) or None) per method."""
    B = batch.input_ids.shape[0]
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(B)], device=batch.input_ids.device)
    ctx = BatchContext(scorer, batch, cfg, sign, _gradients(scorer, batch, gradient_targets(names, cfg), sign))
    return {m: METHOD_FNS[m](ctx) for m in names}


def _gradient(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    g, _, v = ctx.grads[ctx.cfg.target]
    return gradient_norm(g, ctx.cfg.norm), v, None


def _grad_x_input(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    g, e, v = ctx.grads[ctx.cfg.target]
    return grad_x_input(g, e), v, None


def _tidpo(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    cfg, batch = ctx.cfg, ctx.batch
    g, _, v = ctx.grads["max_logit"]
    span = batch.response_mask if cfg.span == "response" else batch.attention_mask.bool()
    w = hybrid_weights(gradient_norm(g, "l1"), span, lam=cfg.lam, sigma_divisor=cfg.sigma_divisor,
                       scale=cfg.weight_scale)  # type: ignore[arg-type]
    return w, v, None


def _integrated_gradients(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    cfg, batch = ctx.cfg, ctx.batch
    B, L = batch.input_ids.shape
    s, fx, _, delta = integrated_gradients(
        ctx.scorer, batch, target=cfg.target, sign=ctx.sign, n_steps=cfg.n_steps, method=cfg.ig_method,
        baseline=cfg.ig_baseline, span=cfg.ig_span,
        internal_batch_size=min(cfg.internal_batch_size, max(B, TOKENS_PER_FORWARD // L)),
        tolerance=cfg.ig_tolerance, max_steps=cfg.ig_max_steps)
    return s, fx, delta


def _attention(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    return attention_scores(ctx.scorer.model, ctx.batch, ctx.cfg.attention_agg), None, None


def _token_score(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Each response token's own term of the score; the target value is the sequence's score. Computed once per
    batch however many methods read it (token_score, token_score_pair, implicit_reward)."""
    if "token_score" not in ctx.memo:
        terms = ctx.scorer.token_scores(ctx.batch)  # (B, L)
        if ctx.scorer.kind == "reward_model":
            with torch.no_grad():
                value = ctx.scorer.sequence_scores(ctx.batch)
        else:
            value = terms.sum(-1, dtype=torch.float64)
        ctx.memo["token_score"] = (terms, value, None)
    return ctx.memo["token_score"]


def _token_score_pair(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`token_score` in its pair view (`decomposition.pair_values`): shared stretches of the two responses
    cancel, so the values rank tokens by what they do to the margin; the target value is the sequence's score."""
    terms, value, _ = _token_score(ctx)
    out = terms.detach().clone()
    mask, ids = ctx.batch.response_mask.bool(), ctx.batch.input_ids
    for b in range(0, ids.shape[0], 2):  # rows alternate chosen, rejected
        mc, mr = mask[b], mask[b + 1]
        vc, vr = pair_values(ids[b][mc].tolist(), ids[b + 1][mr].tolist(), terms[b][mc].double().cpu().numpy(),
                             terms[b + 1][mr].double().cpu().numpy())
        out[b, mc] = torch.as_tensor(vc, dtype=out.dtype, device=out.device)
        out[b + 1, mr] = torch.as_tensor(vr, dtype=out.dtype, device=out.device)
    return out, value, None


def _occlusion(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Leave-one-out of the target: the scorer's own score for `reward` / `margin` (through both models, or a
    reward model's head), else the policy's likelihood target."""
    scorer, cfg = ctx.scorer, ctx.cfg
    if through_scorer(scorer, cfg.target):
        s, v = scorer_occlusion(scorer, ctx.batch, removal=cfg.occlusion_removal)
        if cfg.target == "margin":
            s, v = s * ctx.sign[:, None], v * ctx.sign
        return s, v, None
    s, v = occlusion_for_target(scorer.model, scorer.tokenizer, ctx.batch, cfg.target, ctx.sign,
                                removal=cfg.occlusion_removal)
    return s, v, None


# One scoring function per method id (`tiviz.attribution.methods.METHODS`); `implicit_reward` is `token_score`
# with a reference, under its old id.
METHOD_FNS: dict[str, MethodFn] = {
    "gradient": _gradient,
    "grad_x_input": _grad_x_input,
    "tidpo": _tidpo,
    "integrated_gradients": _integrated_gradients,
    "attention": _attention,
    "occlusion": _occlusion,
    "token_score": _token_score,
    "token_score_pair": _token_score_pair,
    "implicit_reward": _token_score,
}


def _gradients(scorer: Scorer, batch: Batch, names: list[str], sign: torch.Tensor) -> Gradients:
    """(grads (B, L, H), embeddings, values (B,)) per target name, all from one forward.

    Through a causal LM the LM head runs only at the union of the positions the targets read (response positions
    for logprob, reward and margin; the last valid position for max_logit); with a reference, `reward` and
    `margin` also run pi_ref at the same input point, so their gradients go through both models. A reward
    model's targets read its score.
    """
    if not names:
        return {}
    if scorer.kind == "reward_model":
        signs = [sign if name == "margin" else torch.ones_like(sign) for name in names]
        signed = [functools.partial(_times, factor=s) for s in signs]
        with frozen_parameters(scorer.model):
            grads, emb, values = shared_embedding_gradients(
                scorer.model, batch, signed, forward=lambda e: scorer.sequence_scores(batch, e))
        return {n: (g, emb, v) for n, g, v in zip(names, grads, values, strict=True)}
    spans = [target_positions(n, batch.attention_mask, batch.response_mask) for n in names]
    positions = torch.cat([p for p, _ in spans], dim=1)  # (B, K1 + K2 + ...)
    via_ref = [through_scorer(scorer, n) for n in names]
    zero = torch.zeros(batch.input_ids.shape[0], device=batch.input_ids.device)

    def forward(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = forward_logits(scorer.model, emb, batch.attention_mask, batch.position_ids, positions)  # (B, K, V)
        ref = scorer.reference_logps(batch, emb).sum(-1) if any(via_ref) else zero  # (B,) log pi_ref(y|x)
        return logits, ref

    def value(out: tuple[torch.Tensor, torch.Tensor], name: str, pos: torch.Tensor, valid: torch.Tensor,
              cols: slice, ref: bool) -> torch.Tensor:
        return target_value_at(name, out[0][:, cols], pos, valid, batch.input_ids, sign, out[1] if ref else zero,
                               scorer.beta if ref else 1.0)

    fns = []
    start = 0
    for name, (pos, valid), ref in zip(names, spans, via_ref, strict=True):
        fns.append(functools.partial(value, name=name, pos=pos, valid=valid,
                                     cols=slice(start, start + pos.shape[1]), ref=ref))
        start += pos.shape[1]
    with frozen_parameters(scorer.reference) if scorer.reference is not None else nullcontext():
        grads, emb, values = shared_embedding_gradients(scorer.model, batch, fns, positions, forward=forward)
    return {n: (g, emb, v) for n, g, v in zip(names, grads, values, strict=True)}


def _times(score: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return score * factor.to(score.dtype)


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


def _provenance(scorer: Scorer, loaded: dict[str, Any], model_id: str | None, names: list[str],
                cfg: AttributionConfig, data_info: dict[str, Any] | None) -> dict[str, Any]:
    from tiviz import __version__

    model = scorer.model
    targets = {m: (cfg.target if METHODS[m].uses_target else
                   "max_logit" if m == "tidpo" else None) for m in names}
    scored = scorer.provenance()
    prov: dict[str, Any] = {
        "model_id": model_id or loaded.get("model_id") or scorer.model_id
        or getattr(model.config, "name_or_path", "") or "unknown",
        "model_revision": loaded.get("model_revision"),
        "methods": names,
        "target": cfg.target,
        "method_targets": targets,
        "scorer": scored,
        "method_quantities": {m: method_quantity(scorer, m, cfg.target) for m in names},
        "settings": cfg.to_dict(),
        "reference_model": scored["reference_id"],
        "tiviz_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if data_info:
        prov["data"] = data_info
    if "implicit_reward" in names:
        prov["notes"] = ["implicit_reward is all zeros while the policy equals its reference (before training)"]
    return prov


def method_quantity(scorer: Scorer, method: str, target: str) -> str:
    """What a method's scores explain under a scorer, in words (recorded per method in the table)."""
    if method == "attention":
        return "attention received (explains no score)"
    if method == "tidpo":
        return "TI-DPO's training weights: L1 gradient of the max final logit (TI-DPO Eq. 4-5) with a prior"
    if method in ("token_score", "implicit_reward"):
        return f"each response token's own term of the {scorer.quantity()}"
    if method == "token_score_pair":
        return (f"each response token's own term of the {scorer.quantity()}, in the pair view: shared stretches "
                "of the two responses cancel, so chosen minus rejected sums to the margin")
    score = QUANTITIES["likelihood"] if target == "logprob" else scorer.quantity()
    what = "the max final logit (TI-DPO Eq. 4)" if target == "max_logit" else score
    if target == "margin":
        what = f"{score}, signed (chosen +1, rejected -1) so the pair's two sides sum to its margin"
    return f"{what}, each token as context (input-embedding attribution)"


def method_scores(model: Any, tokenizer: Any, batch: Batch, methods: Sequence[str], config: AttributionConfig,
                  ref_model: Any | None = None, adapter_reference: bool = False) -> dict[str, torch.Tensor]:
    """Each method's raw per-token scores (B, L) on a padded batch whose rows alternate chosen, rejected (as
    `attribute` lays them out): the same computation as `attribute`, without the table. Used by training to take
    its token weights from any method (docs/TRAINING.md, token-weight sources); `adapter_reference`: pi_ref is the
    PEFT model with its adapter disabled."""
    scorer = make_scorer(model, reference=ref_model, beta=config.beta, tokenizer=tokenizer,
                         adapter_reference=adapter_reference)
    return {m: s for m, (s, _, _) in _score_batch(scorer, batch, list(methods), config).items()}
