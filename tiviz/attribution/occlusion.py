"""Occlusion (leave-one-out): each response token's score is f(x) - f(x with that token removed).

A token is removed as `tiviz evaluate` removes it (`tiviz.evaluation.faithfulness.reference_embedding`): its input
embedding is swapped for the removal embedding; ids, positions and the mask stay. The explained score f is a sum
of *terms*, each one model's readout times a weight: the log-likelihood log pi(y|x) (one term), the implicit
reward beta * (log pi - log pi_ref) (two terms, the same embeddings fed to both models), the largest final logit,
or a reward model's score head at the last token. So occlusion sees a token only as context for the positions
after it (docs/METHOD.md), as the gradient methods do; it is the causal quantity they approximate to first order.

Speed: a token changes only the positions from its own on, so each model runs the intact sequence once with its
key/value cache kept, and each occluded token runs only the suffix after the cached prefix. Occluded tokens go in
chunks of consecutive positions that share one prefix (cut at the chunk's first token): a chunk recomputes a few
unchanged positions (at most `rows - 1` per row) to run as one batch. `naive=True` runs one full forward per
occluded token instead: the reference the fast path is tested against (same values within float error).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tiviz.evaluation.faithfulness import LOGIT_BUDGET, cache_argument, reference_embedding, returned_cache
from tiviz.scoring import _embedding_offset
from tiviz.tokenization import TOKENS_PER_FORWARD, Batch

log = logging.getLogger(__name__)

Readout = Literal["logprob", "max_logit", "reward_head"]
Progress = Callable[[int, int], None]
KV_ROWS_FACTOR = 8  # a chunk holds at most this many x TOKENS_PER_FORWARD cached prefix tokens (key/value memory)


@dataclass(frozen=True)
class Term:
    """One model's share of the explained score: `weight * readout(model)`.

    readout: "logprob" (the response tokens' log-probs summed, log pi(y|x)), "max_logit" (the largest logit at the
    last position, TI-DPO Eq. 4) or "reward_head" (a sequence-classification model's one output at the last
    position). `context` is entered around every forward of this term (e.g. a PEFT policy with its adapter
    disabled, standing in for pi_ref).
    """

    model: Any
    weight: float
    readout: Readout
    context: Callable[[], AbstractContextManager[Any]] = field(default=contextlib.nullcontext)


def target_terms(model: Any, ref_model: Any | None, target: str, beta: float) -> list[Term]:
    """The terms of an attribution target (`tiviz.attribution.targets`), before the margin's sign.

    logprob: log pi(y|x); reward (and margin with a reference): beta * (log pi - log pi_ref) through both models;
    margin without a reference: log pi(y|x); max_logit: the largest final logit.
    """
    if target == "max_logit":
        return [Term(model, 1.0, "max_logit")]
    if target == "logprob" or (target == "margin" and ref_model is None):
        return [Term(model, 1.0, "logprob")]
    if ref_model is None:
        raise ValueError(f"target {target!r} needs a reference model")
    return [Term(model, beta, "logprob"), Term(ref_model, -beta, "logprob")]


def occlusion(
    terms: Sequence[Term],
    batch: Batch,
    removal: torch.Tensor,
    *,
    naive: bool = False,
    tokens_per_forward: int | None = None,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out scores of every response token of every row.

    Args:
        terms: what f is (see `Term`); every model reads the first term's input embeddings, shifted by the
            constant difference of its own embedding table where it has another (as `tiviz.scoring` does).
        batch: padded sequences (each row's valid tokens contiguous).
        removal: (H,) the embedding that stands in for a removed token.
        naive: one full forward per occluded token, no cache (the reference path).
        tokens_per_forward: padded tokens per forward (default: `tiviz.tokenization.TOKENS_PER_FORWARD`).
        progress: called as progress(rows_done, rows_total) after each row of the batch.
    Returns:
        scores (B, L): f(x) - f(x without token i) at response positions, 0 elsewhere; values (B,): f(x).
    """
    tokens_per_forward = tokens_per_forward or TOKENS_PER_FORWARD
    B, L = batch.input_ids.shape
    scores = torch.zeros(B, L, dtype=torch.float64, device=batch.input_ids.device)
    values = torch.zeros(B, dtype=torch.float64, device=batch.input_ids.device)
    emb_layer = terms[0].model.get_input_embeddings()
    with torch.inference_mode():
        for b in range(B):
            valid = batch.attention_mask[b].bool()  # (L,)
            ids = batch.input_ids[b][valid]  # (n,)
            resp = batch.response_mask[b][valid].bool()  # (n,)
            emb = emb_layer(ids)  # (n, H)
            eff, val = sequence_occlusion(terms, emb, ids, resp, removal.to(emb), naive=naive,
                                          tokens_per_forward=tokens_per_forward)
            scores[b, valid.nonzero().squeeze(-1)] = eff
            values[b] = val
            if progress is not None:
                progress(b + 1, B)
    return scores, values


def sequence_occlusion(terms: Sequence[Term], emb: torch.Tensor, ids: torch.Tensor, resp: torch.Tensor,
                       removal: torch.Tensor, *, naive: bool = False, tokens_per_forward: int = 1024
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out effects of one unpadded sequence: ((n,) float64, 0 off the response; f(x) float64).

    Each effect is summed from per-position differences (intact minus occluded), so large scores such as a
    log-likelihood of hundreds of nats do not cost float32 precision.
    """
    n = emb.shape[0]
    targets = resp.nonzero().squeeze(-1).tolist()  # the occluded positions, in order
    effects = torch.zeros(n, dtype=torch.float64, device=emb.device)
    value = torch.zeros((), dtype=torch.float64, device=emb.device)
    for j, term in enumerate(terms):
        with term.context():
            offset = torch.zeros_like(emb) if j == 0 else _embedding_offset(term.model, emb[None], ids[None])[0]
            own = emb + offset  # (n, H) this model's input: the same point, shifted into its own embedding table
            intact, cache = _readout(term, own[None], ids, resp, start=0, cache=None, keep_cache=not naive)
            value += term.weight * intact[0].sum()
            done = 0
            while done < len(targets):
                first = targets[done]
                start = 0 if naive or cache is None else first
                S = n - start  # suffix length run per row
                rows = max(1, min(tokens_per_forward // S, LOGIT_BUDGET // (S * _vocab(term)),
                                  KV_ROWS_FACTOR * tokens_per_forward // n, max(4, S // 4) if start > 0 else S))
                chunk = targets[done : done + rows]
                done += len(chunk)
                k = len(chunk)
                x = emb[start:].repeat(k, 1, 1)  # (k, S, H)
                at = torch.tensor(chunk, device=emb.device) - start  # (k,)
                x[torch.arange(k, device=emb.device), at] = removal
                x = x + offset[start:]
                prefix = _prefix(cache, start, k) if start > 0 else None
                occl, _ = _readout(term, x, ids, resp, start=start, cache=prefix, keep_cache=False)  # (k, S)
                diff = intact[:, start:] - occl  # (k, S) per-position change
                if not naive:  # positions before the occluded one are unchanged: exact zeros, not float noise
                    cols = torch.arange(S, device=emb.device)
                    diff = torch.where(cols[None] >= at[:, None], diff, torch.zeros_like(diff))
                effects[torch.tensor(chunk, device=emb.device)] += term.weight * diff.sum(-1)
    return effects, value


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """bfloat16/float16 up to float32; float32 and float64 stay (a float64 run is the precision reference)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _vocab(term: Term) -> int:
    if term.readout == "reward_head":
        return 1
    return int(term.model.get_output_embeddings().weight.shape[0])


def _prefix(cache: Any, length: int, rows: int) -> Any:
    """A new cache holding the first `length` positions of a one-row `cache`, repeated over `rows` rows."""
    from transformers import DynamicCache

    data = [(k[:, :, :length].expand(rows, -1, -1, -1), v[:, :, :length].expand(rows, -1, -1, -1))
            for k, v, *_ in cache]
    return DynamicCache(data)


def _cacheable(cache: Any) -> bool:
    """Only plain growing caches can be cut at any prefix (not sliding-window or linear-attention layers)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _readout(term: Term, x: torch.Tensor, ids: torch.Tensor, resp: torch.Tensor, *, start: int, cache: Any,
             keep_cache: bool) -> tuple[torch.Tensor, Any]:
    """Per-position contributions to the term's readout over positions start..n-1, (k, S) float64, whose row sum
    is the readout (log-probs sit at the position whose logits score them); and the cache when `keep_cache`."""
    model = term.model
    k, S, _ = x.shape
    n = start + S
    dev = x.device
    kwargs: dict[str, Any] = {
        "inputs_embeds": x, "use_cache": keep_cache or cache is not None,
        "attention_mask": torch.ones(k, n, dtype=torch.long, device=dev),
        "position_ids": torch.arange(start, n, device=dev).expand(k, -1),
    }
    out = torch.zeros(k, S, dtype=torch.float64, device=dev)
    if term.readout == "reward_head":
        backbone = getattr(model, model.base_model_prefix)
        if cache is not None:
            kwargs[cache_argument(backbone)] = cache
        res = backbone(**kwargs)
        out[:, -1] = model.score(res.last_hidden_state[:, -1]).squeeze(-1).double()  # (k,)
    else:
        if cache is not None:
            kwargs[cache_argument(model)] = cache
        if term.readout == "max_logit":
            res = model(**kwargs, logits_to_keep=1)
            out[:, -1] = _upcast(res.logits[:, -1]).max(-1).values.double()
        else:
            res = model(**kwargs)
            scored = resp[start + 1 :]  # (S-1,) whether the token after each position is a response token
            nxt = ids[start + 1 :]  # (S-1,)
            logp = torch.log_softmax(_upcast(res.logits[:, :-1]), -1)  # (k, S-1, V)
            picked = logp.gather(-1, nxt.expand(k, -1).unsqueeze(-1)).squeeze(-1)  # (k, S-1)
            out[:, :-1] = torch.where(scored, picked, torch.zeros_like(picked)).double()
    kept = returned_cache(res) if keep_cache else None
    if kept is not None and not _cacheable(kept):
        log.info("occlusion: %s's cache cannot be cut at a prefix; running full forwards", type(model).__name__)
        kept = None
    return out, kept


def scorer_terms(scorer: Any) -> list[Term]:
    """The terms of a `tiviz.scoring.Scorer`'s score: log pi(y|x); beta * (log pi - log pi_ref) through both
    models (the reference may be the policy with its PEFT adapter disabled); or a reward model's head."""
    if scorer.kind == "reward_model":
        return [Term(scorer.model, 1.0, "reward_head")]
    terms = [Term(scorer.model, 1.0 if scorer.kind == "likelihood" else scorer.beta, "logprob")]
    if scorer.kind == "implicit_reward":
        if scorer.adapter_reference:
            terms.append(Term(scorer.model, -scorer.beta, "logprob", context=scorer.model.disable_adapter))
        else:
            terms.append(Term(scorer.reference, -scorer.beta, "logprob"))
    return terms


def scorer_occlusion(scorer: Any, batch: Batch, *, removal: str = "pad", naive: bool = False,
                     progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`occlusion` of a scorer's score per row: scores (B, L) and values (B,) = the scorer's score of each row."""
    ref = reference_embedding(scorer.model, scorer.tokenizer, removal)  # type: ignore[arg-type]
    return occlusion(scorer_terms(scorer), batch, ref, naive=naive, progress=progress)


def occlusion_for_target(model: Any, tokenizer: Any, batch: Batch, target: str, sign: torch.Tensor, *,
                         ref_model: Any | None = None, beta: float = 0.1, removal: str = "pad",
                         naive: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`occlusion` of an attribution target (`AttributionConfig.target`): scores (B, L) and values (B,), the
    margin signed per row by `sign` (chosen +1, rejected -1)."""
    terms = target_terms(model, ref_model, target, beta)
    ref = reference_embedding(model, tokenizer, removal)  # type: ignore[arg-type]
    scores, values = occlusion(terms, batch, ref, naive=naive)
    if target == "margin":
        scores, values = scores * sign[:, None], values * sign
    return scores, values
