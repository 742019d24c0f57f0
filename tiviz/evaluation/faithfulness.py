"""Faithfulness: does removing a method's top tokens change the model's target, and do they alone suffice?

Tokens are removed by swapping their input embedding for a reference embedding (the pad token's by default);
positions, the prompt and every other token stay. All perturbations of one sequence go through the model
together, in batches under `torch.inference_mode`, with the prompt's key/value cache computed once and shared
(the perturbations only touch the response). docs/EVALUATION.md defines the scores.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tiviz.errors import ConfigError

ERASER_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)  # DeYoung et al. 2020, the AOPC bins
CURVE_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # deletion/insertion curves
BASE_TARGETS: tuple[str, ...] = ("logprob", "max_logit")
Baseline = Literal["pad", "unk", "zero", "mean"]
LOGIT_BUDGET = 1 << 26  # logits held at once (elements): bounds memory for long responses and big vocabularies


def reference_embedding(model: Any, tokenizer: Any | None = None, kind: Baseline = "pad") -> torch.Tensor:
    """The embedding (H,) that stands in for a removed token: the pad (else EOS) or unk token's, zeros, or the
    vocabulary's mean embedding."""
    table = model.get_input_embeddings().weight.detach()  # (V, H)
    if kind == "zero":
        return torch.zeros_like(table[0])
    if kind == "mean":
        return table.mean(0)
    if kind not in ("pad", "unk"):
        raise ConfigError("baseline", kind, "'pad', 'unk', 'zero', 'mean'")
    src = tokenizer if tokenizer is not None else model.config
    tid = getattr(src, "pad_token_id" if kind == "pad" else "unk_token_id", None)
    if tid is None:
        tid = getattr(src, "eos_token_id", None)
    if isinstance(tid, list | tuple):
        tid = tid[0]
    if tid is None:
        raise ConfigError("baseline", kind, "a token the tokenizer defines; this one has no pad, unk or eos token")
    return table[int(tid)]


def top_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Tokens in the top q of a response of n tokens: ceil(q n), at least 1, at most n. Returns (F,) int."""
    return np.array([min(n, max(1, math.ceil(q * n - 1e-9))) for q in fractions], dtype=np.int64)


def ranking(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Token indices from the highest score down; ties (and NaN, ranked last) broken at random by `rng`."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return np.lexsort((rng.random(len(s)), -s))


def perturbed_targets(
    model: Any,
    input_ids: Sequence[int] | np.ndarray,
    response_start: int,
    keep: np.ndarray,
    ref_emb: torch.Tensor,
    *,
    batch_size: int = 32,
    prompt_cache: bool = True,
) -> dict[str, np.ndarray]:
    """The targets of one sequence under many perturbations of its response.

    Args:
        model: a causal LM in eval mode.
        input_ids: (L,) the unpadded prompt + response.
        response_start: index of the first response token.
        keep: (N, n) bool, n = L - response_start; False swaps that response token's embedding for `ref_emb`.
        ref_emb: (H,) the stand-in embedding.
        batch_size: perturbations per forward.
        prompt_cache: compute the prompt's key/value cache once and reuse it (same result, fewer FLOPs).
    Returns:
        {"logprob": (N,) log pi(response | prompt), the sum of the response tokens' log-probs (the first one's
        read from the prompt's last logits), "max_logit": (N,) the largest logit at the last position}.
    """
    device = next(model.parameters()).device
    ids = torch.tensor(np.array(input_ids), dtype=torch.long, device=device)  # (L,)
    L, P = ids.shape[0], int(response_start)
    n = L - P
    if n <= 0:
        raise ValueError("the sequence has no response token to perturb")
    keep_t = torch.tensor(np.array(keep, dtype=bool), device=device).reshape(-1, n)  # (N, n)
    out = {t: np.empty(keep_t.shape[0]) for t in BASE_TARGETS}
    vocab = int(model.get_output_embeddings().weight.shape[0])
    cached = prompt_cache and P >= 1
    step = max(1, min(batch_size, LOGIT_BUDGET // max(1, (n if cached else L) * vocab)))
    with torch.inference_mode():
        emb = model.get_input_embeddings()(ids)  # (L, H)
        ref = ref_emb.to(device=device, dtype=emb.dtype)  # (H,)
        labels = ids[P:]  # (n,)
        lead = torch.zeros((), device=device)
        if cached:
            pre = model(inputs_embeds=emb[None, :P], attention_mask=torch.ones(1, P, dtype=torch.long, device=device),
                        position_ids=torch.arange(P, device=device)[None], use_cache=True)
            cache = returned_cache(pre)
            cache_arg = cache_argument(model)
            lead = torch.log_softmax(pre.logits[0, -1].float(), -1)[labels[0]]  # log p(y_0 | prompt), fixed
        for s in range(0, keep_t.shape[0], step):
            k = keep_t[s : s + step]  # (N, n)
            N = k.shape[0]
            x = torch.where(k.unsqueeze(-1), emb[P:].unsqueeze(0), ref)  # (N, n, H)
            mask = torch.ones(N, L, dtype=torch.long, device=device)
            if cached:
                c = copy.deepcopy(cache)
                c.batch_repeat_interleave(N)
                logits = model(inputs_embeds=x, attention_mask=mask, use_cache=True, **{cache_arg: c},
                               position_ids=torch.arange(P, L, device=device).expand(N, -1)).logits  # (N, n, V)
                pred, tgt = logits[:, :-1], labels[1:]  # response positions 0..n-2 predict tokens 1..n-1
            else:
                full = torch.cat([emb[None, :P].expand(N, -1, -1), x], dim=1)  # (N, L, H)
                logits = model(inputs_embeds=full, attention_mask=mask, use_cache=False,
                               position_ids=torch.arange(L, device=device).expand(N, -1)).logits  # (N, L, V)
                if P >= 1:  # positions P-1..L-2 predict the n response tokens
                    pred, tgt = logits[:, P - 1 : L - 1], labels
                else:  # no prompt: token 0 has no log-prob (as in targets.token_logps)
                    pred, tgt = logits[:, :-1], labels[1:]
            logp = torch.log_softmax(pred.float(), -1).gather(-1, tgt.expand(N, -1).unsqueeze(-1)).squeeze(-1)
            out["logprob"][s : s + N] = (logp.sum(-1) + lead).double().cpu().numpy()  # (N,)
            out["max_logit"][s : s + N] = logits[:, -1].float().max(-1).values.double().cpu().numpy()
    return out


def cache_argument(model: Any) -> str:
    """The forward's key/value-cache keyword: `cache` (transformers >= 5.2x) or `past_key_values` (before). A PEFT
    wrapper passes its keywords through to the model it wraps, whose signature decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward returned (`cache` or, before transformers 5.2x, `past_key_values`)."""
    return output["cache"] if "cache" in output.keys() else output.past_key_values


@dataclass
class SequenceCurves:
    """Targets of one sequence with growing top-k sets of each ranking removed (deletion) or kept alone
    (insertion); `full` is the intact sequence, `empty` every response token removed."""

    fractions: np.ndarray  # (F,)
    counts: np.ndarray  # (F,) tokens in each top-k set
    full: dict[str, float]  # target -> f(x)
    empty: dict[str, float]  # target -> f(x with the whole response removed)
    deletion: dict[str, dict[str, np.ndarray]]  # ranking -> target -> (F,) f(x without the top-k)
    insertion: dict[str, dict[str, np.ndarray]]  # ranking -> target -> (F,) f(x with only the top-k)


def faithfulness_curves(
    model: Any,
    input_ids: Sequence[int] | np.ndarray,
    response_start: int,
    orders: Mapping[str, np.ndarray],
    ref_emb: torch.Tensor,
    *,
    fractions: Sequence[float] = tuple(sorted(set(ERASER_FRACTIONS) | set(CURVE_FRACTIONS))),
    batch_size: int = 32,
    prompt_cache: bool = True,
) -> SequenceCurves:
    """Deletion and insertion curves of one sequence for several rankings at once.

    Args:
        orders: ranking name -> (n,) response-token indices, most important first (see `ranking`).
        fractions: the top-k fractions q; k = ceil(q n).
    Every distinct perturbation (two rankings often share their top tokens) is forwarded once.
    """
    n = len(input_ids) - int(response_start)
    counts = top_counts(n, fractions)
    masks: dict[bytes, int] = {}
    rows: list[np.ndarray] = []

    def slot(mask: np.ndarray) -> int:
        key = mask.tobytes()
        if key not in masks:
            masks[key] = len(rows)
            rows.append(mask)
        return masks[key]

    full_i, empty_i = slot(np.ones(n, bool)), slot(np.zeros(n, bool))
    index: dict[str, tuple[list[int], list[int]]] = {}
    for name, order in orders.items():
        dele, ins = [], []
        for k in counts:
            top = np.zeros(n, bool)
            top[np.asarray(order)[:k]] = True
            dele.append(slot(~top))
            ins.append(slot(top))
        index[name] = (dele, ins)
    values = perturbed_targets(model, input_ids, response_start, np.stack(rows), ref_emb,
                               batch_size=batch_size, prompt_cache=prompt_cache)
    return SequenceCurves(
        fractions=np.asarray(fractions, dtype=np.float64), counts=counts,
        full={t: float(v[full_i]) for t, v in values.items()},
        empty={t: float(v[empty_i]) for t, v in values.items()},
        deletion={name: {t: v[d] for t, v in values.items()} for name, (d, _) in index.items()},
        insertion={name: {t: v[i] for t, v in values.items()} for name, (_, i) in index.items()},
    )


def add_log_ratio(curves: SequenceCurves, reference: SequenceCurves) -> SequenceCurves:
    """`curves` with a "log_ratio" target added: log pi - log pi_ref under the same perturbations (the reference
    model's curves built from the same rankings), which beta scales into the implicit reward. Returns `curves`."""
    curves.full["log_ratio"] = curves.full["logprob"] - reference.full["logprob"]
    curves.empty["log_ratio"] = curves.empty["logprob"] - reference.empty["logprob"]
    for kind in ("deletion", "insertion"):
        mine, theirs = getattr(curves, kind), getattr(reference, kind)
        for name in mine:
            mine[name]["log_ratio"] = mine[name]["logprob"] - theirs[name]["logprob"]  # (F,)
    return curves


def summarise(curves: SequenceCurves, name: str, target: str = "logprob",
              curve_fractions: Sequence[float] = CURVE_FRACTIONS,
              eraser_fractions: Sequence[float] = ERASER_FRACTIONS) -> dict[str, float]:
    """The four faithfulness scores of one ranking on one sequence (docs/EVALUATION.md):

    - aopc_deletion = mean over q in curve_fractions of f(x) - f(x without top q);
    - aopc_insertion = mean over q in curve_fractions of f(only top q) - f(empty);
    - comprehensiveness = mean over q in eraser_fractions of f(x) - f(x without top q);
    - sufficiency = mean over q in eraser_fractions of f(x) - f(only top q) (lower is better).
    """
    fr = [round(float(q), 9) for q in curves.fractions]

    def pick(arr: np.ndarray, qs: Sequence[float]) -> np.ndarray:
        return np.array([arr[fr.index(round(float(q), 9))] for q in qs])

    f, e = curves.full[target], curves.empty[target]
    d, i = curves.deletion[name][target], curves.insertion[name][target]
    return {
        "aopc_deletion": float(np.mean(f - pick(d, curve_fractions))),
        "aopc_insertion": float(np.mean(pick(i, curve_fractions) - e)),
        "comprehensiveness": float(np.mean(f - pick(d, eraser_fractions))),
        "sufficiency": float(np.mean(f - pick(i, eraser_fractions))),
    }


def margin_scores(curves: SequenceCurves, name: str, side: str, target: str = "logprob", scale: float = 1.0,
                  curve_fractions: Sequence[float] = CURVE_FRACTIONS) -> dict[str, float]:
    """Pair-level faithfulness of one side of a pair: how the margin M = f(chosen) - f(rejected) moves when this
    side's top tokens are removed (or kept alone), signed so that higher is more faithful (docs/EVALUATION.md,
    "Pair-level faithfulness").

    The other side stays intact, so M changes by the side's sign (+1 chosen, -1 rejected) times the change of
    its own score `f = scale * target`. Removing chosen's top tokens should lower M, removing rejected's should
    raise it:

    - margin_deletion = mean over q of -sign * (M(x without the side's top q) - M(x));
    - margin_insertion = mean over q of sign * (M(only the side's top q kept) - M(the side emptied)).

    Args:
        side: "chosen" or "rejected"; scale: > 0 (beta for an implicit reward, else 1).
    """
    if side not in ("chosen", "rejected"):
        raise ValueError(f"side must be 'chosen' or 'rejected', not {side!r}")
    if not scale > 0:
        raise ValueError("scale must be > 0: the margin's orientation comes from the side alone")
    sign = 1.0 if side == "chosen" else -1.0  # the side's sign in M
    fr = [round(float(q), 9) for q in curves.fractions]
    at = [fr.index(round(float(q), 9)) for q in curve_fractions]
    full, empty = scale * curves.full[target], scale * curves.empty[target]
    deleted = scale * curves.deletion[name][target][at]  # (Q,) the side's f with its top q removed
    kept = scale * curves.insertion[name][target][at]  # (Q,) the side's f with only its top q kept
    change_deleted = sign * (deleted - full)  # (Q,) M(x without top q) - M(x)
    change_kept = sign * (kept - empty)  # (Q,) M(only top q) - M(side emptied)
    return {"margin_deletion": float(np.mean(-sign * change_deleted)),
            "margin_insertion": float(np.mean(sign * change_kept))}


def leave_one_out(model: Any, input_ids: Sequence[int] | np.ndarray, response_start: int, ref_emb: torch.Tensor,
                  target: str = "logprob") -> np.ndarray:
    """Occlusion: f(x) - f(x with response token i swapped for `ref_emb`), for every response token. (n,)

    The `occlusion` attribution method's computation (`tiviz.attribution.occlusion`) on one unpadded sequence."""
    from tiviz.attribution.occlusion import Term, sequence_occlusion

    if target not in BASE_TARGETS:
        raise ConfigError("target", target, ", ".join(map(repr, BASE_TARGETS)))
    device = next(model.parameters()).device
    ids = torch.tensor(np.array(input_ids), dtype=torch.long, device=device)  # (L,)
    resp = torch.arange(len(ids), device=device) >= int(response_start)  # (L,)
    with torch.inference_mode():
        emb = model.get_input_embeddings()(ids)  # (L, H)
        eff, _ = sequence_occlusion([Term(model, 1.0, target)], emb, ids, resp,  # type: ignore[arg-type]
                                    ref_emb.to(emb))
    return eff[int(response_start):].cpu().numpy()
