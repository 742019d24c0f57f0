"""TI-DPO training settings: one dataclass, validated on creation, whose field help drives the CLI flags.

Defaults are the paper's values (docs/METHOD.md §5); where the paper gives none, TRL's `DPOConfig`
defaults. Named presets reproduce the authors' shipped config, the DPO / TDPO baselines and the paper's ablations:

    cfg = config_from_preset("authors-code", max_steps=100)
    list_presets()  # ['paper', 'authors-code', 'dpo', 'tdpo', 'uniform-weights', ...]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from tiviz.errors import ConfigError

Span = Literal["response", "full"]
WeightScale = Literal["mean1", "sum1"]
WeightingTarget = Literal["max_logit", "logprob", "margin", "reward"]
WeightingSign = Literal["abs", "positive"]
BASELINE_WEIGHTINGS = ("uniform", "random")
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
Optimizer = Literal["rmsprop", "adamw"]
LRScheduler = Literal["constant_with_warmup", "linear", "cosine"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "span": get_args(Span),
    "weight_scale": get_args(WeightScale),
    "weighting_target": get_args(WeightingTarget),
    "weighting_sign": get_args(WeightingSign),
    "optimizer": get_args(Optimizer),
    "lr_scheduler": get_args(LRScheduler),
}
_POSITIVE_INTS = (
    "anchor_max_new_tokens",
    "batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "max_prompt_length",
    "num_epochs",
    "logging_steps",
    "lora_r",
)
_NON_NEGATIVE_INTS = ("anchor_top_k", "warmup_steps", "save_steps", "save_total_limit", "seed")
_BOOLS = ("use_prior", "use_lora", "precompute_ref_logps")
_FLOATS = (
    "beta",
    "lam",
    "sigma_divisor",
    "alpha_kl",
    "gamma",
    "margin",
    "anchor_top_p",
    "anchor_temperature",
    "learning_rate",
    "max_grad_norm",
    "lora_alpha",
    "lora_dropout",
)


@dataclass
class TIDPOConfig:
    """Every knob of TI-DPO training. Defaults follow the paper (docs/METHOD.md §5)."""

    # Preference loss (docs/METHOD.md §3)
    beta: float = field(default=0.1, metadata={"help": "implicit-reward scale beta of the DPO term (> 0)"})
    alpha_kl: float = field(
        default=0.5,
        metadata={"help": "weight of TDPO2's sequential-KL term (>= 0); 0 gives plain weighted DPO"},
    )
    # Token weights (TI-DPO Eq. 4-7, docs/METHOD.md §2)
    weighting: str = field(
        default="tidpo",
        metadata={
            "help": "where the token weights come from: tidpo (the paper: L1 gradient of the max final logit), "
            "any other attribution method id (gradient, grad_x_input, integrated_gradients, attention, "
            "implicit_reward, ...), uniform (all 1, as DPO) or random (an ablation); every importance goes through "
            "the hybrid step (lam, prior, span, scale)"
        },
    )
    weighting_target: WeightingTarget = field(
        default="max_logit",
        metadata={"help": "what gradient / grad_x_input / integrated_gradients / occlusion weights explain: "
                  "max_logit (the paper's target), logprob, margin or reward (tidpo always uses max_logit; a "
                  "reward model as --weights-from: reward, its score, or margin)"},
    )
    weighting_sign: WeightingSign = field(
        default="abs",
        metadata={"help": "how signed importance becomes non-negative: abs (|score|) or positive (max(score, 0))"},
    )
    weights_from: str | None = field(
        default=None,
        metadata={"help": "compute the weights once, before training, with the weighting method on this scorer "
                  "instead of the policy at every step: a finished tiviz run folder (its final model against its "
                  "base), a causal LM, or a reward-model folder (the method explains its score, with "
                  "--weighting-target reward or margin where the method has a target; tidpo and implicit_reward "
                  "cannot run on it)"},
    )
    lam: float = field(
        default=0.7,
        metadata={
            "help": "lambda in [0, 1]: weight of gradient importance vs the Gaussian prior (1 = gradient only)"
        },
    )
    sigma_divisor: float = field(
        default=4.0, metadata={"help": "Gaussian prior width: sigma = T / sigma_divisor"}
    )
    use_prior: bool = field(
        default=True, metadata={"help": "mix in the Gaussian position prior; off = the no-prior ablation"}
    )
    span: Span = field(
        default="response",
        metadata={
            "help": "tokens the weights are normalised over: response (paper) or full = prompt + response "
            "(authors' code); they apply to response tokens either way"
        },
    )
    weight_scale: WeightScale = field(
        default="mean1",
        metadata={"help": "rescale weights to mean 1 over the span (keeps beta's meaning) or to sum 1"},
    )
    # Triplet term (docs/METHOD.md §4)
    gamma: float = field(default=0.1, metadata={"help": "weight of the triplet term (>= 0); 0 turns it off"})
    margin: float = field(default=0.001, metadata={"help": "triplet margin (>= 0)"})
    anchor_top_k: int = field(default=50, metadata={"help": "anchor sampling: top-k (0 = off)"})
    anchor_top_p: float = field(default=0.95, metadata={"help": "anchor sampling: nucleus top-p in (0, 1]"})
    anchor_temperature: float = field(default=0.8, metadata={"help": "anchor sampling: temperature (> 0)"})
    anchor_max_new_tokens: int = field(default=64, metadata={"help": "anchor sampling: most new tokens"})
    # Optimisation
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate (paper: not given)"})
    optimizer: Optimizer = field(default="adamw", metadata={"help": "optimizer: adamw or rmsprop"})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clip the gradient norm to this value (TRL's default 1.0); 0 = no clipping"}
    )
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up steps"})
    lr_scheduler: LRScheduler = field(
        default="linear",
        metadata={
            "help": "learning-rate schedule after warm-up: constant_with_warmup, linear or cosine decay"
        },
    )
    batch_size: int = field(default=4, metadata={"help": "preference pairs per forward"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "forwards per optimizer step (effective batch = batch_size x this)"}
    )
    max_length: int = field(default=512, metadata={"help": "longest prompt + response in tokens"})
    max_prompt_length: int = field(
        default=256,
        metadata={"help": "longest prompt in tokens (< max_length); longer prompts lose their start"},
    )
    seed: int = field(
        default=42, metadata={"help": "random seed (data order, anchor sampling, random weights)"}
    )
    num_epochs: int = field(default=1, metadata={"help": "passes over the data when max_steps is -1"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps to run; -1 = run num_epochs"})
    save_steps: int = field(
        default=500, metadata={"help": "checkpoint every N optimizer steps; 0 = only at the end"}
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "checkpoints kept (the newest N; older ones deleted); 0 = keep all"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log metrics every N optimizer steps"})
    # Model
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of every weight"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout in [0, 1)"})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "train in bfloat16; unset = automatic (on where the device supports it)"},
    )
    report_to: str = field(
        default="none",
        metadata={"help": "experiment trackers to log to, comma-separated: tensorboard, wandb, trackio, mlflow, "
                  "or none (RUN/metrics.jsonl is written either way)"},
    )
    precompute_ref_logps: bool = field(
        default=False,
        metadata={"help": "compute the reference log-probs once before training instead of at every step"},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise `ConfigError(field, value, allowed)` on the first invalid one.

        Integer-valued floats (from JSON or the CLI) are stored as floats.
        """
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(name, value, ", ".join(map(repr, allowed)))
        if self.weighting not in weighting_choices():
            raise ConfigError("weighting", self.weighting, ", ".join(map(repr, weighting_choices())))
        if self.weights_from is not None and self.weighting in BASELINE_WEIGHTINGS:
            raise ConfigError("weights_from", self.weights_from, f"no scorer: weighting {self.weighting!r} "
                              "reads no model (or choose an attribution method)")
        for tracker in report_to_list(self.report_to):
            if tracker not in TRACKERS:
                raise ConfigError("report_to", self.report_to, "'none' or a comma-separated list of "
                                  + ", ".join(TRACKERS))
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "True or False")
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            raise ConfigError("bf16", self.bf16, "True, False or None (automatic)")
        for name in _POSITIVE_INTS + _NON_NEGATIVE_INTS + ("max_steps",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(name, value, "an integer")
        for name in _FLOATS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(name, value, "a number")
            setattr(self, name, float(value))
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "an integer >= 1")
        for name in _NON_NEGATIVE_INTS:
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "an integer >= 0")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ConfigError("max_steps", self.max_steps, "-1 (use num_epochs) or an integer >= 1")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(
                "max_prompt_length", self.max_prompt_length, f"an integer < max_length ({self.max_length})"
            )
        for name in ("beta", "sigma_divisor", "anchor_temperature", "learning_rate", "lora_alpha"):
            if not getattr(self, name) > 0:  # also rejects NaN
                raise ConfigError(name, getattr(self, name), "a number > 0")
        for name in ("alpha_kl", "gamma", "margin", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ConfigError(name, getattr(self, name), "a number >= 0")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError("lam", self.lam, "a number in [0, 1]")
        if not 0.0 < self.anchor_top_p <= 1.0:
            raise ConfigError("anchor_top_p", self.anchor_top_p, "a number in (0, 1]")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", self.lora_dropout, "a number in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Every field by name; JSON-serialisable (str, int, float, bool, None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TIDPOConfig:
        """Build from `to_dict()` output or a partial dict (missing fields keep their defaults).

        Raises:
            ConfigError: naming the first unknown key, or the first invalid value.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], "one of " + ", ".join(known))
        return cls(**data)


def weighting_choices() -> tuple[str, ...]:
    """What `weighting` accepts: every attribution method id of the registry, then uniform and random."""
    from tiviz.attribution.methods import METHODS

    return (*METHODS, *BASELINE_WEIGHTINGS)


def report_to_list(value: str) -> list[str]:
    """`report_to` as a list of tracker names ("none" or "" gives [])."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    return [] if names in ([], ["none"]) else names


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "authors-code": {
        "beta": 0.2,
        "lam": 0.2,
        "sigma_divisor": 8.0,
        "alpha_kl": 0.5,
        "gamma": 0.001,
        "margin": 0.001,
        "span": "full",
        "optimizer": "rmsprop",
        "learning_rate": 5e-6,
        "warmup_steps": 150,
        "lr_scheduler": "constant_with_warmup",
        "max_length": 256,
        "max_prompt_length": 128,
    },
    "dpo": {"weighting": "uniform", "alpha_kl": 0.0, "gamma": 0.0},
    "tdpo": {"weighting": "uniform", "alpha_kl": 0.5, "gamma": 0.0},
    "uniform-weights": {"weighting": "uniform"},
    "random-weights": {"weighting": "random"},
    "no-prior": {"use_prior": False},
    "no-triplet": {"gamma": 0.0},
}
"""Named settings, as overrides of the paper defaults."""

PRESET_HELP: dict[str, str] = {
    "paper": "the paper's hyperparameters (docs/METHOD.md §5)",
    "authors-code": "the authors' shipped demo config: beta 0.2, lambda 0.2, sigma T/8, gamma 0.001, full span, "
    "RMSprop 5e-6 with 150 warm-up steps, 256/128 tokens",
    "dpo": "standard DPO baseline: uniform weights, no KL term, no triplet",
    "tdpo": "TDPO2 baseline: uniform weights plus the sequential KL term, no triplet",
    "uniform-weights": "ablation: the paper's setup with uniform token weights",
    "random-weights": "ablation: the paper's setup with random positive weights on the same mean-1 scale",
    "no-prior": "ablation: gradient importance only, no Gaussian prior",
    "no-triplet": "ablation: no triplet term",
}


def list_presets() -> list[str]:
    """Names accepted by `config_from_preset`, in a stable order (paper first)."""
    return list(PRESETS)


def config_from_preset(name: str, **overrides: Any) -> TIDPOConfig:
    """A validated `TIDPOConfig` from a named preset, with field overrides applied on top.

    Args:
        name: one of `list_presets()`.
        **overrides: field values that replace the preset's.
    Raises:
        ConfigError: for an unknown preset (field "preset"), an unknown field or an invalid value.
    """
    if name not in PRESETS:
        raise ConfigError("preset", name, ", ".join(map(repr, PRESETS)))
    return TIDPOConfig.from_dict({**PRESETS[name], **overrides})
