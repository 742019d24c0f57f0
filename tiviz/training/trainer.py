"""TI-DPO training on `accelerate`: one process on CPU or GPU, or many with `accelerate launch` (DDP).

    trainer = TIDPOTrainer(load_model("smollm2-135m-instruct", dtype="float32"), pairs,
                           config_from_preset("paper", max_steps=50), "runs/x")
    result = trainer.train()                # or trainer.train(resume=True) to continue a killed run
    load_model("runs/x/final")              # the aligned model, readable by tiviz and transformers

Each optimizer step (docs/METHOD.md §2 to §5):
1. the global batch of the step comes from (seed, step) alone (`StepOrder`), split over processes and
   gradient-accumulation micro-batches;
2. with the triplet term on, one anchor per pair is sampled from the current policy in one `generate` call
   (prompts left-padded, eval mode, no gradient);
3. chosen, rejected and anchor rows go through the frozen reference (`reference.Reference`: a separate copy, or
   the LoRA policy with its adapter disabled; no gradient) and through the policy in one forward (train mode,
   with gradient);
4. the token weights come from `weighting` (`tiviz.training.weighting`): the paper's by default, the L1 norm of
   d(max final logit)/d(input embeddings) of the current policy, mixed with the Gaussian prior, detached; when the
   policy has no active dropout its train-mode forward *is* its eval-mode forward, so the gradient is taken from
   that same forward (one backward to the embeddings only);
5. loss = weighted DPO with TDPO2's sequential KL + gamma * triplet (`tiviz.training.step`); backward; clip;
   optimizer and learning-rate step.

Metrics go to `RUN/metrics.jsonl` (TRL's names plus ours), the state to `RUN/status.json`, checkpoints to
`RUN/checkpoints/` (atomic, checksummed), the final model to `RUN/final/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

from tiviz.attribution.targets import token_logps
from tiviz.data import PreferencePair
from tiviz.errors import ConfigError, TivizError
from tiviz.models import LoadedModel, clear_quantizer, reference_copy, save_model
from tiviz.table import write_table
from tiviz.tokenization import Batch, EncodedSequence, collate, pad_token_id
from tiviz.training import checkpoint as ckpt
from tiviz.training.config import TIDPOConfig, report_to_list
from tiviz.training.data import EncodedPair, StepOrder, anchor_batch, encode_pairs, pair_rows, prompt_batch
from tiviz.training.evaluation import evaluate_policy
from tiviz.training.fixed_weights import FixedWeights, importance_table
from tiviz.training.metrics import MetricsWriter, truncate_after
from tiviz.training.reference import Reference
from tiviz.training.runfolder import (  # noqa: F401  (read_status, request_stop: the trainer's public API)
    FINAL_FORMAT,
    METRICS_FILE,
    TOKEN_WEIGHTS,
    State,
    check_resume_model,
    clear_stop,
    final_dir,
    read_run_config,
    read_status,
    request_stop,
    stop_requested,
    write_manifest,
    write_run_config,
    write_status,
)
from tiviz.training.step import Anchors, loss_terms, step_metrics
from tiviz.training.trackers import PROJECT, hparams, project_config, require_trackers, tracker_record
from tiviz.training.weighting import OnlineWeights

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
        weights_cache: with `weights_from`: the attribution cache the fixed weights go through (True: tiviz's
            cache folder; a folder; False: none).
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
        weights_cache: bool | str | Path = True,
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
        self.trackers = report_to_list(cfg.report_to)
        require_trackers(self.trackers)
        # cpu=True without CUDA: accelerate then sets up gloo DDP (MULTI_CPU) when launched on several processes
        self.accelerator = Accelerator(
            mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available(),
            log_with=self.trackers or None,
            project_config=project_config(self.run_dir) if self.trackers else None)
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
            ref_model = None  # the policy with its adapter disabled
        else:
            ref_model = reference_copy(LoadedModel(policy, None, model.model_id))
            ref_model.to(self.accelerator.device)
        self.ref = Reference(ref_model, lambda: self.policy, self.accelerator.autocast)
        policy.train()
        self.fused_weights = not _has_active_dropout(policy)
        self.weights: OnlineWeights | FixedWeights = OnlineWeights(cfg, self.tokenizer, fused=self.fused_weights)
        if cfg.weights_from is not None:
            with self._timed("weights_precompute"):
                table = importance_table(cfg, train_pairs, cache=weights_cache, device=str(self.accelerator.device))
            self.weights = FixedWeights(cfg, self.train_encoded, table)
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
        # the optimizer is prepared with the model so that `save_state` saves it as the run is distributed
        self.model, self.optimizer = self.accelerator.prepare(policy, self.optimizer)
        self._stop_signal = False
        self._elapsed_before = 0.0

    # ------------------------------------------------------------------------------------------ pieces

    @property
    def policy(self) -> Any:
        """The policy without any DDP / accelerate wrapper."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def reference(self) -> Any | None:
        """The separate reference model; None with LoRA (the policy with its adapter disabled) or once freed."""
        return self.ref.model

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def setup_reference(self) -> None:
        """With `precompute_ref_logps`: compute the reference log-probs of every training pair once and, when
        nothing else needs the reference model (no triplet anchors, no KL term, no eval pairs, not LoRA), free it."""
        if not self.config.precompute_ref_logps or self.ref.cache is not None:
            return
        if self.config.alpha_kl > 0:
            log.warning("precompute_ref_logps: no effect while alpha_kl > 0 (the sequential KL needs the "
                        "reference's full distribution at every step)")
            return
        with self._timed("precompute_ref"):
            self.ref.precompute(self.train_encoded, self.pad_id, self.config.batch_size)
        if self.config.gamma == 0 and self.ref.model is not None and not self.eval_encoded:
            self.ref.free()  # never called again: free its memory

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

    def _reference_outputs(self, pairs: list[EncodedPair], batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reference log-probs (2B, L) of the pair rows, from the precomputed cache when the KL term is off, and
        its logits (2B, L, V) when the KL term needs them."""
        if self.ref.cache is not None and self.config.alpha_kl == 0:
            return self.ref.cached_logps(pairs, batch.input_ids.shape[1]).to(self.accelerator.device), None
        logits = self.ref.logits(batch)  # (2B, L, V)
        return token_logps(logits, batch.input_ids), (logits if self.config.alpha_kl > 0 else None)

    def micro_step(self, pairs: list[EncodedPair], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (with graph) and metrics of one micro-batch at 0-based optimizer step `step`: anchors, reference,
        weights, the policy forward, then `loss_terms` and `step_metrics`."""
        cfg = self.config
        dev = self.accelerator.device
        anchor_rows: Batch | None = None
        if cfg.gamma > 0:
            with self._timed("generate"):
                anchor_rows = collate(self.sample_anchors(pairs), self.pad_id, padding_side="right").to(dev)  # (B, La)
        batch = pair_rows(pairs, self.pad_id).to(dev)  # (2B, L)
        with self._timed("ref_forward"):
            ref_logps, ref_logits = self._reference_outputs(pairs, batch)  # (2B, L), (2B, L, V) or None
            anchor_ref = self.ref.logps(anchor_rows) if anchor_rows is not None else None  # (B, La)
        with self._timed("weights"):
            weights = self.weights.before_forward(self.policy, batch, pairs, step, self.ref)  # (2B, L) or None
        with self._timed("policy_forward"):
            logits, anchor_logits, emb = self._policy_logits(batch, anchor_rows,
                                                             need_emb_grad=self.weights.needs_embedding_grad)
        if weights is None:
            with self._timed("weights"):
                weights = self.weights.from_forward(batch, logits, emb, ref_logps)  # (2B, L)
        self.last_weights = {"weights": weights.detach().cpu(), "input_ids": batch.input_ids.cpu()}
        anchors = None
        if anchor_rows is not None and anchor_logits is not None and anchor_ref is not None:
            anchors = Anchors(anchor_rows, anchor_logits, anchor_ref)
        with self._timed("loss"):
            terms = loss_terms(cfg, batch, logits, weights, ref_logps, ref_logits, anchors)
            metrics = step_metrics(terms, batch, weights, cfg.beta, anchors)
        return terms.loss, metrics

    def step(self, step: int) -> dict[str, float]:
        """Run 0-based optimizer step `step` on its own slice of the data; return its metrics (averaged over
        micro-batches and processes)."""
        cfg = self.config
        self.model.train()
        micro = self.order.shard(step, self.rank, self.world, cfg.gradient_accumulation_steps)
        learning_rate = self.scheduler.get_last_lr()[0]
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
        metrics["learning_rate"] = learning_rate
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

    def save_checkpoint(self, step: int) -> Path | None:
        """Checkpoint after `step` optimizer steps (every process must call it). Returns the folder on main."""
        return ckpt.save_state_checkpoint(
            self.accelerator, self.run_dir, step, scheduler_state=self.scheduler.state_dict(),
            trainer_state={"epoch": step / self.order.steps_per_epoch, "total_steps": self.total_steps,
                           "world_size": self.world, "elapsed_s": self._elapsed(), "lora": self.use_lora},
            keep=self.config.save_total_limit)

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore parameters, optimizer, scheduler and this process's RNG from a checkpoint; return its step."""
        back = ckpt.load_state_checkpoint(self.accelerator, path)
        trainer_state = back["trainer_state"]
        self.scheduler.load_state_dict(back["scheduler_state"])
        if trainer_state.get("total_steps", self.total_steps) != self.total_steps:
            self._replan_schedule(trainer_state.get("total_steps"))
        saved_world = trainer_state.get("world_size", self.world)
        if saved_world != self.world:
            log.warning("%s was written by %d processes, resuming on %d: the data order changes", path,
                        saved_world, self.world)
        self._elapsed_before = float(trainer_state.get("elapsed_s", 0.0))
        return int(trainer_state["step"])

    def _replan_schedule(self, old_total: Any) -> None:
        """A resume that changes the number of steps: put the learning rate where the new schedule has it now
        (the optimizer state holds the old schedule's last value, e.g. 0 at the end of a linear decay)."""
        sched = self.scheduler
        if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            return
        rates = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        sched._last_lr = rates  # type: ignore[attr-defined]
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
        if isinstance(self.weights, FixedWeights):
            rec["token_weights"] = self.weights.provenance()
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
        write_manifest(tmp, FINAL_FORMAT)
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
            check_resume_model(self.run_dir, self.loaded.model_id)
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
            if isinstance(self.weights, FixedWeights):
                write_table(self.weights.table, self.run_dir / TOKEN_WEIGHTS)
            write_status(self.run_dir, "running", start, self.total_steps)
        acc.wait_for_everyone()

        self.setup_reference()

        writer = MetricsWriter(self.run_dir / METRICS_FILE) if self.is_main else None
        if self.trackers:
            acc.init_trackers(PROJECT, config=hparams(self.config.to_dict()))
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
                if step % self.config.logging_steps == 0 or step == self.total_steps:
                    self._log(writer, _ordered(metrics))
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
                eval_metrics = self.evaluate()
                self._log(writer, {"step": step, **eval_metrics})
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
            if self.trackers:
                acc.end_training()

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy and mean margin of the eval pairs under the current policy against the reference
        (`tiviz.training.evaluation`, through `tiviz.scoring`); {} without eval pairs."""
        if not self.eval_encoded:
            return {}
        return evaluate_policy(self.policy, self.ref.model, self.eval_encoded, beta=self.config.beta,
                               batch_size=self.config.batch_size)

    def _log(self, writer: MetricsWriter | None, record: dict[str, float]) -> None:
        """One record to `RUN/metrics.jsonl` (main process) and to the trackers (`--report-to`)."""
        if writer is not None:
            writer.write(record)
        if self.trackers:
            self.accelerator.log(tracker_record(record), step=int(record["step"]))

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

