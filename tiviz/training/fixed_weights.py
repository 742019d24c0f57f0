"""Token weights from a fixed scorer, computed once for the whole training set (docs/TRAINING.md, token-weight sources):
the TIS-DPO idea with tiviz's attribution methods, at no per-step cost.

`--weights-from DIR` names the scorer: a finished tiviz run (its `final/` model, with the run's base model as the
reference), a causal LM (a folder or hub id), or a reward model (through `tiviz.scoring.load_scorer` where it is
available). The chosen method attributes every training pair on that scorer through `tiviz.attribute` with the
attribution cache on, so a second run with the same scorer, method and pairs computes nothing; the table is also
written into the run (`RUN/token_weights.parquet`). Each step then reads its pairs' importance and applies the same
hybrid step as the online sources (TI-DPO Eq. 5-7).

Scorer tokens are mapped onto the training tokens by position from the end of the sequence when the token ids agree
(the same tokenizer; the training encoding may have cut the prompt's start), else by character overlap within the
prompt and within the response (a scorer token's score goes to every training token it overlaps). The scorer sees
each pair as `attribute` encodes it (cut to `max_length` from the prompt's start); where training also caps the
prompt at `max_prompt_length`, the scorer's importance was computed with more of the prompt in view.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tiviz.data import PreferencePair
from tiviz.errors import ConfigError
from tiviz.tokenization import SIDES, Batch, EncodedSequence
from tiviz.training.config import TIDPOConfig
from tiviz.training.data import EncodedPair
from tiviz.training.reference import Reference
from tiviz.training.weighting import attribution_config, non_negative
from tiviz.training.weights import weights_from_importance

log = logging.getLogger(__name__)


def attribution_method(cfg: TIDPOConfig) -> str:
    """The registry method that gives `cfg.weighting`'s raw importance: tidpo's is the L1 gradient of the max
    final logit (`gradient` with target max_logit), then the training's own hybrid step."""
    return "gradient" if cfg.weighting == "tidpo" else cfg.weighting


def load_weight_scorer(source: str, *, device: str | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, tokenizer, reference model or None, provenance) of a `--weights-from` source, loaded by
    `tiviz.scoring.load_scorer`: a tiviz run folder gives its `final/` model against the run's base model, any other
    causal LM scores alone.

    Raises:
        ConfigError: a run folder without `final/`, or a reward model (the attribution methods read a causal LM's
            logits; a reward model's scalar is not one of their targets in this build).
    """
    from tiviz.scoring import load_scorer
    from tiviz.training.runfolder import final_dir, is_run_folder

    if is_run_folder(source) and not final_dir(source).is_dir():
        raise ConfigError("weights_from", source, "a finished run (its final/ folder is missing: finish or resume "
                          "the run first)")
    scorer = load_scorer(source, device=device, dtype="float32")
    if scorer.kind == "reward_model":
        raise ConfigError("weights_from", source, "a tiviz run or a causal LM: the attribution methods explain a "
                          "causal LM's logits, and a reward model's score is not one of their targets yet")
    info = {"kind": "run" if scorer.reference is not None else "causal_lm", "source": source,
            "scorer": scorer.provenance()}
    return scorer.model, scorer.tokenizer, scorer.reference, info


def importance_table(cfg: TIDPOConfig, pairs: list[PreferencePair], *, cache: bool | str | Path = True,
                     device: str | None = None) -> pd.DataFrame:
    """The tidy attribution table of every training pair on `cfg.weights_from` with `cfg.weighting`'s method
    (cached; `attrs["tiviz"]["cache"]` says how much was reused)."""
    from tiviz.attribution.core import attribute

    assert cfg.weights_from is not None
    from tiviz.scoring import make_scorer

    model, tokenizer, reference, info = load_weight_scorer(cfg.weights_from, device=device)
    method = attribution_method(cfg)
    # a LoRA run's reference is its own model with the adapter disabled (no separate module)
    adapter = reference is None and info["scorer"]["kind"] == "implicit_reward"
    scorer = make_scorer(model, reference=reference, tokenizer=tokenizer, adapter_reference=adapter,
                         beta=info["scorer"].get("beta") or 0.1, model_id=info["scorer"].get("model_id"),
                         reference_id=info["scorer"].get("reference_id"))
    df = attribute(scorer, pairs, [method], config=attribution_config(cfg),
                   model_id=info["scorer"].get("model_id") or cfg.weights_from, cache=cache)
    df.attrs["tiviz"]["weights_from"] = info
    return df


def map_scores(seq: EncodedSequence, rows: pd.DataFrame) -> np.ndarray:
    """One side's scorer scores (`rows`: its table rows, in position order) on the tokens of `seq`. (len(seq),)

    Same token ids on the common tail: position by position from the end. Otherwise: by character overlap within
    the prompt and within the response.
    """
    score = rows["score"].to_numpy(np.float64)
    ids = rows["token_id"].to_numpy()
    n = min(len(seq), len(ids))
    out = np.zeros(len(seq))
    if n and np.array_equal(np.asarray(seq.input_ids[len(seq) - n :]), ids[len(ids) - n :]):
        out[len(seq) - n :] = score[len(ids) - n :]
        return out
    in_resp = rows["in_response"].to_numpy(bool)
    starts, ends = rows["char_start"].to_numpy(), rows["char_end"].to_numpy()
    for i, (s, e) in enumerate(seq.char_spans):
        same = in_resp == (i >= seq.response_start)
        hit = same & ((starts < e) & (ends > s) | ((s == e) & (starts == s) & (ends == e)))
        out[i] = score[hit].sum()
    return out


class FixedWeights:
    """Per-pair importance computed once (`importance_table`), read at each step: the same interface as
    `OnlineWeights`, with nothing taken from the policy.

    Args:
        cfg: weighting, weighting_sign and the hybrid settings.
        encoded: the training pairs as the trainer encoded them.
        table: the attribution table of those pairs (`importance_table`).
    """

    uses_forward = False
    needs_embedding_grad = False

    def __init__(self, cfg: TIDPOConfig, encoded: list[EncodedPair], table: pd.DataFrame) -> None:
        self.cfg = cfg
        self.table = table
        by_pair = {pid: g for pid, g in table.groupby("pair_id", sort=False)}
        self.importance: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for p in encoded:
            if p.pair_id not in by_pair:
                raise ConfigError("weights_from", cfg.weights_from, f"a table holding pair {p.pair_id!r}")
            g = by_pair[p.pair_id]
            chosen, rejected = (map_scores(s, g[g["side"] == side].sort_values("position"))
                                for s, side in zip((p.chosen, p.rejected), SIDES, strict=True))
            self.importance[p.index] = (chosen, rejected)

    def provenance(self) -> dict[str, Any]:
        """The scorer, method and cache use behind the weights (recorded in `RUN/config.json`)."""
        prov = self.table.attrs.get("tiviz", {})
        return {"weights_from": prov.get("weights_from"), "method": attribution_method(self.cfg),
                "target": prov.get("target"), "cache": prov.get("cache")}

    def before_forward(self, policy: Any, batch: Batch, pairs: list[EncodedPair], step: int,
                       reference: Reference) -> torch.Tensor:
        """The stored importance of the batch's pairs through the hybrid step. (2B, L)"""
        rows = [self.importance[p.index][0] for p in pairs] + [self.importance[p.index][1] for p in pairs]
        raw = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for r, (v, off) in enumerate(zip(rows, batch.offsets, strict=True)):
            raw[r, off : off + len(v)] = torch.from_numpy(v).float()
        raw = non_negative(raw, self.cfg.weighting, self.cfg.weighting_sign).to(batch.input_ids.device)
        return weights_from_importance(raw, batch, self.cfg)

    def from_forward(self, batch: Batch, logits: torch.Tensor, emb: torch.Tensor,
                     ref_logps: torch.Tensor) -> torch.Tensor:
        raise AssertionError("FixedWeights: the weights never come from the training forward")
