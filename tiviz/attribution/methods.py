"""The attribution methods, picked by string id from one plain dict (as inseq does)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tiviz.errors import ConfigError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    signed: bool  # scores can be negative
    needs_reference: bool  # needs a reference model pi_ref
    uses_target: bool  # explains the configured target (else a fixed one, or none)
    view: str = "context"  # "itself": the token's own term of the score (a decomposition); "context": the token as
    # input to the model, through everything after it (gradients, integrated gradients, attention)


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("gradient", "norm (L1 or L2) of the target's gradient w.r.t. each input embedding", False,
                   False, True),
        MethodInfo("grad_x_input", "gradient times input embedding, summed over the hidden dimension", True,
                   False, True),
        MethodInfo("integrated_gradients", "integrated gradients over the embeddings (Captum), with a "
                   "convergence delta per sequence", True, False, True),
        MethodInfo("attention", "attention received by each token (last layer, all layers, or rollout)",
                   False, False, False),
        MethodInfo("tidpo", "TI-DPO hybrid weights: L1 gradient of the max final logit, normalised, mixed "
                   "with a Gaussian prior, mean 1 over the span", False, False, False),
        MethodInfo("token_score", "each response token's own exact term of the scorer's score: log pi(y_t|x,y_<t)"
                   " (likelihood), beta * (log pi - log pi_ref) (implicit reward), or the change of a reward "
                   "model's score as the token is appended; sums to the score (reward model: minus the "
                   "prompt-only score)", True, False, False, "itself"),
        MethodInfo("token_score_pair", "token_score in the pair view: where the two responses share a stretch, "
                   "each token gets half its term minus its aligned counterpart's (so shared text cancels), "
                   "elsewhere its own term; chosen minus rejected sums to the margin", True, False, False,
                   "itself"),
        MethodInfo("occlusion", "leave-one-out: the target minus the target with the token's embedding replaced "
                   "by the removal embedding (the same removal as `tiviz evaluate`)", True, False, True),
        MethodInfo("implicit_reward", "token_score with a reference (its old id): per-token implicit reward "
                   "beta * (log pi - log pi_ref); all zeros while the policy equals its reference", True, True,
                   False, "itself"),
    )
}
DEFAULT_METHODS: tuple[str, ...] = ("gradient", "integrated_gradients", "attention", "tidpo")
READS_LM_LOGITS: tuple[str, ...] = ("tidpo",)  # TI-DPO's weights: the gradient of a causal LM's max final logit


def scorer_methods(kind: str) -> list[str]:
    """The method ids a scorer of `kind` (`tiviz.scoring.KINDS`) can give: those needing a reference only with
    one (`implicit_reward`), and none reading LM logits on a reward model (docs/METHOD.md §9)."""
    return [m for m, info in METHODS.items()
            if (kind == "implicit_reward" or not info.needs_reference)
            and not (kind == "reward_model" and m in READS_LM_LOGITS)]


def list_methods() -> list[str]:
    """The method ids `attribute` accepts."""
    return list(METHODS)


def resolve_methods(methods: str | Sequence[str] | None) -> list[str]:
    """Parse 'a,b' or a list into known method ids (order kept, duplicates dropped); 'all' means every one."""
    if methods is None:
        return list(DEFAULT_METHODS)
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    if names == ["all"]:
        return list_methods()
    out: list[str] = []
    for m in names:
        if m not in METHODS:
            raise ConfigError("methods", m, ", ".join(METHODS))
        if m not in out:
            out.append(m)
    if not out:
        raise ConfigError("methods", methods, ", ".join(METHODS))
    return out
