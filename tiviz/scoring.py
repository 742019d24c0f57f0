"""Scorers: the one place that says what a response's score is, and the one batched path that scores pairs.

A scorer gives each (prompt, response) a scalar and each pair a margin, chosen minus rejected. Three kinds:

- `likelihood`: a causal LM alone, `log pi(y | x)` summed over the response tokens (a likelihood, not a
  preference);
- `implicit_reward`: a policy with a reference, DPO's implicit reward `beta * (log pi(y|x) - log pi_ref(y|x))`,
  the sum of `beta * lr_t` over the response tokens (the per-token log-ratio of docs/METHOD.md §3). The reference
  is a separate model or the policy with its PEFT adapter disabled. Both models read the same input embeddings,
  so the score is differentiable through both;
- `reward_model`: a sequence-classification model with one output, read at the last valid token, each pair
  encoded exactly as TRL's `RewardTrainer` encodes it (`tiviz.tokenization.encode_reward`: the conversation
  through the chat template, its end-of-turn included; without a template the text and EOS).

    scorer = load_scorer("runs/my-run")              # the run's final/ against its base model
    table = score_pairs(scorer, pairs)               # pair_id, chosen, rejected, margin
    margin_summary(table["margin"])                  # {"accuracy": ..., "mean_margin": ..., "n_pairs": ...}
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from tiviz.data import PreferencePair, load_pairs
from tiviz.errors import ConfigError, ModelError
from tiviz.table import PROVENANCE_KEY
from tiviz.tokenization import (
    TOKENS_PER_FORWARD,
    Batch,
    EncodedSequence,
    collate,
    encode_pair,
    encode_reward_pair,
    length_batches,
    pad_token_id,
)

if TYPE_CHECKING:
    import torch

ScorerKind = Literal["likelihood", "implicit_reward", "reward_model"]
KINDS: tuple[str, ...] = ("likelihood", "implicit_reward", "reward_model")
QUANTITIES: dict[str, str] = {
    "likelihood": "log-likelihood log pi(y|x)",
    "implicit_reward": "implicit reward beta * (log pi(y|x) - log pi_ref(y|x))",
    "reward_model": "reward model score r(x, y)",
}
Progress = Callable[[int, int], None]


@dataclass
class Scorer:
    """A model (and for the implicit reward its reference) that scores a response; see the module docstring.

    Build one with `make_scorer` (models in memory) or `load_scorer` (ids and folders).
    """

    kind: ScorerKind
    model: Any  # the causal LM / policy / reward model (a torch module)
    tokenizer: Any
    reference: Any | None = None  # pi_ref of implicit_reward; None with `adapter_reference`
    beta: float = 0.1
    adapter_reference: bool = False  # pi_ref is `model` with its PEFT adapter disabled
    model_id: str | None = None
    reference_id: str | None = None

    def quantity(self) -> str:
        """What the score is, in words (e.g. "log-likelihood log pi(y|x)")."""
        return QUANTITIES[self.kind]

    def provenance(self) -> dict[str, Any]:
        """kind, quantity, model ids and beta: what a table explained by this scorer records."""
        ref = None
        if self.kind == "implicit_reward":
            ref = f"{self.model_id} (adapter disabled)" if self.adapter_reference else self.reference_id
        return {"kind": self.kind, "quantity": self.quantity(), "model_id": self.model_id,
                "reference_id": ref, "beta": self.beta if self.kind == "implicit_reward" else None}

    def encode_pair(self, pair: PreferencePair, *, max_length: int | None = None,
                    truncation_mode: str = "keep_end") -> tuple[EncodedSequence, EncodedSequence]:
        """Both sides of a pair tokenised as this scorer's model reads them: a reward model as TRL's
        `RewardTrainer` trained it (`encode_reward_pair`), a causal LM as tiviz and TRL's DPO do (`encode_pair`)."""
        if self.tokenizer is None:
            raise ConfigError("tokenizer", None, "a tokenizer to encode text pairs (make_scorer(..., tokenizer=...))")
        encode = encode_reward_pair if self.kind == "reward_model" else encode_pair
        return encode(self.tokenizer, pair, max_length=max_length, truncation_mode=truncation_mode)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, L, H), detached: the point every model of the scorer is evaluated at."""
        return self.model.get_input_embeddings()(input_ids).detach()

    def sequence_scores(self, batch: Batch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The score of every row, (B,), differentiable with respect to `inputs_embeds` (None: embed the ids)."""
        import torch

        emb = self.embed(batch.input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, H)
        if self.kind == "reward_model":
            from tiviz.attribution.hybrid import last_valid_index

            hidden = self._backbone_states(emb, batch)  # (B, L, H)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            last = hidden[rows, last_valid_index(batch.attention_mask).clamp_min(0)]  # (B, H)
            return self._head(last)  # (B,)
        return self._token_terms(emb, batch).sum(-1, dtype=torch.float64)  # float64: sums of ~100s of terms

    def token_scores(self, batch: Batch) -> torch.Tensor:
        """Each response token's own exact term of the score, (B, L); 0 off the response.

        likelihood: `log pi(y_t | x, y_<t)`; implicit reward: `beta * (log pi - log pi_ref)` at t; reward model:
        the change of the score when token t is appended (the head read at every position of one forward), which
        sums to the score minus the prompt-only score (the score at the last prompt token; 0 without a prompt).
        """
        import torch

        with torch.no_grad():
            emb = self.embed(batch.input_ids)
            if self.kind != "reward_model":
                return self._token_terms(emb, batch)
            s = self._head(self._backbone_states(emb, batch))  # (B, L) the score of every prefix
            valid = batch.attention_mask.bool()
            s = torch.where(valid, s, torch.zeros_like(s))
            before = torch.nn.functional.pad(s[:, :-1], (1, 0))  # (B, L) the score one token earlier
            return torch.where(batch.response_mask, s - before, torch.zeros_like(s))

    # ------------------------------------------------------------------------------------------- internals

    def _token_terms(self, emb: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(B, L) per-token terms of a likelihood or implicit-reward score, differentiable in `emb`."""
        policy = self.policy_logps(batch, emb)  # (B, L)
        if self.kind == "likelihood":
            return policy
        return self.beta * (policy - self.reference_logps(batch, emb))

    def policy_logps(self, batch: Batch, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """`log pi(y_t | x, y_<t)` per response token, (B, L), 0 elsewhere; differentiable in `inputs_embeds`."""
        from tiviz.attribution.targets import response_positions

        positions, valid = response_positions(batch.response_mask)  # (B, K)
        return policy_token_logps(self.model, inputs_embeds, batch, positions, valid)

    def reference_logps(self, batch: Batch, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """`log pi_ref(y_t | x, y_<t)` per response token, (B, L), with pi_ref evaluated at the policy's input point
        `inputs_embeds` (plus the constant offset of its own embeddings), so gradients flow through pi_ref too."""
        from tiviz.attribution.targets import response_positions

        if self.kind != "implicit_reward":
            raise ConfigError("reference", None, "a reference model (the implicit-reward scorer)")
        positions, valid = response_positions(batch.response_mask)  # (B, K)
        with self._reference(batch.input_ids) as (ref, offset):
            ref_emb = inputs_embeds.to(offset.dtype) + offset  # (B, L, H): moves exactly as the policy's input
            return policy_token_logps(ref, ref_emb, batch, positions, valid)

    @contextlib.contextmanager
    def _reference(self, input_ids: torch.Tensor) -> Iterator[tuple[Any, torch.Tensor]]:
        """(the reference module, the constant offset of its input embeddings from the policy's).

        Both models are evaluated at one input point; the reference sees its own embedding of each token plus the
        same perturbation the policy sees, so the value is exactly log pi_ref and the gradient flows through both.
        """
        policy_emb = self.embed(input_ids)  # (B, L, H)
        if self.adapter_reference:
            with self.model.disable_adapter():
                yield self.model, _embedding_offset(self.model, policy_emb, input_ids)
        else:
            yield self.reference, _embedding_offset(self.reference, policy_emb, input_ids)

    def _backbone_states(self, emb: torch.Tensor, batch: Batch) -> torch.Tensor:
        backbone = getattr(self.model, self.model.base_model_prefix)
        out = backbone(inputs_embeds=emb, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                       use_cache=False)
        return out.last_hidden_state  # (B, L, H)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The reward head on hidden states (..., H) -> (...), at least float32."""
        import torch

        out = self.model.score(hidden)[..., 0]
        return out.to(torch.promote_types(out.dtype, torch.float32))


def policy_token_logps(model: Any, emb: torch.Tensor, batch: Batch, positions: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
    """`log pi(y_t | x, y_<t)` of every response token, (B, L), 0 elsewhere; the LM head runs only at the
    positions that score the response."""
    from tiviz.attribution.gradient import forward_logits
    from tiviz.attribution.targets import scatter_positions, token_logps_at

    logits = forward_logits(model, emb, batch.attention_mask, batch.position_ids, positions)  # (B, K, V)
    picked = token_logps_at(logits, positions, valid, batch.input_ids)  # (B, K)
    return scatter_positions(picked, positions, valid, batch.input_ids.shape[1])


def _embedding_offset(reference: Any, policy_emb: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The reference's embedding of `input_ids` minus the policy's (`policy_emb`), (B, L, H), in the reference's
    dtype; zeros when the two share their embeddings (a LoRA run and its base)."""
    table = reference.get_input_embeddings()
    if table.weight.shape[-1] != policy_emb.shape[-1] or int(input_ids.max()) >= table.weight.shape[0]:
        raise ModelError(
            f"the policy and its reference cannot share input embeddings: hidden size {policy_emb.shape[-1]} "
            f"against a reference table of shape {tuple(table.weight.shape)}. Fix: use two checkpoints of one "
            "model (same vocabulary and hidden size)")
    return table(input_ids).detach() - policy_emb.to(table.weight.dtype)


# ---------------------------------------------------------------------------------------------- building


def is_reward_model(model: Any) -> bool:
    """Whether a module is a sequence-classification model (a reward model), PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification")


def make_scorer(model: Any, *, reference: Any | None = None, beta: float = 0.1, tokenizer: Any | None = None,
                adapter_reference: bool = False, model_id: str | None = None,
                reference_id: str | None = None) -> Scorer:
    """A scorer from models in memory: a reward model, a policy with a reference (or `adapter_reference`: the
    policy with its PEFT adapter disabled), or a causal LM alone.

    Args:
        model: a torch module or a `tiviz.models.LoadedModel` (which brings its tokenizer and id).
        reference: pi_ref (module or LoadedModel) for the implicit reward.
        beta: the implicit reward's scale (DPO's beta), default 0.1.
        tokenizer: needed to encode text pairs; pairs already encoded need none.
    """
    model, tokenizer, model_id = _unpack(model, tokenizer, model_id)
    reference, _, reference_id = _unpack(reference, None, reference_id) if reference is not None else (
        None, None, reference_id)
    if not beta > 0:
        raise ConfigError("beta", beta, "a number > 0")
    if is_reward_model(model):
        if reference is not None or adapter_reference:
            raise ConfigError("reference", reference_id or "adapter", "none with a reward model: it scores alone")
        if hasattr(model, "get_base_model"):
            raise ModelError(f"{model_id}: a reward model with a PEFT adapter; tiviz reads its merged weights. "
                             "Fix: model = model.merge_and_unload()")
        labels = getattr(model.config, "num_labels", None)
        if labels != 1:
            raise ModelError(f"{model_id}: a reward model needs one output (num_labels=1); this one has {labels}. "
                             "Fix: use a reward model trained with one score head (as TRL's RewardTrainer does)")
        if not hasattr(model, "score") or not hasattr(model, "base_model_prefix"):
            raise ModelError(f"{model_id}: {type(model).__name__} has no `score` head on a backbone; tiviz reads "
                             "reward models built like transformers' *ForSequenceClassification (Llama, Qwen2, ...)")
        return Scorer("reward_model", model, tokenizer, model_id=model_id)
    if adapter_reference:
        if not hasattr(model, "disable_adapter"):
            raise ConfigError("adapter_reference", True, "only with a PEFT model (one with disable_adapter())")
        return Scorer("implicit_reward", model, tokenizer, beta=beta, adapter_reference=True, model_id=model_id)
    if reference is not None:
        return Scorer("implicit_reward", model, tokenizer, reference=reference, beta=beta, model_id=model_id,
                      reference_id=reference_id)
    return Scorer("likelihood", model, tokenizer, model_id=model_id)


def _unpack(model: Any, tokenizer: Any | None, model_id: str | None) -> tuple[Any, Any | None, str | None]:
    """(module, tokenizer, id) from a LoadedModel or a bare module."""
    if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "model_id"):
        return model.model, tokenizer if tokenizer is not None else model.tokenizer, model_id or model.model_id
    name = getattr(getattr(model, "config", None), "name_or_path", None) or None
    return model, tokenizer, model_id or name


def load_scorer(model: str, *, reference: str | None = None, beta: float = 0.1, device: str | None = None,
                dtype: str | None = None, trust_remote_code: bool = False) -> Scorer:
    """A scorer from ids and folders.

    Args:
        model: a causal LM (hub id, folder, .gguf, the offline default), a tiviz run folder (its `final/` model
            against the base model it was trained from, unless `reference` says otherwise), or a reward-model
            folder (config.json `architectures` ends in ForSequenceClassification).
        reference: pi_ref for the implicit reward (any causal LM `load_model` reads).
        beta: the implicit reward's scale.
        device, dtype, trust_remote_code: as in `tiviz.models.load_model`.
    """
    from tiviz.models import is_reward_model_folder, load_model, load_reward_model

    opts: dict[str, Any] = {"device": device, "dtype": dtype, "trust_remote_code": trust_remote_code}
    path = Path(model).expanduser()
    if is_reward_model_folder(path):
        if reference is not None:
            raise ConfigError("reference", reference, f"none: {model} is a reward model, which scores alone")
        return make_scorer(load_reward_model(str(path), **opts))
    run = run_base_model(path)
    if run is not None:
        from tiviz.training.runfolder import final_dir

        policy = load_model(str(final_dir(path)), **opts)
        policy.model_id = f"{model} (final)"
        ref = load_model(reference or run, **opts)
        return make_scorer(policy, reference=ref, beta=beta)
    policy = load_model(model, **opts)
    return make_scorer(policy, reference=load_model(reference, **opts) if reference else None, beta=beta)


def run_base_model(folder: Path) -> str | None:
    """The base model a tiviz training run folder started from (its config.json `model`), or None when `folder`
    is not a run folder (`tiviz.training.runfolder.is_run_folder`).

    Raises:
        ModelError: a run that has not finished (no `final/`) or whose config names no base model.
    """
    from tiviz.training.runfolder import RUN_CONFIG, final_dir, is_run_folder, read_run_config

    if not is_run_folder(folder):
        return None
    if not final_dir(folder).is_dir():
        raise ModelError(f"{folder}: a training run without {final_dir(folder).name}/. Fix: finish or resume the run")
    recorded = read_run_config(folder).get("model")
    if not isinstance(recorded, str) or not recorded:
        raise ModelError(f"{folder / RUN_CONFIG}: the run config names no base model (field 'model'). Fix: pass "
                         "the reference explicitly")
    return recorded


# ---------------------------------------------------------------------------------------------- scoring


@contextlib.contextmanager
def evaluation_mode(*modules: Any) -> Iterator[None]:
    """Modules in eval mode (no dropout) for the duration; each one's train/eval flag is restored after."""
    flags = [(m, m.training) for m in modules if m is not None]
    for m, _ in flags:
        m.eval()
    try:
        yield
    finally:
        for m, was in flags:
            m.train(was)


def score_pairs(scorer: Scorer, pairs: Sequence[PreferencePair] | Sequence[Any] | Any, *, batch_size: int = 8,
                max_length: int | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Score both sides of every pair; one row per pair, in input order: pair_id, chosen, rejected, margin.

    Pairs of similar length share a forward (at most `batch_size` pairs and `TOKENS_PER_FORWARD` padded tokens,
    unless one pair alone is longer), all models in eval mode (restored after). margin = chosen - rejected.

    Args:
        pairs: `PreferencePair`s, anything `load_pairs` reads, or pairs already encoded (objects with `pair_id`
            and `chosen` / `rejected` `EncodedSequence`s, as `tiviz.training.data.EncodedPair`).
        max_length: longest sequence when encoding text pairs (None: no cut).
        progress: called as progress(pairs_done, pairs_total) after each batch.
    Returns:
        the table, with `attrs["tiviz"]` = `scorer.provenance()`.
    """
    import torch

    encoded, ids = _encoded(scorer, pairs, max_length)
    pad = pad_token_id(scorer.tokenizer) if scorer.tokenizer is not None else 0
    out = np.full((len(encoded), 2), np.nan)
    done = 0
    with evaluation_mode(scorer.model, scorer.reference), torch.no_grad():
        for group in length_batches([max(len(c), len(r)) for c, r in encoded], batch_size, TOKENS_PER_FORWARD):
            seqs = [s for i in group for s in encoded[i]]  # chosen, rejected, chosen, ...
            batch = collate(seqs, pad).to(scorer.device)
            out[group] = scorer.sequence_scores(batch).double().cpu().numpy().reshape(-1, 2)
            done += len(group)
            if progress is not None:
                progress(done, len(encoded))
    table = pd.DataFrame({"pair_id": pd.Series(ids, dtype="string"), "chosen": out[:, 0], "rejected": out[:, 1],
                          "margin": out[:, 0] - out[:, 1]})
    table.attrs[PROVENANCE_KEY] = scorer.provenance()
    return table


def _encoded(scorer: Scorer, pairs: Any, max_length: int | None) -> tuple[
        list[tuple[EncodedSequence, EncodedSequence]], list[str]]:
    items = list(pairs) if isinstance(pairs, list | tuple) else None
    if items and isinstance(getattr(items[0], "chosen", None), EncodedSequence):
        return [(p.chosen, p.rejected) for p in items], [str(p.pair_id) for p in items]
    if items is None or (items and not isinstance(items[0], PreferencePair)):
        items = load_pairs(pairs)
    return [scorer.encode_pair(p, max_length=max_length) for p in items], [p.id for p in items]


def margin_summary(margins: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float]:
    """Preference accuracy (share of margins > 0; ties count as wrong, as TRL's rewards/accuracies), the mean
    margin and the number of pairs; NaN margins are left out, and an empty set gives NaN."""
    m = np.asarray(margins, dtype=np.float64)
    m = m[~np.isnan(m)]
    if not len(m):
        return {"accuracy": math.nan, "mean_margin": math.nan, "n_pairs": 0.0}
    return {"accuracy": float((m > 0).mean()), "mean_margin": float(m.mean()), "n_pairs": float(len(m))}
