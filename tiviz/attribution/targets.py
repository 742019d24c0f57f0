"""Scalar targets whose gradient the attribution methods explain, one value per sequence (pure functions).

All take the model's logits (B, L, V) and explicit masks, so padding side and prompt/response split are the
caller's business. Log-prob of token t is read from the logits at position t-1.

A target reads few positions' logits: `logprob` those that score the response, `max_logit` one per row. The
`*_at` variants take only those positions' logits (`target_positions`), so the caller can skip the LM head
(H x V = 576 x 49152 on the default model) at every other position.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from tiviz.attribution.hybrid import last_valid_index

TargetName = Literal["max_logit", "logprob", "reward", "margin"]
TARGETS: tuple[str, ...] = ("max_logit", "logprob", "reward", "margin")


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities `log p(x_t | x_<t)`, aligned with input_ids; position 0 gets 0.

    Args:
        logits: (B, L, V) model outputs.
        input_ids: (B, L) the tokens scored.
    Returns:
        (B, L) at least float32; entry t is the log-prob of input_ids[:, t] under logits[:, t-1].
    """
    work = logits[:, :-1]
    work = work.to(torch.promote_types(work.dtype, torch.float32))  # bf16/fp16 up to fp32; fp64 stays
    logp = torch.log_softmax(work, dim=-1)  # (B, L-1, V)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    return torch.nn.functional.pad(picked, (1, 0), value=0.0)  # (B, L)


def max_logit_target(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`L_target = max_v logits[T-1, v]` at each row's last valid position (TI-DPO Eq. 4). Returns (B,)."""
    idx = last_valid_index(attention_mask)  # (B,)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, idx].max(-1).values


def sequence_logp(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the response tokens' log-probs, `log pi(y | x)`. Returns (B,)."""
    return (token_logps(logits, input_ids) * response_mask.to(torch.float32)).sum(-1)


def target_value(
    name: str,
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    sign: torch.Tensor,
    ref_logp: torch.Tensor,
    reward_scale: float,
) -> torch.Tensor:
    """The named target per sequence, (B,). All inputs carry the batch dimension so Captum can expand them.

    - max_logit: the largest logit at the last valid position (TI-DPO Eq. 4);
    - logprob: `log pi(y | x)` over the response;
    - reward: `beta * (log pi(y|x) - log pi_ref(y|x))`, `ref_logp` holding the constant reference term;
    - margin: `sign * reward` (chosen +1, rejected -1), or `sign * logprob` when there is no reference
      (`reward_scale` 1 and `ref_logp` 0), so the pair's margin is the sum over its two sequences.
    """
    if name == "max_logit":
        return max_logit_target(logits, attention_mask)
    _check_name(name)
    return _from_logprob(name, sequence_logp(logits, input_ids, response_mask), sign, ref_logp, reward_scale)


def response_positions(response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit positions that score each row's response tokens: t - 1 for every response token t >= 1.

    Args:
        response_mask: (B, L) bool, True on response tokens.
    Returns:
        positions (B, K) long, in order and left-aligned, padded with 0; valid (B, K) bool. K is the largest
        number of scored response tokens in a row (at least 1, so shapes never collapse).
    """
    scored = response_mask[:, 1:].bool()  # (B, L-1): the logits at p score token p + 1
    L1 = scored.shape[1]
    K = max(int(scored.sum(-1).max()) if scored.numel() else 0, 1)
    idx = torch.arange(L1, device=scored.device).expand_as(scored)  # (B, L-1)
    first = torch.where(scored, idx, idx + L1).sort(-1).values  # scored positions first, in order
    if first.shape[1] < K:  # L == 1: nothing can be scored
        first = torch.full((scored.shape[0], K), L1, dtype=torch.long, device=scored.device)
    order = first[:, :K]  # (B, K)
    valid = order < L1
    return torch.where(valid, order, torch.zeros_like(order)), valid


def target_positions(name: str, attention_mask: torch.Tensor,
                     response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose logits target `name` reads: (positions (B, K) long, valid (B, K) bool).

    max_logit reads one position per row (the last valid one); the others read the response-scoring positions.
    """
    if name == "max_logit":
        last = last_valid_index(attention_mask).clamp_min(0).unsqueeze(1)  # (B, 1)
        return last, torch.ones_like(last, dtype=torch.bool)
    _check_name(name)
    return response_positions(response_mask)


def target_value_at(
    name: str,
    logits: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    input_ids: torch.Tensor,
    sign: torch.Tensor,
    ref_logp: torch.Tensor,
    reward_scale: float,
) -> torch.Tensor:
    """`target_value` from the logits at `target_positions(name, ...)` only; the same value, (B,).

    Args:
        logits: (B, K, V) the logits at `positions`.
        positions, valid: (B, K) from `target_positions`.
        input_ids, sign, ref_logp, reward_scale: as in `target_value`.
    """
    if name == "max_logit":
        return logits[:, 0].max(-1).values
    _check_name(name)
    lp = token_logps_at(logits, positions, valid, input_ids).sum(-1)  # (B,)
    return _from_logprob(name, lp, sign, ref_logp, reward_scale)


def token_logps_at(logits: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                   input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of the token after each of `positions`, from those positions' logits only; 0 where not valid.

    Args:
        logits: (B, K, V) the logits at `positions` (from `response_positions`).
        positions, valid: (B, K).
        input_ids: (B, L) the tokens scored.
    Returns:
        (B, K) at least float32: entry k is log p(input_ids[positions[k] + 1]).
    """
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 up to fp32; fp64 stays
    logp = torch.log_softmax(work, dim=-1)  # (B, K, V)
    nxt = input_ids.gather(1, (positions + 1).clamp_max(input_ids.shape[1] - 1))  # (B, K) the tokens scored
    picked = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)  # (B, K)
    return picked * valid.to(picked.dtype)


def scatter_positions(values: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                      length: int) -> torch.Tensor:
    """Per-token values (B, L) from the values at response-scoring positions (B, K): the value read at logit
    position p belongs to token p + 1; 0 elsewhere."""
    out = torch.zeros(values.shape[0], length, dtype=values.dtype, device=values.device)  # (B, L)
    index = (positions + 1).clamp_max(length - 1)
    return out.scatter_add(1, index, values * valid.to(values.dtype))


def _check_name(name: str) -> None:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; allowed: {', '.join(TARGETS)}")


def _from_logprob(name: str, lp: torch.Tensor, sign: torch.Tensor, ref_logp: torch.Tensor,
                  reward_scale: float) -> torch.Tensor:
    """logprob, reward or margin from the sequence log-prob `lp` (B,)."""
    if name == "logprob":
        return lp
    reward = reward_scale * (lp - ref_logp)
    return reward if name == "reward" else sign * reward


# ---------------------------------------------------------------------------------------------- scorer targets

# The targets each scorer kind can explain. With a reference, `logprob` is still the policy's own likelihood,
# `reward` and `margin` the implicit reward through both models; a reward model has no logits: its score is the
# target (`reward`), or the signed score (`margin`).
SCORER_TARGETS: dict[str, tuple[str, ...]] = {
    "likelihood": ("max_logit", "logprob", "margin"),
    "implicit_reward": ("max_logit", "logprob", "reward", "margin"),
    "reward_model": ("reward", "margin"),
}


def check_scorer_target(kind: str, name: str) -> None:
    """Raise `ConfigError` unless a scorer of `kind` can explain target `name` (`SCORER_TARGETS`)."""
    from tiviz.errors import ConfigError

    allowed = SCORER_TARGETS[kind]
    if name not in allowed:
        why = {"likelihood": "target 'reward' compares the policy with pi_ref: give a reference model",
               "reward_model": "a reward model has no token logits; its score is target 'reward'"}.get(kind, "")
        raise ConfigError("target", name, f"{', '.join(allowed)} with a {kind} scorer" + (f" ({why})" if why else ""))


def through_scorer(scorer: Any, name: str) -> bool:
    """Whether target `name` reads the scorer beyond the policy's own logits (the reference, or a reward head)."""
    return scorer.kind == "reward_model" or (scorer.kind == "implicit_reward" and name in ("reward", "margin"))


def scorer_target(scorer: Any, name: str, batch: Any, inputs_embeds: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Target `name` of a scorer that reads more than the policy's logits (`through_scorer`), (B,), differentiable
    in `inputs_embeds`: `reward` is the scorer's score (implicit reward through both models, or the reward
    model's output), `margin` the signed score (chosen +1, rejected -1)."""
    score = scorer.sequence_scores(batch, inputs_embeds)  # (B,)
    return sign.to(score.dtype) * score if name == "margin" else score
