"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps"): an attribution
method that explains the model must change when the model's weights are replaced by random ones. Each method
attributes the same pairs with the model and with a weight-randomised copy; per sequence, the Spearman rank
correlation between the two attributions says how much of the map survives randomisation (near 1: the method
does not depend on what the model learned). docs/EVALUATION.md, "Model-randomisation check".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

RANDOMISED = "@randomised"  # suffix of a method's name in the combined table


def randomised_copy(model: Any, seed: int = 0) -> Any:
    """A copy of `model` with every weight matrix re-drawn at once (not cascading layer by layer).

    Every parameter with two or more dimensions (embedding table, attention and MLP projections, LM or score head)
    is drawn from N(0, initializer_range^2) (the config's, else 0.02) with a generator seeded by `seed`, in
    parameter order; one-dimensional parameters (norm gains, biases) are kept, so activations keep their scale.
    The original model is not touched.
    """
    out = copy.deepcopy(model)
    std = float(getattr(getattr(out, "config", None), "initializer_range", 0.02) or 0.02)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():  # tied weights appear once
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p))
    out.eval()
    return out


@dataclass
class RandomisationCheck:
    """Per method: mean Spearman between original and randomised attributions and the share of sequences above
    `threshold` (`summary`); per (pair, side, method): the correlation (`per_sequence`)."""

    summary: pd.DataFrame  # method, spearman_mean, share_above, n_sequences, threshold
    per_sequence: pd.DataFrame  # pair_id, side, method, n_tokens, spearman
    settings: dict[str, Any]

    def to_text(self) -> str:
        t = self.settings["threshold"]
        lines = [f"{'method':<24}{'Spearman mean':>15}{f'share > {t:g}':>14}{'n':>6}"]
        for _, r in self.summary.iterrows():
            mean = "-" if not math.isfinite(r["spearman_mean"]) else f"{r['spearman_mean']:.3f}"
            share = "-" if not math.isfinite(r["share_above"]) else f"{r['share_above']:.2f}"
            lines.append(f"{r['method']:<24}{mean:>15}{share:>14}{int(r['n_sequences']):>6}")
        lines.append("(rank correlation per sequence between the model's attributions and those of a copy with "
                     "random weights; lower means the method depends on the learned weights)")
        return "\n".join(lines)

    def write(self, folder: str | Path) -> list[Path]:
        """randomisation.csv (the summary) and randomisation_per_sequence.csv in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "randomisation.csv", folder / "randomisation_per_sequence.csv"]
        self.summary.to_csv(paths[0], index=False)
        self.per_sequence.to_csv(paths[1], index=False)
        return paths


def randomisation_check(
    model: Any,
    pairs: Any,
    methods: str | Sequence[str] | None = None,
    *,
    tokenizer: Any | None = None,
    table: pd.DataFrame | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    value: Literal["weight", "score"] = "weight",
    **attribute_kwargs: Any,
) -> RandomisationCheck:
    """Attribute `pairs` with `model` (or reuse `table`) and with `randomised_copy(model, seed)`; compare per method.

    Args:
        model: a `LoadedModel` or a causal LM (then pass `tokenizer`).
        methods: method ids (default: the attribution defaults; with `table`, its methods).
        value: rank by "weight" (|score|, default) or the signed "score".
        threshold: `share_above` counts the sequences whose Spearman exceeds it.
        attribute_kwargs: passed to both `attribute` calls (ref_model, config, settings such as n_steps).
    """
    from tiviz.attribution import attribute
    from tiviz.compare import method_agreement

    if not -1.0 <= threshold <= 1.0:
        from tiviz.errors import ConfigError

        raise ConfigError("threshold", threshold, "a number in [-1, 1]")
    from tiviz.models import LoadedModel

    lm = model.model if isinstance(model, LoadedModel) else model
    if tokenizer is None and isinstance(model, LoadedModel):
        tokenizer = model.tokenizer
    if table is None:
        table = attribute(lm, pairs, methods, tokenizer=tokenizer, **attribute_kwargs)
    names = list(dict.fromkeys(table["method"]))
    shuffled = attribute(randomised_copy(lm, seed), pairs, names, tokenizer=tokenizer, **attribute_kwargs)
    shuffled = shuffled.assign(method=shuffled["method"] + RANDOMISED)
    both = pd.concat([table, shuffled], ignore_index=True)
    per = method_agreement(both, [x for m in names for x in (m, m + RANDOMISED)], value=value)
    per = per[per["method_b"] == per["method_a"] + RANDOMISED]
    per = per.rename(columns={"method_a": "method"})[["pair_id", "side", "method", "n_tokens", "spearman"]]
    rows = []
    for m in names:
        rho = per.loc[per["method"] == m, "spearman"].dropna()
        rows.append({"method": m, "spearman_mean": float(rho.mean()) if len(rho) else math.nan,
                     "share_above": float((rho > threshold).mean()) if len(rho) else math.nan,
                     "n_sequences": len(rho), "threshold": threshold})
    settings = {"seed": seed, "threshold": threshold, "value": value, "randomisation": "all weight matrices at once",
                "n_pairs": int(table["pair_id"].nunique())}
    return RandomisationCheck(pd.DataFrame(rows), per.reset_index(drop=True), settings)
