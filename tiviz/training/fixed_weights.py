"""Token weights from a fixed scorer, computed once for the whole training set (docs/TRAINING.md, token-weight sources):
the TIS-DPO idea with tiviz's attribution methods, at no per-step cost.

`--weights-from DIR` names the scorer (`tiviz.scoring.load_scorer`): a finished tiviz run (its `final/` model, with
the run's base model as the reference), a causal LM (a folder or hub id), or a reward-model folder (its score is the
target the methods explain; `token_score` is its per-token decomposition; `tidpo` reads LM logits and cannot run on
it). The chosen method attributes every training pair on that scorer through `tiviz.attribute` with the attribution
cache on, so a second run with the same scorer, method and pairs computes nothing; the table is also written into
the run (`RUN/token_weights.parquet`). Each step then reads its pairs' importance and applies the same hybrid step as
the online sources (TI-DPO Eq. 5-7).

Scorer tokens are mapped onto the training tokens by position from the end of the sequence when the token ids agree
(the same tokenizer and encoding; the training encoding may have cut the prompt's start), else by character overlap
within the prompt and within the response (a scorer token's score goes to every training token it overlaps; a
scorer token that owns no character, as a reward model's end-of-turn, goes to one training token that owns none at
the same place, the policy's EOS). A reward model reads each pair as TRL's `RewardTrainer` encodes it (the whole
conversation, closed by the template's end-of-turn), so its tokens reach the policy's by character overlap. The
scorer sees each pair as `attribute` encodes it (cut to `max_length` from the prompt's start); where training also
caps the prompt at `max_prompt_length`, the scorer's importance was computed with more of the prompt in view.
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
from tiviz.scoring import Scorer
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


SOURCE_KINDS = {"implicit_reward": "run", "likelihood": "causal_lm", "reward_model": "reward_model"}
_SOURCE_WORDS = {"run": "a tiviz run (scored against its base model)", "causal_lm": "a causal LM alone",
                 "reward_model": "a reward model"}


def load_weight_scorer(source: str, *, device: str | None = None) -> tuple[Scorer, dict[str, Any]]:
    """(scorer, provenance) of a `--weights-from` source, loaded by `tiviz.scoring.load_scorer`: a tiviz run folder
    gives its `final/` model against the run's base model, a reward-model folder its score, any other causal LM its
    likelihood. The provenance's `kind` is run, causal_lm or reward_model.

    Raises:
        ConfigError: a run folder without `final/`.
    """
    from tiviz.scoring import load_scorer
    from tiviz.training.runfolder import final_dir, is_run_folder

    if is_run_folder(source) and not final_dir(source).is_dir():
        raise ConfigError("weights_from", source, "a finished run (its final/ folder is missing: finish or resume "
                          "the run first)")
    scorer = load_scorer(source, device=device, dtype="float32")
    return scorer, {"kind": SOURCE_KINDS[scorer.kind], "source": source, "scorer": scorer.provenance()}


def check_weighting(cfg: TIDPOConfig, scorer: Scorer) -> None:
    """Raise `ConfigError` unless `cfg.weighting` (and for the methods that explain a target, `weighting_target`)
    can run on the `--weights-from` scorer; the error lists what can (docs/TRAINING.md, token-weight sources)."""
    from tiviz.attribution.methods import METHODS, scorer_methods
    from tiviz.attribution.targets import SCORER_TARGETS

    source = _SOURCE_WORDS[SOURCE_KINDS[scorer.kind]]
    can = scorer_methods(scorer.kind)
    if cfg.weighting not in can:
        why = {"reward_model": "tidpo reads a causal LM's final logits, which a reward model has not; the others "
               "explain its score", "likelihood": "implicit_reward compares the policy with pi_ref: give a tiviz "
               "run folder"}.get(scorer.kind, "")
        raise ConfigError("weighting", cfg.weighting, f"{', '.join(can)} with {source} as weights_from ({why})")
    targets = SCORER_TARGETS[scorer.kind]
    if cfg.weighting != "tidpo" and METHODS[cfg.weighting].uses_target and cfg.weighting_target not in targets:
        why = {"reward_model": "a reward model has no token logits; its score is target 'reward'",
               "likelihood": "target 'reward' compares the policy with pi_ref: give a tiviz run folder"
               }.get(scorer.kind, "")
        raise ConfigError("weighting_target", cfg.weighting_target,
                          f"{', '.join(targets)} with {source} as weights_from ({why})")


def importance_table(cfg: TIDPOConfig, pairs: list[PreferencePair], *, cache: bool | str | Path = True,
                     device: str | None = None) -> pd.DataFrame:
    """The tidy attribution table of every training pair on `cfg.weights_from`'s scorer (a run, a causal LM or a
    reward model) with `cfg.weighting`'s method (cached; `attrs["tiviz"]["cache"]` says how much was reused).

    Raises:
        ConfigError: a method (or target) the scorer cannot give (`check_weighting`), before anything is computed.
    """
    from tiviz.attribution.core import attribute

    assert cfg.weights_from is not None
    scorer, info = load_weight_scorer(cfg.weights_from, device=device)
    check_weighting(cfg, scorer)
    df = attribute(scorer, pairs, [attribution_method(cfg)], config=attribution_config(cfg),
                   model_id=info["scorer"].get("model_id") or cfg.weights_from, cache=cache)
    df.attrs["tiviz"]["weights_from"] = info
    return df


def map_scores(seq: EncodedSequence, rows: pd.DataFrame) -> np.ndarray:
    """One side's scorer scores (`rows`: its table rows, in position order) on the tokens of `seq`. (len(seq),)

    Same token ids on the common tail: position by position from the end. Otherwise by character overlap within
    the prompt and within the response: a scorer token's score goes to every training token it overlaps; one
    that owns no character (a split character's continuation, an EOS, a reward model's end-of-turn) goes to one
    training token, the next one owning none at the same place (the last such one takes the rest), else the one
    owning the character before it. So a score is never counted twice where both tokenizations agree.
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
    point = starts == ends  # scorer tokens that own no character
    seg = np.arange(len(seq)) >= seq.response_start  # (len(seq),) training token in the response
    spans = np.asarray(seq.char_spans, dtype=np.int64).reshape(-1, 2)
    for i, (s, e) in enumerate(spans):
        if s < e:
            hit = (in_resp == seg[i]) & ~point & (starts < e) & (ends > s)
            out[i] = score[hit].sum()
    rank: dict[tuple[bool, int], int] = {}
    for r in np.flatnonzero(point):
        c, side = int(starts[r]), bool(in_resp[r])
        k = rank[side, c] = rank.get((side, c), -1) + 1
        here = seg == side
        empty = np.flatnonzero(here & (spans[:, 0] == c) & (spans[:, 1] == c))
        before = np.flatnonzero(here & (spans[:, 0] < c) & (spans[:, 1] >= c))
        after = np.flatnonzero(here & (spans[:, 0] <= c) & (spans[:, 1] > c))
        to = empty[min(k, len(empty) - 1)] if len(empty) else before[-1] if len(before) else (
            after[0] if len(after) else None)
        if to is not None:
            out[to] += score[r]
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
