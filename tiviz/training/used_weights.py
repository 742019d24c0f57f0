"""The token weights a training run used (docs/TRAINING.md, "The weights training used"): for given pairs, the
final per-token weights w_t of the TI-DPO loss (after the hybrid step, TI-DPO Eq. 5-7: mean 1 over the response
span) that the run's own weighting settings (`RUN/config.json`) give, laid out as the tidy table.

Nothing here re-implements a weight source: the weights come from the trainer's own objects.

- fixed weights (`--weights-from`): `FixedWeights` over the stored `RUN/token_weights.parquet`, as each step reads
  them (the same at the start and the end);
- online sources: `OnlineWeights` on the run's base model ("start": what the run's first step computed, the policy
  being its starting model then) or on its final model ("end": what a step after the last would compute), with
  the base model as the reference pi_ref;
- `uniform`: all 1; `random`: the trainer's seeding from (seed, step, the pair's position in the training data,
  side), at step 1 ("start") or the last step ("end").

    df = training_weights("runs/x", load_pairs("sample_data/train.jsonl"), pair_ids=["fact-001"], when="start")
    df[df.in_response].groupby("side")["score"].mean()          # 1.0 and 1.0: w_t, mean 1 on each response
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tiviz.data import PreferencePair
from tiviz.errors import ConfigError, TivizError
from tiviz.training.config import BASELINE_WEIGHTINGS, TIDPOConfig
from tiviz.training.runfolder import RUN_CONFIG, TOKEN_WEIGHTS, final_dir, read_run_config

METHOD = "training_weights"
"""The method id of the table's rows: the weights w_t the run's DPO term multiplies each token's log-ratio by."""
When = Literal["start", "end"]
WHEN: tuple[When, ...] = ("start", "end")


@dataclass(frozen=True)
class WeightSource:
    """Where a run's token weights came from, read from `RUN/config.json`."""

    config: TIDPOConfig
    total_steps: int
    data_sha256: str | None  # of the training file, when the run recorded it

    @property
    def weighting(self) -> str:
        return self.config.weighting

    @property
    def fixed(self) -> bool:
        """Computed once before training (`--weights-from`), not from the policy at each step."""
        return self.config.weights_from is not None

    @property
    def follows_policy(self) -> bool:
        """Recomputed from the policy at every step: the weights at the end differ from those at the start."""
        return not self.fixed and self.weighting not in BASELINE_WEIGHTINGS

    @property
    def seeded_by_position(self) -> bool:
        """`random`: a pair's weights depend on its position in the training data (and the step)."""
        return self.weighting == "random"

    def label(self) -> str:
        """The source in words, for a caption."""
        cfg = self.config
        if cfg.weighting == "uniform":
            return "uniform: every response token weighs 1 (plain DPO)"
        hybrid = (f"then the hybrid step (TI-DPO Eq. 5-7: lam {cfg.lam:g} importance, {1 - cfg.lam:g} Gaussian prior"
                  if cfg.use_prior else "then the hybrid step without the prior (TI-DPO Eq. 5-7") + \
            f", {'mean 1' if cfg.weight_scale == 'mean1' else 'sum 1'} over the {cfg.span} span)"
        if cfg.weighting == "random":
            return (f"random: a fresh draw per (seed {cfg.seed}, step, pair, side), rescaled to "
                    f"{'mean 1' if cfg.weight_scale == 'mean1' else 'sum 1'} over the {cfg.span} span")
        from tiviz.training.weighting import method_target

        what = ("the L1 gradient of the max final logit (TI-DPO Eq. 4-5)" if cfg.weighting == "tidpo"
                else f"{cfg.weighting} (target {method_target(cfg)}, sign {cfg.weighting_sign})")
        if cfg.weights_from is not None:
            return (f"fixed: {what} on {cfg.weights_from}, computed once before training and stored in "
                    f"{TOKEN_WEIGHTS}, {hybrid}")
        return f"online: {what} of the policy at every step, {hybrid}"


def weight_source(run_dir: str | Path) -> WeightSource:
    """The run's weighting settings (`RUN/config.json`).

    Raises:
        TivizError: no config.json, or one without the TI-DPO settings (not a tiviz run: a TRL output, a model).
    """
    rec = read_run_config(run_dir) if (Path(run_dir) / RUN_CONFIG).is_file() else {}
    if not isinstance(rec.get("tidpo"), dict):
        raise TivizError(f"{Path(run_dir) / RUN_CONFIG}: missing or without TI-DPO settings ('tidpo'): not a "
                         "tiviz training run, so it records no token weights. Fix: pick a run trained by tiviz")
    cfg = TIDPOConfig.from_dict(rec["tidpo"])
    data = rec.get("data")
    sha = data.get("sha256") if isinstance(data, dict) else None
    sha = sha if isinstance(sha, str) else None
    return WeightSource(cfg, int(rec.get("total_steps") or cfg.max_steps or 1), sha)


def training_weights(run_dir: str | Path, pairs: Sequence[PreferencePair], *, when: When = "start",
                     pair_ids: Sequence[str] | None = None, base: Any | None = None, final: Any | None = None
                     ) -> pd.DataFrame:
    """The per-token weights w_t the run's weighting gives `pair_ids` (default: every pair), as the tidy table
    (method `training_weights`, `score` = w_t, `weight` = w_t / its sum over the response).

    Args:
        run_dir: a tiviz run folder (its config.json; `final/` for "end"; token_weights.parquet for fixed weights).
        pairs: the run's training pairs in the order training read them: a pair's position seeds `random`. Pairs
            from elsewhere are weighed as if at that position.
        when: "start" (the policy is the run's base model: what the first step used) or "end" (its final model).
        base: the run's base model as a `tiviz.models.LoadedModel` (default: loaded from config.json's model, in
            float32 as the trainer trains it); its tokenizer encodes the pairs as training did.
        final: the run's final model (default: loaded from `RUN/final/`); read only for "end" of online sources.
    Raises:
        TivizError: not a tiviz run, no final model for "end", an unknown pair id, or (fixed weights) a pair the
            stored table does not hold.
    """
    import torch

    from tiviz.attribution.core import _rows  # the tidy table's layout, one place
    from tiviz.models import load_model
    from tiviz.tokenization import Batch, pad_token_id
    from tiviz.training.data import encode_pairs, pair_rows
    from tiviz.training.fixed_weights import FixedWeights
    from tiviz.training.reference import Reference
    from tiviz.training.weighting import OnlineWeights, method_target

    if when not in WHEN:
        raise ConfigError("when", when, "start or end")
    run_dir = Path(run_dir)
    source = weight_source(run_dir)
    cfg = source.config
    index = {p.id: i for i, p in enumerate(pairs)}
    wanted = list(index) if pair_ids is None else list(pair_ids)
    unknown = [pid for pid in wanted if pid not in index]
    if unknown:
        raise ConfigError("pair_ids", unknown[0], "ids of the pairs given")
    step = 0 if when == "start" else max(source.total_steps - 1, 0)
    if base is None:
        base = load_model(str(read_run_config(run_dir).get("model")), dtype="float32")
    tokenizer = base.tokenizer
    selected = [pairs[index[pid]] for pid in wanted]
    encoded = [dataclasses.replace(e, index=index[e.pair_id]) for e in  # training's own encoding and position
               encode_pairs(tokenizer, selected, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)]

    weights: Any
    policy = base.model
    if source.fixed:
        table = _read_stored(run_dir)
        weights = FixedWeights(cfg, encoded, table)
    else:
        weights = OnlineWeights(cfg, tokenizer, fused=False)  # the trainer's path when training has dropout
        if when == "end" and source.follows_policy:
            if final is None:
                folder = final_dir(run_dir)
                if not folder.is_dir():
                    raise TivizError(f"{folder}: not found: the run has not finished, so it has no final model "
                                     "for the weights at the end. Fix: ask for when='start', or finish the run")
                final = load_model(str(folder), dtype="float32")
            policy = final.model
    device = next(policy.parameters()).device
    reference = Reference(base.model, lambda: policy)
    pad = pad_token_id(tokenizer)
    by_id = {p.id: p for p in selected}
    frames = []
    for start in range(0, len(encoded), max(cfg.batch_size, 1)):
        chunk = encoded[start : start + cfg.batch_size]
        batch = pair_rows(chunk, pad).to(device)  # (2B, L) rows: chosen of every pair, then rejected
        w = weights.before_forward(policy, batch, chunk, step, reference)  # (2B, L) or None
        if w is None:  # implicit_reward reads the forward's log-ratios (`OnlineWeights.from_forward`)
            with torch.no_grad():
                logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False).logits  # (2B, L, V)
            w = weights.from_forward(batch, logits, logits.new_zeros(0), reference.logps(batch))
        B = len(chunk)
        order = torch.stack([torch.arange(B), torch.arange(B) + B], dim=1).reshape(-1).to(w.device)  # (2B,) c0 r0 c1
        inter = Batch(batch.input_ids[order], batch.attention_mask[order], batch.position_ids[order],
                      batch.response_mask[order], [batch.offsets[int(i)] for i in order])  # rows as `_rows` reads them
        seqs = [s for p in chunk for s in (p.chosen, p.rejected)]
        rows = _rows([by_id[p.pair_id] for p in chunk], seqs, inter, {METHOD: (w.detach()[order], None, None)})
        frames += [r[METHOD] for r in rows]
    from tiviz import __version__
    from tiviz.table import PROVENANCE_KEY, validate

    df = validate(pd.concat(frames, ignore_index=True))
    target = method_target(cfg) if cfg.weighting not in BASELINE_WEIGHTINGS else None
    scored = (cfg.weights_from if source.fixed else str(final_dir(run_dir)) if policy is not base.model
              else base.model_id)
    df.attrs[PROVENANCE_KEY] = {
        "model_id": scored,
        "methods": [METHOD],
        "target": target,
        "method_targets": {METHOD: target},
        "method_quantities": {METHOD: "the token weights w_t of the run's DPO term (mean 1 over the response)"},
        "training_weights": {"run": str(run_dir), "when": when, "step": step + 1, "weighting": cfg.weighting,
                             "weights_from": cfg.weights_from, "source": source.label(),
                             "reference_model": base.model_id},
        "tiviz_version": __version__,
    }
    return df


def _read_stored(run_dir: Path) -> pd.DataFrame:
    """The fixed weights' attribution table the run stored (`RUN/token_weights.parquet`)."""
    from tiviz.table import read_table

    path = run_dir / TOKEN_WEIGHTS
    if not path.is_file():
        raise TivizError(f"{path}: not found: the run's weights came from --weights-from, and the table the trainer "
                         "stores when it starts is missing. Fix: resume the run (it writes the table again)")
    return read_table(path)
