"""Attribution settings: one dataclass, validated on creation, with help text that drives the CLI flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from tiviz.errors import ConfigError

Norm = Literal["l1", "l2"]
IGBaseline = Literal["pad", "unk", "zero", "mean"]
IGMethod = Literal["gausslegendre", "riemann_trapezoid", "riemann_middle"]
AttentionAgg = Literal["last_layer", "all_layers", "rollout"]
Span = Literal["response", "full"]

_CHOICES: dict[str, tuple[Any, ...]] = {
    "target": ("max_logit", "logprob", "reward", "margin"),
    "norm": ("l1", "l2"),
    "ig_baseline": ("pad", "unk", "zero", "mean"),
    "occlusion_removal": ("pad", "unk", "zero", "mean"),
    "ig_span": ("response", "full"),
    "ig_method": ("gausslegendre", "riemann_trapezoid", "riemann_middle"),
    "attention_agg": ("last_layer", "all_layers", "rollout"),
    "span": ("response", "full"),
    "weight_scale": ("mean1", "sum1"),
    "truncation_mode": ("keep_end", "keep_start"),
    "padding_side": ("left", "right"),
}


@dataclass
class AttributionConfig:
    """Every knob of `tiviz.attribute`. Defaults follow TI-DPO (docs/METHOD.md §2) and Captum."""

    target: str = field(default="logprob", metadata={"help": "what the gradient methods explain: max_logit "
                        "(TI-DPO Eq. 4), logprob (response log-likelihood), reward (implicit reward, needs a "
                        "reference), margin (chosen minus rejected)"})
    norm: str = field(default="l1", metadata={"help": "norm of the embedding gradient for `gradient`"})
    n_steps: int = field(default=16, metadata={"help": "integrated gradients: quadrature points to start with"})
    ig_tolerance: float = field(default=0.05, metadata={"help": "integrated gradients: a sequence whose "
                                "|convergence delta| exceeds this share of |f(x) - f(baseline)| is recomputed "
                                "with twice the steps (0 = never)"})
    ig_max_steps: int = field(default=64, metadata={"help": "integrated gradients: most steps per sequence"})
    ig_method: str = field(default="gausslegendre", metadata={"help": "integrated gradients: quadrature rule"})
    ig_baseline: str = field(default="pad", metadata={"help": "integrated gradients baseline: the pad token's "
                             "embedding at every position (pad), the unk token's, zeros, or the mean embedding"})
    ig_span: str = field(default="response", metadata={"help": "integrated gradients: tokens replaced by the "
                         "baseline, response (prompt kept) or full"})
    internal_batch_size: int = field(default=32, metadata={"help": "integrated gradients: sequences x steps "
                                     "per forward (bounds memory)"})
    occlusion_removal: str = field(default="pad", metadata={"help": "occlusion: the embedding that replaces a "
                                   "removed token (pad, unk, zero or mean; the same removal as `tiviz evaluate`)"})
    attention_agg: str = field(default="last_layer", metadata={"help": "attention: last_layer (mean over heads),"
                               " all_layers (mean over layers and heads), or rollout"})
    lam: float = field(default=0.7, metadata={"help": "tidpo: weight of gradient importance vs the Gaussian "
                       "prior (lambda)"})
    sigma_divisor: float = field(default=4.0, metadata={"help": "tidpo: prior sigma = T / sigma_divisor"})
    span: str = field(default="response", metadata={"help": "tidpo: tokens weighted, response or full"})
    weight_scale: str = field(default="mean1", metadata={"help": "tidpo: rescale weights to mean 1 or sum 1"})
    beta: float = field(default=0.1, metadata={"help": "implicit reward scale beta"})
    batch_size: int = field(default=4, metadata={"help": "pairs per forward (both sides of a pair always go "
                            "together)"})
    max_length: int = field(default=512, metadata={"help": "longest sequence in tokens; longer ones are cut "
                            "with a warning"})
    truncation_mode: str = field(default="keep_end", metadata={"help": "keep_end drops the prompt's start, "
                                 "keep_start drops the response's end"})
    padding_side: str = field(default="right", metadata={"help": "padding side inside a batch"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(name, value, ", ".join(map(repr, allowed)))
        for name in ("n_steps", "ig_max_steps", "internal_batch_size", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, value, "an integer >= 1")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError("lam", self.lam, "a number in [0, 1]")
        if not self.sigma_divisor > 0:
            raise ConfigError("sigma_divisor", self.sigma_divisor, "a number > 0")
        if not self.ig_tolerance >= 0:
            raise ConfigError("ig_tolerance", self.ig_tolerance, "a number >= 0")
        if not self.beta > 0:
            raise ConfigError("beta", self.beta, "a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], "one of " + ", ".join(sorted(known)))
        return cls(**data)


# The methods whose result each setting changes; a setting not listed changes every method's result. Batching
# settings change none (how the work is split, not what it computes: rows agree up to float noise).
SETTING_SCOPE: dict[str, tuple[str, ...]] = {
    "batch_size": (), "internal_batch_size": (), "padding_side": (),
    **dict.fromkeys(("n_steps", "ig_tolerance", "ig_max_steps", "ig_method", "ig_baseline", "ig_span"),
                    ("integrated_gradients",)),
    "target": ("gradient", "grad_x_input", "integrated_gradients"),
    "norm": ("gradient",),
    "attention_agg": ("attention",),
    **dict.fromkeys(("lam", "sigma_divisor", "span", "weight_scale"), ("tidpo",)),
    "beta": ("gradient", "grad_x_input", "integrated_gradients", "implicit_reward", "token_score"),  # rewards
}


def result_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings (AttributionConfig fields) that `method`'s scores depend on: what a cache of one method's
    result must key on, so that changing another method's knob (or a batch size) reuses it."""
    return {k: v for k, v in settings.items() if method in SETTING_SCOPE.get(k, (method,))}
