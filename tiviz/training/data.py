"""Training batches from preference pairs: tokenised once, ordered reproducibly from the seed and the step.

The data order is a pure function of (seed, step), never of a sampler's hidden state, so a resumed run and a run
split over several processes see exactly the pairs an uninterrupted single-process run sees:

    order = StepOrder(n_pairs=110, global_batch=8, seed=42)
    order.indices(step=13)          # the 8 pair indices of optimizer step 13 (0-based), all ranks together
    order.shard(step=13, rank=1, world=2, micro_batches=2)  # rank 1's micro-batches of that step
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tiviz.data import PreferencePair
from tiviz.tokenization import Batch, EncodedSequence, collate, encode_pair, pad_token_id

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class EncodedPair:
    """One pair tokenised for training: both sides share the (possibly truncated) prompt."""

    index: int  # position of the pair in the training set (keys the precomputed reference log-probs)
    pair_id: str
    chosen: EncodedSequence
    rejected: EncodedSequence

    @property
    def prompt_ids(self) -> list[int]:
        return self.chosen.input_ids[: self.chosen.response_start]


def fit_lengths(seq: EncodedSequence, max_prompt_length: int, max_length: int) -> EncodedSequence:
    """Truncate as TRL does: the prompt keeps its last `max_prompt_length` tokens, then the response keeps its
    first `max_length - prompt` tokens. Returns a new sequence (or `seq` itself when nothing is cut)."""
    start = seq.response_start
    cut_front = max(start - max_prompt_length, 0)
    keep = min(len(seq) - cut_front, max_length)
    if cut_front == 0 and keep == len(seq):
        return seq
    end = cut_front + keep
    return EncodedSequence(
        input_ids=seq.input_ids[cut_front:end],
        response_start=start - cut_front,
        prompt_text=seq.prompt_text,
        response_text=seq.response_text,
        tokens=seq.tokens[cut_front:end],
        char_spans=seq.char_spans[cut_front:end],
        truncated=seq.truncated + len(seq) - keep,
    )


def encode_pairs(
    tokenizer: Any, pairs: list[PreferencePair], *, max_length: int, max_prompt_length: int
) -> list[EncodedPair]:
    """Tokenise every pair once (chat template when the tokenizer has one, EOS appended), truncated to fit.

    Pairs whose response would be cut to nothing keep one response token, so every row has a response.
    """
    out = []
    n_cut = 0
    for i, pair in enumerate(pairs):
        chosen, rejected = encode_pair(tokenizer, pair)
        prompt_cap = min(max_prompt_length, max_length - 1)
        fitted = [fit_lengths(s, prompt_cap, max_length) for s in (chosen, rejected)]
        n_cut += sum(f is not s for f, s in zip(fitted, (chosen, rejected), strict=True))
        out.append(EncodedPair(i, pair.id, fitted[0], fitted[1]))
    if n_cut:
        log.warning(
            "%d of %d sequences truncated to max_prompt_length=%d / max_length=%d",
            n_cut, 2 * len(pairs), max_prompt_length, max_length,
        )
    return out


def pair_rows(pairs: list[EncodedPair], pad_id: int) -> Batch:
    """The pairs as one right-padded batch (2B, L): rows 0..B-1 chosen, B..2B-1 rejected."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, padding_side="right")


def prompt_batch(pairs: list[EncodedPair], pad_id: int) -> Batch:
    """The pairs' prompts alone, left-padded, as `generate` wants them."""
    seqs = [
        EncodedSequence(p.prompt_ids, len(p.prompt_ids), "", "", [], [(0, 0)] * len(p.prompt_ids)) for p in pairs
    ]
    return collate(seqs, pad_id, padding_side="left")


class StepOrder:
    """Which pairs each optimizer step trains on, from (seed, step) alone.

    Each epoch is a seeded permutation of the pairs; an epoch has `ceil(n / global_batch)` steps and its last step
    is filled up from the start of the same permutation, so every pair is seen once per epoch and every step has
    a full global batch (which DDP needs: every rank must run the same number of micro-batches).
    """

    def __init__(self, n_pairs: int, global_batch: int, seed: int) -> None:
        self.n = n_pairs
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_epoch = math.ceil(n_pairs / global_batch)

    def permutation(self, epoch: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def epoch(self, step: int) -> int:
        """0-based epoch of a 0-based step."""
        return step // self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        """The `global_batch` pair indices of a 0-based optimizer step."""
        perm = self.permutation(self.epoch(step))
        k = step % self.steps_per_epoch
        start = k * self.global_batch
        picked = [perm[(start + j) % self.n] for j in range(self.global_batch)]
        return picked

    def shard(self, step: int, rank: int, world: int, micro_batches: int) -> list[list[int]]:
        """Rank `rank`'s micro-batches of a step: the global batch split into `world * micro_batches` equal
        slices, rank r taking slices r*micro_batches .. (r+1)*micro_batches-1."""
        idx = self.indices(step)
        per = self.global_batch // (world * micro_batches)
        first = rank * micro_batches
        return [idx[(first + m) * per : (first + m + 1) * per] for m in range(micro_batches)]


def anchor_batch(
    pairs: list[EncodedPair], generated: torch.Tensor, eos_id: int | None, pad_id: int
) -> list[EncodedSequence]:
    """Prompt + sampled response as sequences; each response ends at its first EOS (kept, like the EOS that
    chosen and rejected responses carry) and has at least one token.

    Args:
        pairs: the batch's pairs, in row order.
        generated: (B, N) the tokens `generate` added after the prompts.
        eos_id: the end-of-sequence id (None: responses run to N tokens).
        pad_id: padding id, dropped from the end of finished rows.
    """
    out = []
    for row, pair in enumerate(pairs):
        toks = generated[row].tolist()
        if eos_id is not None and eos_id in toks:
            toks = toks[: toks.index(eos_id) + 1]
        toks = toks or [eos_id if eos_id is not None else pad_id]
        ids = pair.prompt_ids + toks
        out.append(EncodedSequence(ids, len(pair.prompt_ids), "", "", [], [(0, 0)] * len(ids)))
    return out


__all__ = [
    "EncodedPair",
    "StepOrder",
    "anchor_batch",
    "encode_pairs",
    "fit_lengths",
    "pad_token_id",
    "pair_rows",
    "prompt_batch",
]
