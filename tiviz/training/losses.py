"""TI-DPO's loss as pure tensor functions (docs/METHOD.md §3 to §5).

Every function takes its masks explicitly, so padding side and the prompt/response split are the caller's business.
Per-token tensors are aligned with `input_ids` as in `tiviz.attribution.targets.token_logps`: entry t belongs to
token t and was predicted by the logits at position t-1. Position 0 is never scored, so a response mask that is 1
there contributes nothing.

The pieces, in the order the trainer uses them:

    log_ratio_w = token_log_ratios(policy_logps_w, ref_logps_w, mask_w)          # (B, L_w)
    log_ratio_l = token_log_ratios(policy_logps_l, ref_logps_l, mask_l)          # (B, L_l)
    delta = weighted_dpo_delta(log_ratio_w, W_w, log_ratio_l, W_l, mask_w, mask_l)  # (B,)
    kl_w, kl_l = sequential_kl(..._w), sequential_kl(..._l)                       # (B,)
    l_dpo = tidpo_dpo_loss(delta, kl_w, kl_l, beta=..., alpha_kl=...)             # (B,)
    l_trip = triplet_loss(*align_responses(log_ratio_anchor, mask_anchor), ...)   # ()
    loss = total_loss(l_dpo, l_trip, gamma=...)                                   # ()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_log_ratios(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Per-token log-ratio of policy to reference on the response tokens (docs/METHOD.md §3).

    `log_ratio_t = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)`, 0 outside the mask.

    Args:
        policy_logps: (B, L) float, per-token log-probs under the policy (`token_logps`), with gradient.
        ref_logps: (B, L) float, the same under the frozen reference.
        response_mask: (B, L) bool or 0/1, True on the response tokens.
    Returns:
        (B, L) float log-ratios, exactly 0 outside the mask (also where the log-probs there are -inf or NaN).
    """
    ratio = policy_logps - ref_logps  # (B, L)
    return torch.where(response_mask.bool(), ratio, torch.zeros_like(ratio))


def weighted_dpo_delta(
    log_ratio_chosen: torch.Tensor,
    w_chosen: torch.Tensor,
    log_ratio_rejected: torch.Tensor,
    w_rejected: torch.Tensor,
    mask_chosen: torch.Tensor,
    mask_rejected: torch.Tensor,
) -> torch.Tensor:
    """Token-weighted implicit-reward difference of a pair (docs/METHOD.md §3).

    `Delta = sum_t W^w_t log_ratio^w_t - sum_t W^l_t log_ratio^l_t`: plain sums, no length normalisation. With all weights 1
    this is DPO's `(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))`.

    Args:
        log_ratio_chosen: (B, L_w) log-ratios of the chosen responses (`token_log_ratios`).
        w_chosen: (B, L_w) token weights (`hybrid_weights`, detached by the caller), any value outside the mask.
        log_ratio_rejected: (B, L_l) log-ratios of the rejected responses; L_l may differ from L_w.
        w_rejected: (B, L_l) token weights of the rejected responses.
        mask_chosen: (B, L_w) response mask of the chosen sequences.
        mask_rejected: (B, L_l) response mask of the rejected sequences.
    Returns:
        (B,) Delta per pair.
    """
    m_w = mask_chosen.to(log_ratio_chosen.dtype)  # (B, L_w)
    m_l = mask_rejected.to(log_ratio_rejected.dtype)  # (B, L_l)
    chosen = (w_chosen * log_ratio_chosen * m_w).sum(-1)  # (B,)
    rejected = (w_rejected * log_ratio_rejected * m_l).sum(-1)  # (B,)
    return chosen - rejected


def sequential_kl(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """TDPO's sequential KL of a response, over the full vocabulary (docs/METHOD.md §3, TDPO2's SeqKL).

    `SeqKL = sum_{t in response} KL(pi_ref(. | x, y_<t) || pi(. | x, y_<t))`
           `= sum_t sum_v p_ref(v) (log p_ref(v) - log p(v))`,
    where the distribution over token t is the softmax of the logits at position t-1 (the convention of
    `token_logps`). Computed in float32.

    Args:
        policy_logits: (B, L, V) policy logits, with gradient.
        ref_logits: (B, L, V) reference logits (treated as constants).
        response_mask: (B, L) bool or 0/1, True on the response tokens (aligned with input_ids).
    Returns:
        (B,) non-negative sequential KL; 0 where policy and reference agree.
    """
    logp = torch.log_softmax(policy_logits[:, :-1].float(), dim=-1)  # (B, L-1, V) predicts tokens 1..L-1
    ref_logp = torch.log_softmax(ref_logits[:, :-1].detach().float(), dim=-1)  # (B, L-1, V)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, L-1) KL at the logits predicting token t+1
    mask = response_mask[:, 1:].to(kl.dtype)  # (B, L-1) token t+1 is a response token
    return (kl * mask).sum(-1)


def tidpo_dpo_loss(
    delta: torch.Tensor,
    seq_kl_chosen: torch.Tensor | None = None,
    seq_kl_rejected: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha_kl: float = 0.5,
) -> torch.Tensor:
    """Per-pair TI-DPO preference loss with TDPO2's sequential-KL term (docs/METHOD.md §3).

    `L_w = -log sigmoid(beta * (Delta - alpha_kl * (SeqKL_l - stopgrad(SeqKL_w))))`.
    alpha_kl = 0 gives plain (weighted) DPO, `-log sigmoid(beta * Delta)`, TRL's `loss_type="sigmoid"`.

    Args:
        delta: (B,) `weighted_dpo_delta`.
        seq_kl_chosen: (B,) `sequential_kl` of the chosen responses; gradient is stopped here. May be None
            (treated as 0) when alpha_kl is 0.
        seq_kl_rejected: (B,) `sequential_kl` of the rejected responses. May be None when alpha_kl is 0.
        beta: float, default 0.1; the implicit-reward scale.
        alpha_kl: float, default 0.5; weight of the sequential-KL term.
    Returns:
        (B,) loss per pair (take `.mean()` for the batch, or use `total_loss`).
    """
    logits = delta  # (B,)
    if alpha_kl != 0.0:
        if seq_kl_chosen is None or seq_kl_rejected is None:
            raise ValueError("tidpo_dpo_loss: alpha_kl != 0 needs seq_kl_chosen and seq_kl_rejected")
        logits = delta - alpha_kl * (seq_kl_rejected - seq_kl_chosen.detach())  # (B,)
    return -F.logsigmoid(beta * logits)


def align_responses(values: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-justify each row's response tokens, so index 0 is the first response token of every row.

    The triplet term compares responses position by position from the start of each response; this puts
    responses padded on either side, behind prompts of different lengths, onto that common index. The order of
    the response tokens is kept; a non-contiguous mask is compacted. Differentiable with respect to `values`.

    Args:
        values: (B, L) per-token values aligned with input_ids, e.g. `token_log_ratios`.
        response_mask: (B, L) bool or 0/1, True on the response tokens.
    Returns:
        values_aligned: (B, R) with R the longest response in the batch, 0 after each row's response.
        mask_aligned: (B, R) bool, True on the first `n_b` positions of row b, n_b its response length.
    """
    mask = response_mask.bool()  # (B, L)
    B = mask.shape[0]
    counts = mask.sum(-1)  # (B,)
    R = int(counts.max().item()) if B > 0 else 0
    slot = torch.cumsum(mask.long(), dim=-1) - 1  # (B, L) index inside the response
    slot = torch.where(mask, slot, torch.full_like(slot, R))  # non-response tokens go to a spare column
    src = torch.where(mask, values, torch.zeros_like(values))  # (B, L)
    out = values.new_zeros(B, R + 1).scatter_add(1, slot, src)[:, :R]  # (B, R)
    mask_aligned = torch.arange(R, device=mask.device).expand(B, R) < counts.unsqueeze(-1)  # (B, R)
    return out, mask_aligned


def _paired_sq_distance(
    a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor
) -> torch.Tensor:
    """`sum_t (a_t - b_t)^2` over positions valid in both response-aligned rows. Returns (B,)."""
    R = min(a.shape[-1], b.shape[-1])  # positions past the shorter width are invalid in one of the two
    both = (a_mask[:, :R].bool() & b_mask[:, :R].bool()).to(a.dtype)  # (B, R)
    return ((a[:, :R] - b[:, :R]) ** 2 * both).sum(-1)


def triplet_loss(
    anchor_log_ratio: torch.Tensor,
    anchor_mask: torch.Tensor,
    chosen_log_ratio: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_log_ratio: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    margin: float = 0.001,
) -> torch.Tensor:
    """Triplet term pulling the anchor's log-ratio vector toward the chosen one (docs/METHOD.md §4).

    `d_pos = sum_t (a_t - w_t)^2`, `d_neg = sum_t (a_t - l_t)^2`, each over the positions valid in both
    sequences; `L_trip = mean_b relu(d_pos - d_neg + margin)`. No importance weights enter this term.

    Inputs are **response-aligned**: index 0 of each row is that row's first response token (see
    `align_responses`), so position t of the anchor is compared with position t of the chosen and rejected
    responses whatever the prompt lengths and padding side. The three widths may differ.

    Args:
        anchor_log_ratio: (B, R_a) log-ratios of the policy's sampled anchor response (with gradient).
        anchor_mask: (B, R_a) bool or 0/1, True on the anchor's tokens.
        chosen_log_ratio: (B, R_w) log-ratios of the chosen response.
        chosen_mask: (B, R_w) valid positions of the chosen response.
        rejected_log_ratio: (B, R_l) log-ratios of the rejected response.
        rejected_mask: (B, R_l) valid positions of the rejected response.
        margin: float, default 0.001 (the authors' code; the paper gives none).
    Returns:
        () scalar loss.
    """
    d_pos = _paired_sq_distance(anchor_log_ratio, anchor_mask, chosen_log_ratio, chosen_mask)  # (B,)
    d_neg = _paired_sq_distance(anchor_log_ratio, anchor_mask, rejected_log_ratio, rejected_mask)  # (B,)
    return torch.relu(d_pos - d_neg + margin).mean()


def total_loss(dpo_loss: torch.Tensor, triplet: torch.Tensor | float, gamma: float = 0.1) -> torch.Tensor:
    """The TI-DPO objective `L = L_w + gamma * L_trip` (docs/METHOD.md §5).

    Args:
        dpo_loss: (B,) per-pair `tidpo_dpo_loss`, averaged over the batch here, or an already reduced ().
        triplet: () `triplet_loss`, or 0.0 when the term is off.
        gamma: float, default 0.1; weight of the triplet term.
    Returns:
        () scalar loss.
    """
    return dpo_loss.mean() + gamma * triplet


@torch.no_grad()
def preference_metrics(
    log_ratio_chosen: torch.Tensor,
    log_ratio_rejected: torch.Tensor,
    mask_chosen: torch.Tensor,
    mask_rejected: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """TRL's reward metrics for a batch, under TRL's names (unweighted, as `DPOTrainer` logs them).

    Implicit reward `r(y) = beta * sum_t log_ratio_t` (DPO's implicit reward without the partition term); batch means of
    `rewards/chosen` r(y_w), `rewards/rejected` r(y_l), `rewards/margins` r(y_w) - r(y_l) and
    `rewards/accuracies` 1[r(y_w) > r(y_l)].

    Args:
        log_ratio_chosen: (B, L_w) log-ratios of the chosen responses.
        log_ratio_rejected: (B, L_l) log-ratios of the rejected responses.
        mask_chosen: (B, L_w) response mask of the chosen sequences.
        mask_rejected: (B, L_l) response mask of the rejected sequences.
        beta: float, the implicit-reward scale.
    Returns:
        dict of four floats keyed by TRL's metric names.
    """
    chosen = beta * (log_ratio_chosen * mask_chosen.to(log_ratio_chosen.dtype)).sum(-1)  # (B,)
    rejected = beta * (log_ratio_rejected * mask_rejected.to(log_ratio_rejected.dtype)).sum(-1)  # (B,)
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
    }


def weight_entropy(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the token weights normalised to a distribution over the mask.

    `p_t = W_t / sum_s W_s` over the masked tokens, `H = -sum_t p_t log p_t` (0 log 0 = 0). Uniform weights over
    n tokens give log n, the maximum; weights concentrated on one token give 0. Scale-free, so mean-1 and sum-1
    weights give the same value.

    Args:
        w: (B, L) non-negative token weights.
        mask: (B, L) bool or 0/1, the tokens weighted.
    Returns:
        (B,) entropy per row; 0 for rows with an empty mask or all-zero weights.
    """
    m = mask.to(torch.float32)  # (B, L)
    wm = w.detach().to(torch.float32).clamp_min(0) * m  # (B, L)
    p = wm / wm.sum(-1, keepdim=True).clamp_min(1e-30)  # (B, L)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))  # (B, L)
    return -plogp.sum(-1)
