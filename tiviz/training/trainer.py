"""TI-DPO training on `accelerate`: one process on CPU or GPU, or many with `accelerate launch` (DDP).

    trainer = TIDPOTrainer(load_model("smollm2-135m-instruct", dtype="float32"), pairs,
                           config_from_preset("paper", max_steps=50), "runs/x")
    result = trainer.train()                # or trainer.train(resume=True) to continue a killed run
    load_model("runs/x/final")              # the aligned model, readable by tiviz and transformers

Each optimizer step (TI-DPO.md, sections 1 to 4):
1. the global batch of the step comes from (seed, step) alone (`StepOrder`), split over processes and
   gradient-accumulation micro-batches;
2. with the triplet term on, one anchor per pair is sampled from the current policy in one `generate` call
   (prompts left-padded, eval mode, no gradient);
3. chosen, rejected and anchor rows go through the policy in one forward (train mode, with gradient) and through
   the frozen reference (no gradient; a separate copy, or the LoRA policy with its adapter disabled);
4. TI-DPO weights are the L1 norm of d(max final logit)/d(input embeddings) of the current policy in eval mode,
   mixed with the Gaussian prior, detached. When the policy has no active dropout its train-mode forward *is* its
   eval-mode forward, so the weights' gradient is taken from that same forward (one backward to the embeddings
   only) instead of a second forward; with dropout (e.g. LoRA dropout) a separate eval-mode pass is made;
5. loss = weighted DPO with TDPO2's sequential KL + gamma * triplet; backward; clip; optimizer and LR step.

Metrics go to `RUN/metrics.jsonl` (TRL's names plus ours), the state to `RUN/status.json`, checkpoints to
`RUN/checkpoints/` (atomic, checksummed), the final model to `RUN/final/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiviz.attribution.targets import max_logit_target, token_logps
from tiviz.data import PreferencePair
from tiviz.errors import ConfigError, TivizError
from tiviz.models import LoadedModel, clear_quantizer, reference_copy, save_model
from tiviz.tokenization import Batch, EncodedSequence, collate, pad_token_id
from tiviz.training import checkpoint as ckpt
from tiviz.training.config import TIDPOConfig
from tiviz.training.data import EncodedPair, StepOrder, anchor_batch, encode_pairs, prompt_batch
from tiviz.training.losses import (
    align_responses,
    preference_metrics,
    sequential_kl,
    tidpo_dpo_loss,
    token_log_ratios,
    total_loss,
    triplet_loss,
    weight_entropy,
    weighted_dpo_delta,
)
from tiviz.training.metrics import MetricsWriter, truncate_after
from tiviz.training.runfolder import (  # noqa: F401  (read_status, request_stop: the trainer's public API)
    METRICS_FILE,
    State,
    clear_stop,
    final_dir,
    read_run_config,
    read_status,
    request_stop,
    stop_requested,
    write_run_config,
    write_status,
)
from tiviz.training.weights import (
    random_weights,
    tidpo_weights,
    uniform_weights,
    weights_from_gradients,
)

log = logging.getLogger(__name__)



@dataclass
class ProgressEvent:
    """What the trainer reports after each optimizer step (and once at the start and the end)."""

    step: int
    total_steps: int
    epoch: float
    elapsed_s: float
    state: State
    metrics: dict[str, float] | None = None


ProgressFn = Callable[[ProgressEvent], "bool | None"]
"""Called on the main process; returning True asks the trainer to stop (as `request_stop` does)."""


@dataclass
class TrainResult:
    """How a `train()` call ended."""

    run_dir: Path
    state: State
    step: int
    total_steps: int
    final_dir: Path | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    main_process: bool = True  # False on the other ranks of a multi-process run


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_pairs(
    policy: Any, reference: Any | None, encoded: list[EncodedPair], pad_id: int, *, beta: float,
    batch_size: int = 8, ref_adapter_disabled: bool = False,
) -> dict[str, float]:
    """Held-out preference accuracy and mean implicit-reward margin.

    The margin of a pair is `beta * (sum lr^w - sum lr^l)` (unweighted, DPO's implicit reward); accuracy is the
    share of pairs with margin > 0 (ties, e.g. before any training, count as wrong).

    Args:
        policy: the trained model (plain or PEFT).
        reference: the frozen reference, or None with `ref_adapter_disabled` (the PEFT policy without adapter).
        encoded: pairs from `encode_pairs`.
        pad_id: padding id.
        beta: the implicit-reward scale.
        batch_size: pairs per forward.
    Returns:
        {"eval/accuracy", "eval/margin", "eval/n_pairs"}.
    """
    was_training = policy.training
    policy.eval()
    margins = []
    device = next(policy.parameters()).device
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = collate([p.chosen for p in chunk] + [p.rejected for p in chunk], pad_id).to(device)
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "position_ids": batch.position_ids, "use_cache": False}
        logps = token_logps(policy(**inputs).logits, batch.input_ids)  # (2b, L)
        if ref_adapter_disabled:
            with policy.disable_adapter():
                ref_logps = token_logps(policy(**inputs).logits, batch.input_ids)
        else:
            assert reference is not None, "evaluate_pairs: pass a reference, or ref_adapter_disabled=True"
            ref_logps = token_logps(reference(**inputs).logits, batch.input_ids)
        lr = token_log_ratios(logps, ref_logps, batch.response_mask)  # (2b, L)
        b = len(chunk)
        margins.append(beta * (lr[:b].sum(-1) - lr[b:].sum(-1)))  # (b,)
    policy.train(was_training)
    m = torch.cat(margins).float()
    return {"eval/accuracy": (m > 0).float().mean().item(), "eval/margin": m.mean().item(),
            "eval/n_pairs": float(len(encoded))}


# ---------------------------------------------------------------------------------------------- trainer


def _has_active_dropout(model: Any) -> bool:
    """True when train mode differs from eval mode: a dropout layer with p > 0 or attention dropout."""
    cfg = getattr(model, "config", None)
    if cfg is not None and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad the last dimension of (N, W) or (N, W, V) with zeros to `width`."""
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = (0, 0, 0, extra) if x.dim() == 3 else (0, extra)
    return torch.nn.functional.pad(x, pad)


class TIDPOTrainer:
    """Policy + frozen reference + optimizer + the run folder; `train()` runs (or resumes) the loop.

    Args:
        model: the policy as a `LoadedModel` (trained in place; load it in float32: bf16 runs under autocast).
        train_pairs: the training pairs.
        config: a `TIDPOConfig` (see `config_from_preset`).
        run_dir: the run folder (created).
        eval_pairs: optional held-out pairs, scored at the end (accuracy and margin).
        progress: optional callback, see `ProgressFn`.
        should_stop: optional flag function polled after every step; True stops cleanly.
        data_info: what to record about the data in `RUN/config.json` (file, sha256...).
        extra_run_info: more provenance for `RUN/config.json` (preset name...).
    """

    def __init__(
        self,
        model: LoadedModel,
        train_pairs: list[PreferencePair],
        config: TIDPOConfig,
        run_dir: str | Path,
        *,
        eval_pairs: list[PreferencePair] | None = None,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        data_info: dict[str, Any] | None = None,
        extra_run_info: dict[str, Any] | None = None,
    ) -> None:
        from accelerate import Accelerator

        config.validate()
        if not train_pairs:
            raise ConfigError("train_pairs", 0, "at least one preference pair")
        self.config = cfg = config
        self.run_dir = Path(run_dir)
        self.loaded = model
        self.tokenizer = model.tokenizer
        self.progress = progress
        self.should_stop = should_stop
        self.data_info = data_info or {}
        self.extra_run_info = extra_run_info or {}
        self.timings: dict[str, float] = {}
        self.last_weights: dict[str, torch.Tensor] = {}

        bf16 = cfg.bf16 if cfg.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        # cpu=True without CUDA: accelerate then sets up gloo DDP (MULTI_CPU) when launched on several processes
        self.accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process

        self.pad_id = pad_token_id(self.tokenizer)
        self.eos_id = self.tokenizer.eos_token_id
        self.train_encoded = encode_pairs(self.tokenizer, train_pairs, max_length=cfg.max_length,
                                          max_prompt_length=cfg.max_prompt_length)
        self.eval_encoded = (encode_pairs(self.tokenizer, eval_pairs, max_length=cfg.max_length,
                                          max_prompt_length=cfg.max_prompt_length) if eval_pairs else [])
        self.global_batch = cfg.batch_size * cfg.gradient_accumulation_steps * self.world
        self.order = StepOrder(len(self.train_encoded), self.global_batch, cfg.seed)
        self.total_steps = (cfg.max_steps if cfg.max_steps != -1
                            else cfg.num_epochs * self.order.steps_per_epoch)

        torch.manual_seed(cfg.seed)  # LoRA initialisation
        policy = model.model
        clear_quantizer(policy)
        policy.float()  # float32 master weights; bf16 runs under autocast
        self.use_lora = cfg.use_lora
        if self.use_lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, uses alpha / r
                lora_dropout=cfg.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            policy = get_peft_model(policy, lora)
            self.reference = None  # the policy with its adapter disabled
        else:
            self.reference = reference_copy(LoadedModel(policy, None, model.model_id))
            self.reference.to(self.accelerator.device)
        policy.train()
        self.fused_weights = not _has_active_dropout(policy)
        params = [p for p in policy.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        else:
            self.optimizer = torch.optim.RMSprop(params, lr=cfg.learning_rate)
        from transformers import get_scheduler

        # not prepared by accelerate: its scheduler wrapper steps once per process, which would make the
        # schedule depend on the number of processes
        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=self.total_steps)
        self.model = self.accelerator.prepare(policy)
        self._ref_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._reference_freed = False
        self._stop_signal = False
        self._elapsed_before = 0.0

    # ------------------------------------------------------------------------------------------ pieces

    @property
    def policy(self) -> Any:
        """The policy without any DDP / accelerate wrapper."""
        return self.accelerator.unwrap_model(self.model)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def _ref_logits(self, batch: Batch) -> torch.Tensor:
        """Reference logits (N, L, V), no gradient."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "position_ids": batch.position_ids, "use_cache": False}
        if self._reference_freed:
            raise RuntimeError("the reference model was freed after precomputing its log-probs")
        with torch.no_grad(), self.accelerator.autocast():
            if self.reference is not None:
                return self.reference(**inputs).logits
            with self.policy.disable_adapter():
                return self.policy(**inputs).logits

    def precompute_reference(self) -> None:
        """Reference log-probs of every training pair, once (used when `precompute_ref_logps` is on and the KL
        term, which needs the reference's full distribution at every step, is off)."""
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        bs = max(self.config.batch_size, 1)
        for start in range(0, len(self.train_encoded), bs):
            chunk = self.train_encoded[start : start + bs]
            batch = collate([p.chosen for p in chunk] + [p.rejected for p in chunk], self.pad_id)
            batch = batch.to(self.accelerator.device)
            lp = token_logps(self._ref_logits(batch), batch.input_ids).float().cpu()  # (2b, L)
            for i, p in enumerate(chunk):
                cache[p.index] = (lp[i, : len(p.chosen)].clone(), lp[len(chunk) + i, : len(p.rejected)].clone())
        self._ref_cache = cache

    def setup_reference(self) -> None:
        """With `precompute_ref_logps`: compute the reference log-probs once and, when nothing else needs the
        reference model (no triplet anchors, no KL term, no eval pairs, not LoRA), free it."""
        if not self.config.precompute_ref_logps or self._ref_cache is not None:
            return
        if self.config.alpha_kl > 0:
            log.warning("precompute_ref_logps: no effect while alpha_kl > 0 (the sequential KL needs the "
                        "reference's full distribution at every step)")
            return
        with self._timed("precompute_ref"):
            self.precompute_reference()
        if self.config.gamma == 0 and self.reference is not None and not self.eval_encoded:
            self.reference = None  # never called again: free its memory
            self._reference_freed = True

    def _cached_ref_logps(self, pairs: list[EncodedPair], width: int) -> torch.Tensor:
        """(2B, width) reference log-probs of [chosen; rejected] rows from the cache, right-padded."""
        assert self._ref_cache is not None
        rows = [self._ref_cache[p.index][0] for p in pairs] + [self._ref_cache[p.index][1] for p in pairs]
        out = torch.zeros(len(rows), width)
        for r, v in enumerate(rows):
            out[r, : len(v)] = v
        return out.to(self.accelerator.device)

    @torch.no_grad()
    def sample_anchors(self, pairs: list[EncodedPair]) -> list[EncodedSequence]:
        """One response per prompt from the current policy, all prompts in one left-padded `generate` call."""
        cfg = self.config
        prompts = prompt_batch(pairs, self.pad_id).to(self.accelerator.device)
        policy = self.policy
        was_training = policy.training
        policy.eval()
        try:
            with self.accelerator.autocast():
                out = policy.generate(
                    input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, do_sample=True,
                    top_k=cfg.anchor_top_k, top_p=cfg.anchor_top_p, temperature=cfg.anchor_temperature,
                    max_new_tokens=cfg.anchor_max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                )  # (B, P + N)
        finally:
            policy.train(was_training)
        return anchor_batch(pairs, out[:, prompts.input_ids.shape[1] :].cpu(), self.eos_id, self.pad_id)

    def _random_seeds(self, pairs: list[EncodedPair], step: int) -> list[int]:
        base = (self.config.seed * 1_000_003 + step) * 100_003
        return [((base + p.index) * 2 + side) % (1 << 62) for side in (0, 1) for p in pairs]

    def _policy_logits(
        self, pair_rows: Batch, anchor_rows: Batch | None, need_emb_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Policy logits of the pair rows (2B, L2) and anchor rows (B, La), with graph, and the embeddings the pair
        rows started from (for the weights' gradient).

        One forward per group on a single process (the weights' backward then skips the anchor rows, and neither
        group pads to the other's length); one combined forward under DDP, which allows only one forward of the
        wrapped model per backward.
        """
        groups = [pair_rows] if anchor_rows is None else [pair_rows, anchor_rows]
        if self.world > 1 and anchor_rows is not None:
            width = max(b.input_ids.shape[1] for b in groups)
            attn = torch.cat([_pad_to(b.attention_mask, width) for b in groups])  # (3B, W)
            combined = Batch(torch.cat([_pad_to(b.input_ids, width) for b in groups]), attn,
                             torch.cat([_pad_to(b.position_ids, width) for b in groups]), attn.bool(), [])
            groups = [combined]
        out = []
        emb_pairs = None
        for i, b in enumerate(groups):
            emb = self.policy.get_input_embeddings()(b.input_ids)  # (N, L, H)
            if i == 0 and need_emb_grad and not emb.requires_grad:  # frozen embeddings (LoRA)
                emb = emb.detach().requires_grad_(True)
            if i == 0:
                emb_pairs = emb
            logits = self.model(inputs_embeds=emb, attention_mask=b.attention_mask, position_ids=b.position_ids,
                                use_cache=False).logits  # (N, L, V)
            out.append(logits)
        assert emb_pairs is not None
        n_pairs, w_pairs = pair_rows.input_ids.shape
        if len(groups) == 1 and anchor_rows is not None:  # the combined forward: split it again
            w_anchor = anchor_rows.input_ids.shape[1]
            return out[0][:n_pairs, :w_pairs], out[0][n_pairs:, :w_anchor], emb_pairs
        return out[0], (out[1] if anchor_rows is not None else None), emb_pairs

    def micro_step(self, pairs: list[EncodedPair], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (with graph) and metrics of one micro-batch at 0-based optimizer step `step`."""
        cfg = self.config
        B = len(pairs)
        dev = self.accelerator.device
        anchor_rows: Batch | None = None
        if cfg.gamma > 0:
            with self._timed("generate"):
                anchors = self.sample_anchors(pairs)
            anchor_rows = collate(anchors, self.pad_id, padding_side="right").to(dev)  # (B, La)
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id).to(dev)  # (2B, L)
        fused = cfg.weighting == "tidpo" and self.fused_weights

        weights: torch.Tensor | None = None
        if cfg.weighting == "tidpo" and not fused:
            with self._timed("weights"):
                weights = tidpo_weights(self.policy, batch, cfg)
        elif cfg.weighting == "uniform":
            weights = uniform_weights(batch.response_mask)
        elif cfg.weighting == "random":
            weights = random_weights(batch, self._random_seeds(pairs, step), cfg)

        with self._timed("policy_forward"):
            logits, anchor_logits, emb = self._policy_logits(batch, anchor_rows, need_emb_grad=fused)
        if fused:
            with self._timed("weights"):
                # d(max final logit)/d(embeddings): a backward to the embeddings only, on the forward in hand
                target = max_logit_target(logits, batch.attention_mask)  # (2B,)
                (grad,) = torch.autograd.grad(target.sum(), emb, retain_graph=True)  # (2B, L, H)
                weights = weights_from_gradients(grad[: 2 * B, : logits.shape[1]], batch, cfg)  # (2B, L)
        assert weights is not None
        self.last_weights = {"weights": weights.detach().cpu(), "input_ids": batch.input_ids.cpu()}

        need_kl = cfg.alpha_kl > 0
        ref_logits = None
        with self._timed("ref_forward"):
            if self._ref_cache is not None and not need_kl:
                ref_logps = self._cached_ref_logps(pairs, batch.input_ids.shape[1])  # (2B, L)
            else:
                ref_logits = self._ref_logits(batch)  # (2B, L, V)
                ref_logps = token_logps(ref_logits, batch.input_ids)  # (2B, L)
            if anchor_rows is not None:
                anchor_ref = token_logps(self._ref_logits(anchor_rows), anchor_rows.input_ids)  # (B, La)

        with self._timed("loss"):
            policy_logps = token_logps(logits, batch.input_ids)  # (2B, L)
            mask = batch.response_mask  # (2B, L)
            lr = token_log_ratios(policy_logps, ref_logps.to(policy_logps.dtype), mask)  # (2B, L)
            lr_w, lr_l = lr[:B], lr[B:]  # (B, L)
            m_w, m_l = mask[:B], mask[B:]
            delta = weighted_dpo_delta(lr_w, weights[:B], lr_l, weights[B:], m_w, m_l)  # (B,)
            kl_w = kl_l = None
            if need_kl:
                assert ref_logits is not None
                kl = sequential_kl(logits, ref_logits, mask)  # (2B,)
                kl_w, kl_l = kl[:B], kl[B:]
            l_dpo = tidpo_dpo_loss(delta, kl_w, kl_l, beta=cfg.beta, alpha_kl=cfg.alpha_kl)  # (B,)
            trip: torch.Tensor | float = 0.0
            if anchor_rows is not None and anchor_logits is not None:
                a_lr = token_log_ratios(token_logps(anchor_logits, anchor_rows.input_ids), anchor_ref,
                                        anchor_rows.response_mask)  # (B, La)
                a, a_m = align_responses(a_lr, anchor_rows.response_mask)  # (B, Ra)
                w, w_m = align_responses(lr_w, m_w)  # (B, Rw)
                r, r_m = align_responses(lr_l, m_l)  # (B, Rl)
                trip = triplet_loss(a, a_m, w, w_m, r, r_m, margin=cfg.margin)
            loss = total_loss(l_dpo, trip, gamma=cfg.gamma)

            metrics = preference_metrics(lr_w.detach(), lr_l.detach(), m_w, m_l, cfg.beta)
            metrics["loss"] = loss.item()
            metrics["loss/dpo_w"] = l_dpo.mean().item()
            metrics["loss/triplet"] = float(trip.item() if isinstance(trip, torch.Tensor) else trip)
            mf = mask.to(policy_logps.dtype)
            metrics["logps/chosen"] = (policy_logps[:B] * mf[:B]).sum(-1).mean().item()
            metrics["logps/rejected"] = (policy_logps[B:] * mf[B:]).sum(-1).mean().item()
            if kl_w is not None and kl_l is not None:
                metrics["kl/chosen"] = kl_w.mean().item()
                metrics["kl/rejected"] = kl_l.mean().item()
            metrics["weights/entropy"] = weight_entropy(weights, mask).mean().item()
            if anchor_rows is not None:
                metrics["anchor/length"] = float(anchor_rows.response_mask.sum(-1).float().mean().item())
        return loss, metrics

    def step(self, step: int) -> dict[str, float]:
        """Run 0-based optimizer step `step` on its own slice of the data; return its metrics (averaged over
        micro-batches and processes)."""
        cfg = self.config
        self.model.train()
        micro = self.order.shard(step, self.rank, self.world, cfg.gradient_accumulation_steps)
        lr_now = self.scheduler.get_last_lr()[0]
        sums: dict[str, float] = {}
        for m, idx in enumerate(micro):
            pairs = [self.train_encoded[i] for i in idx]
            sync = m == len(micro) - 1
            ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)
            with ctx:
                loss, mets = self.micro_step(pairs, step)
                with self._timed("backward"):
                    self.accelerator.backward(loss / len(micro))
            for k, v in mets.items():
                sums[k] = sums.get(k, 0.0) + v / len(micro)
        with self._timed("optimizer"):
            if cfg.max_grad_norm > 0:
                norm = self.accelerator.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], cfg.max_grad_norm)
                sums["grad_norm"] = float(norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        metrics = self._reduce(sums)
        metrics["learning_rate"] = lr_now
        return metrics

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of each metric over processes (every process logs the same keys)."""
        if self.world == 1:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist(), strict=True))

    def _stop_requested(self) -> bool:
        flag = self._stop_signal or stop_requested(self.run_dir)
        if not flag and self.should_stop is not None:
            flag = bool(self.should_stop())
        if self.world > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    # ------------------------------------------------------------------------------------------ state

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.policy.named_parameters() if p.requires_grad}

    def save_checkpoint(self, step: int) -> Path | None:
        """Checkpoint after `step` optimizer steps (every process must call it). Returns the folder on main."""
        acc = self.accelerator
        tmp = ckpt.checkpoint_root(self.run_dir) / f".tmp-{ckpt.step_name(step)}"
        if self.is_main:
            ckpt.begin_checkpoint(self.run_dir, step)
        acc.wait_for_everyone()
        ckpt.write_rng_state(tmp, self.rank)
        acc.wait_for_everyone()
        path = None
        if self.is_main:
            path = ckpt.finish_checkpoint(
                tmp, self.run_dir, step,
                model_state=self._trainable_state(),
                optimizer_state=self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                trainer_state={"epoch": step / self.order.steps_per_epoch, "total_steps": self.total_steps,
                               "world_size": self.world, "elapsed_s": self._elapsed(),
                               "lora": self.use_lora},
                keep=self.config.save_total_limit,
            )
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore parameters, optimizer, scheduler and this process's RNG from a checkpoint; return its step."""
        ck = ckpt.load_checkpoint(path, self.rank)
        params = dict(self.policy.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if set(ck.model_state) != trainable:
            missing = sorted(trainable - set(ck.model_state))[:3]
            extra = sorted(set(ck.model_state) - trainable)[:3]
            raise ckpt.CheckpointError(
                f"{path}: parameters do not match the model (missing {missing}, unexpected {extra}). Fix: resume "
                "with the same model and --use-lora setting the run started with")
        with torch.no_grad():
            for name, value in ck.model_state.items():
                if params[name].shape != value.shape:
                    raise ckpt.CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                                               f"{tuple(params[name].shape)}")
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        self.optimizer.load_state_dict(ck.optimizer_state)
        self.scheduler.load_state_dict(ck.scheduler_state)
        if ck.trainer_state.get("total_steps", self.total_steps) != self.total_steps:
            self._replan_schedule(ck.trainer_state.get("total_steps"))
        if ck.rng_state is not None:
            ckpt.set_rng_state(ck.rng_state)
        else:
            log.warning("%s has no RNG state for process %d; sampling will differ from the original run",
                        path, self.rank)
        saved_world = ck.trainer_state.get("world_size", self.world)
        if saved_world != self.world:
            log.warning("%s was written by %d processes, resuming on %d: the data order changes", path,
                        saved_world, self.world)
        self._elapsed_before = float(ck.trainer_state.get("elapsed_s", 0.0))
        return ck.step

    def _replan_schedule(self, old_total: Any) -> None:
        """A resume that changes the number of steps: put the learning rate where the new schedule has it now
        (the optimizer state holds the old schedule's last value, e.g. 0 at the end of a linear decay)."""
        sched = self.scheduler
        if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            return
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = lrs  # type: ignore[attr-defined]
        log.info("learning-rate schedule re-planned from %s to %d total steps", old_total, self.total_steps)

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    def _write_run_config(self) -> None:
        rec = {
            "tidpo": self.config.to_dict(),
            "model": self.loaded.model_id,
            "model_revision": self.loaded.revision,
            "data": self.data_info,
            "n_train_pairs": len(self.train_encoded),
            "n_eval_pairs": len(self.eval_encoded),
            "world_size": self.world,
            "global_batch": self.global_batch,
            "total_steps": self.total_steps,
            **self.extra_run_info,
        }
        from tiviz import __version__

        rec["tiviz_version"] = __version__
        write_run_config(self.run_dir, rec)

    def save_final(self) -> Path:
        """Write `RUN/final/` (LoRA merged into the weights) readable by `tiviz.models.load_model` and
        transformers; replaced atomically. Main process only. The trainer's policy is merged in place."""
        policy = self.policy
        if self.use_lora:
            policy = policy.merge_and_unload()
        final = final_dir(self.run_dir)
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        policy.eval()
        save_model(policy, tmp, self.tokenizer)
        info = {"base_model": self.loaded.model_id, "steps": self.total_steps, "data": self.data_info,
                "tidpo": self.config.to_dict(), **self.extra_run_info}
        (tmp / "tiviz_training.json").write_text(json.dumps(info, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    # ------------------------------------------------------------------------------------------ loop

    def train(self, resume: bool | str | Path = False) -> TrainResult:
        """Run the training loop to `total_steps`, or until a stop is requested.

        Args:
            resume: False starts fresh (the run folder must not hold checkpoints); True continues from the run
                folder's newest good checkpoint (corrupt or unfinished ones are skipped with a warning); a path
                continues from that checkpoint folder.
        Returns:
            a `TrainResult`; `final_dir` is set when the run finished.
        Raises:
            TivizError: a fresh start over existing checkpoints, or a resume with none to resume from.
        """
        acc = self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        start = 0
        if resume:
            if self.is_main:
                ckpt.remove_partial(self.run_dir)
            acc.wait_for_everyone()
            path = Path(resume) if not isinstance(resume, bool) else ckpt.latest_good_checkpoint(self.run_dir)
            if path is None:
                raise TivizError(f"{self.run_dir}: no complete checkpoint to resume from. Fix: start a new run "
                                 "without --resume")
            start = self.load_checkpoint(path)
            log.info("resuming from %s (step %d of %d)", path, start, self.total_steps)
            if self.is_main:
                truncate_after(self.run_dir / METRICS_FILE, start)
        elif ckpt.list_checkpoints(self.run_dir):
            raise TivizError(f"{self.run_dir} already holds checkpoints of another run. Fix: resume it with "
                             f"--resume {self.run_dir}, or choose a new --out folder")
        else:
            if self.is_main:  # a run killed before its first checkpoint leaves a log and partial folders
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
                ckpt.remove_partial(self.run_dir)
            torch.manual_seed(self.config.seed + self.rank)
        if self.is_main:
            clear_stop(self.run_dir)
            self._write_run_config()
            write_status(self.run_dir, "running", start, self.total_steps)
        acc.wait_for_everyone()

        self.setup_reference()

        writer = MetricsWriter(self.run_dir / METRICS_FILE) if self.is_main else None
        previous_handler = self._install_sigint()
        step = start
        last_saved = start
        metrics: dict[str, float] = {}
        try:
            self._report(step, "running", None)
            while step < self.total_steps:
                metrics = self.step(step)
                step += 1
                metrics.update(step=step, epoch=step / self.order.steps_per_epoch, elapsed_s=self._elapsed())
                if writer is not None and (step % self.config.logging_steps == 0 or step == self.total_steps):
                    writer.write(_ordered(metrics))
                stop = self._report(step, "running", metrics) or self._stop_requested()
                if step < self.total_steps and (stop or (self.config.save_steps and
                                                         step % self.config.save_steps == 0)):
                    self.save_checkpoint(step)
                    last_saved = step
                if self.is_main:
                    write_status(self.run_dir, "running", step, self.total_steps)
                if stop and step < self.total_steps:
                    self._report(step, "cancelled", metrics)
                    if self.is_main:
                        clear_stop(self.run_dir)
                        write_status(self.run_dir, "cancelled", step, self.total_steps,
                                     message=f"stopped on request; resume with --resume {self.run_dir}")
                    return TrainResult(self.run_dir, "cancelled", step, self.total_steps, None, metrics,
                                       main_process=self.is_main)
            if last_saved != step:
                self.save_checkpoint(step)
            eval_metrics: dict[str, float] = {}
            if self.eval_encoded:
                eval_metrics = evaluate_pairs(
                    self.policy, self.reference, self.eval_encoded, self.pad_id, beta=self.config.beta,
                    batch_size=self.config.batch_size, ref_adapter_disabled=self.use_lora)
                if writer is not None:
                    writer.write({"step": step, **eval_metrics})
            final = None
            if self.is_main:
                final = self.save_final()
                write_status(self.run_dir, "finished", step, self.total_steps, final=str(final))
            acc.wait_for_everyone()
            self._report(step, "finished", metrics)
            return TrainResult(self.run_dir, "finished", step, self.total_steps, final, metrics, eval_metrics,
                               main_process=self.is_main)
        except BaseException as err:
            if self.is_main:
                state: State = "cancelled" if isinstance(err, KeyboardInterrupt) else "failed"
                write_status(self.run_dir, state, step, self.total_steps,
                             message=f"{type(err).__name__}: {err}"[:500])
            raise
        finally:
            self._restore_sigint(previous_handler)

    def _report(self, step: int, state: State, metrics: dict[str, float] | None) -> bool:
        if self.progress is None or not self.is_main:
            return False
        event = ProgressEvent(step, self.total_steps, step / self.order.steps_per_epoch, self._elapsed(), state,
                              metrics)
        return bool(self.progress(event))

    def _install_sigint(self) -> Any:
        """First Ctrl-C: stop cleanly after this step (with a checkpoint); second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal:
                raise KeyboardInterrupt
            self._stop_signal = True
            log.warning("interrupt: stopping after this step with a checkpoint (Ctrl-C again to abort)")

        return signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _restore_sigint(previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _ordered(metrics: dict[str, float]) -> dict[str, float]:
    """step, epoch first, then the rest sorted: stable, readable JSONL lines."""
    head: dict[str, float] = {k: metrics[k] for k in ("step", "epoch") if k in metrics}
    return {**head, **{k: metrics[k] for k in sorted(metrics) if k not in head}}


def train(
    model: LoadedModel | str,
    pairs: list[PreferencePair] | str | Path,
    config: TIDPOConfig,
    run_dir: str | Path,
    *,
    resume: bool | str | Path = False,
    eval_pairs: list[PreferencePair] | str | Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    extra_run_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume) a TI-DPO run in one call: loads the model and pairs when given as names or paths.

    Args:
        model: a `LoadedModel` (trained in place) or anything `tiviz.models.load_model` takes.
        pairs: preference pairs, or a file of them.
        config: the settings.
        run_dir: the run folder.
        resume: see `TIDPOTrainer.train`.
        eval_pairs: optional held-out pairs (or a file) scored at the end.
        progress: optional per-step callback (return True to stop).
        should_stop: optional flag function (True stops cleanly after saving).
        extra_run_info: provenance to record in `RUN/config.json`.
    """
    from tiviz.data import file_sha256, load_pairs
    from tiviz.models import load_model

    data_info: dict[str, Any] = {}
    if isinstance(pairs, str | Path):
        data_info = {"file": str(pairs), "sha256": file_sha256(pairs)}
        pairs = load_pairs(pairs)
    if isinstance(eval_pairs, str | Path):
        data_info["eval_file"] = str(eval_pairs)
        data_info["eval_sha256"] = file_sha256(eval_pairs)
        eval_pairs = load_pairs(eval_pairs)
    data_info["n_pairs"] = len(pairs)
    loaded = load_model(model, dtype="float32") if isinstance(model, str) else model
    trainer = TIDPOTrainer(loaded, pairs, config, run_dir, eval_pairs=eval_pairs, progress=progress,
                           should_stop=should_stop, data_info=data_info, extra_run_info=extra_run_info)
    return trainer.train(resume=resume)


def steps_per_epoch(n_pairs: int, config: TIDPOConfig, world_size: int = 1) -> int:
    """Optimizer steps in one pass over `n_pairs` (the last step of an epoch is filled up from its start)."""
    return math.ceil(n_pairs / (config.batch_size * config.gradient_accumulation_steps * world_size))
