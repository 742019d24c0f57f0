"""Scalar targets whose gradient the attribution methods explain, one value per sequence (pure functions).

All take the model's logits (B, L, V) and explicit masks, so padding side and prompt/response split are the
caller's business. Log-prob of token t is read from the logits at position t-1.
"""

from __future__ import annotations

from typing import Literal

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
    lp = sequence_logp(logits, input_ids, response_mask)  # (B,)
    if name == "logprob":
        return lp
    reward = reward_scale * (lp - ref_logp)
    if name == "reward":
        return reward
    if name == "margin":
        return sign * reward
    raise ValueError(f"unknown target {name!r}; allowed: {', '.join(TARGETS)}")
