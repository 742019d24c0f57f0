"""tiviz inside a TRL (or any transformers `Trainer`) run: a callback that attributes a fixed set of evaluation
pairs every N optimizer steps and writes the tidy table of each step into the run's output folder, and the
reading side that turns such a folder (or one of its `checkpoint-N` folders) back into a table.

Layout written: `<output_dir>/tiviz/step-000000.parquet` (before the first step), `step-000050.parquet`, ...,
one table per step with the provenance of the policy at that step. The per-token implicit reward
(`implicit_reward`, beta (log pi - log pi_ref), TI-DPO Eq. 2 per token, docs/METHOD.md) is computed against the
trainer's reference: `trainer.ref_model` when it has one; for a PEFT policy without one, the policy with its
adapter disabled (what TRL's DPOTrainer uses); otherwise a frozen copy of the policy taken before the first step
(the reference DPO starts from, which TRL also uses when it precomputes reference log-probs).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from transformers import TrainerCallback

from tiviz.config import AttributionConfig
from tiviz.data import PreferencePair, load_pairs
from tiviz.errors import TableError
from tiviz.integrations.checkpoints import CHECKPOINT, is_model_folder

log = logging.getLogger(__name__)
TABLES = "tiviz"
_STEP = re.compile(r"^step-(\d+)\.parquet$")


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class AttributionCallback(TrainerCallback):
    """Every `every` optimizer steps (and before the first, and after the last), attribute `pairs` with
    `methods` and write `<output_dir>/tiviz/step-NNNNNN.parquet`.

    Args:
        pairs: the evaluation pairs (`PreferencePair`s or anything `load_pairs` reads), the same at every step.
        methods: method ids (see `tiviz methods`); `implicit_reward` needs the reference, found as described in
            the module docstring.
        every: steps between two tables (default 50).
        ref_model: the reference; default `trainer.ref_model` when built with `for_trainer`.
        beta: the implicit reward scale; default the trainer's `args.beta` (DPOConfig), else the config's.
        config: an `AttributionConfig` for every step.
    """

    def __init__(self, pairs: Sequence[PreferencePair] | Any, methods: str | Sequence[str] = "gradient,implicit_reward",
                 *, every: int = 50, ref_model: Any | None = None, beta: float | None = None,
                 config: AttributionConfig | None = None) -> None:
        from tiviz.attribution import resolve_methods

        if every < 1:
            from tiviz.errors import ConfigError

            raise ConfigError("every", every, "a whole number of steps >= 1")
        self.pairs = list(pairs) if pairs and isinstance(next(iter(pairs)), PreferencePair) else load_pairs(pairs)
        self.methods = resolve_methods(methods)
        self.every = every
        self.ref_model = ref_model
        self.beta = beta
        self.config = config or AttributionConfig()
        self.written: dict[int, Path] = {}
        self.reference_kind = "given" if ref_model is not None else None
        self.adapter_reference = False  # pi_ref is the PEFT policy with its adapters disabled

    @classmethod
    def for_trainer(cls, trainer: Any, pairs: Sequence[PreferencePair] | Any, methods: str | Sequence[str] =
                    "gradient,implicit_reward", *, every: int = 50, **kwargs: Any) -> AttributionCallback:
        """A callback wired to `trainer` (its reference model and beta) and added to it."""
        ref = kwargs.pop("ref_model", None) or getattr(trainer, "ref_model", None)
        beta = kwargs.pop("beta", None) or getattr(trainer.args, "beta", None)
        callback = cls(pairs, methods, every=every, ref_model=ref, beta=beta, **kwargs)
        if ref is not None:
            callback.reference_kind = "trainer.ref_model"
        trainer.add_callback(callback)
        return callback

    # -------------------------------------------------------------------------------------- trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.ref_model is None and "implicit_reward" in self.methods:
            if is_peft_model(model):
                self.adapter_reference, self.reference_kind = True, "policy with adapters disabled"
            else:  # the policy before any step is DPO's reference; a frozen copy costs one more model in memory
                self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
                self.reference_kind = "frozen copy of the policy at step 0"
        self._write(args, state, model, kwargs.get("processing_class"))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self._write(args, state, model, kwargs.get("processing_class"))

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step not in self.written:
            self._write(args, state, model, kwargs.get("processing_class"))

    def _write(self, args: Any, state: Any, model: Any, tokenizer: Any) -> None:
        from tiviz.attribution import attribute
        from tiviz.scoring import make_scorer
        from tiviz.table import PROVENANCE_KEY, write_table

        if not state.is_world_process_zero or state.global_step in self.written:
            return
        if tokenizer is None:
            raise TableError("AttributionCallback: the trainer has no processing_class (tokenizer). Fix: pass "
                             "processing_class= to the trainer")
        was_training = model.training
        policy = getattr(model, "module", model)  # DDP / accelerate wrappers keep the model in .module
        cfg = AttributionConfig.from_dict({**self.config.to_dict(), "beta": self.beta}) if self.beta else self.config
        try:
            model_id = str(getattr(policy.config, "name_or_path", ""))
            with own_precision(policy), own_precision(self.ref_model):
                if self.adapter_reference:
                    scorer = make_scorer(policy, adapter_reference=True, beta=cfg.beta, tokenizer=tokenizer,
                                         model_id=model_id)
                    df = attribute(scorer, self.pairs, self.methods, config=cfg)
                else:
                    df = attribute(policy, self.pairs, self.methods, tokenizer=tokenizer, ref_model=self.ref_model,
                                   config=cfg, model_id=model_id)
        finally:
            model.train(was_training)
        df.attrs[PROVENANCE_KEY]["training"] = {"global_step": state.global_step, "epoch": state.epoch,
                                                "output_dir": str(args.output_dir), "reference": self.reference_kind}
        path = write_table(df, Path(args.output_dir) / TABLES / f"step-{state.global_step:06d}.parquet")
        self.written[state.global_step] = path
        log.info("tiviz: wrote %s (%d rows)", path, len(df))


@contextlib.contextmanager
def own_precision(module: Any) -> Iterator[None]:
    """Run `module` in its own dtype for a while. Under mixed precision accelerate wraps `forward` in autocast
    (TRL's configs default to bf16) and keeps the plain one as `_original_forward`; the tables must hold what
    `tiviz attribute` gives on the saved checkpoint, so the plain forward is used, and the wrapper put back."""
    inner = module
    wrapped = inner.__dict__.get("forward") if inner is not None and "_original_forward" in inner.__dict__ else None
    if wrapped is None:
        yield
        return
    inner.forward = inner.__dict__["_original_forward"]
    try:
        yield
    finally:
        inner.forward = wrapped


# ---------------------------------------------------------------------------------------------- reading side


def step_tables(folder: str | Path) -> dict[int, Path]:
    """The callback's tables of a run's output folder, by step (empty when the folder holds none)."""
    tables = Path(folder) / TABLES
    if not tables.is_dir():
        return {}
    found = {int(m.group(1)): p for p in tables.iterdir() if (m := _STEP.match(p.name))}
    return dict(sorted(found.items()))


def run_table(path: str | Path, at: Literal["first", "last"] = "last", *, pairs: Any = None,
              methods: str | Sequence[str] | None = None) -> pd.DataFrame:
    """The tidy table a path stands for, so `tiviz compare` takes runs and checkpoints as well as tables.

    - a table file: read as it is;
    - a run folder holding the callback's `tiviz/step-*.parquet`: its first or last step (`at`);
    - a `checkpoint-N` folder of such a run: the table of step N;
    - any other model folder (a TRL checkpoint, a merged LoRA): attributed now with `pairs` and `methods`.
    """
    from tiviz.table import read_table

    path = Path(path)
    if path.is_file():
        return read_table(path)
    if not path.is_dir():
        raise TableError(f"{path}: not found. Fix: pass a table, a run folder or a checkpoint folder")
    tables = step_tables(path)
    if tables:
        return read_table(tables[min(tables) if at == "first" else max(tables)])
    step = CHECKPOINT.match(path.name)
    if step and int(step.group(1)) in step_tables(path.parent):
        return read_table(step_tables(path.parent)[int(step.group(1))])
    if is_model_folder(path):
        if pairs is None:
            raise TableError(f"{path}: a model folder without tiviz tables. Fix: pass --pairs (and --methods) to "
                             "attribute it here")
        from tiviz.attribution import attribute
        from tiviz.models import load_model

        names = _methods(methods)
        if "implicit_reward" in names:
            raise TableError(f"{path}: implicit_reward needs the run's reference, which a bare model folder does "
                             "not name. Fix: leave it out of --methods, or use a run trained with AttributionCallback")
        return attribute(load_model(str(path)), pairs, names)
    raise TableError(f"{path}: holds no tiviz/step-*.parquet tables and no model. Fix: pass a tidy table, the "
                     "output folder of a run trained with AttributionCallback, or a model folder")


def _methods(methods: str | Sequence[str] | None) -> list[str]:
    from tiviz.attribution import resolve_methods

    return resolve_methods(methods or "gradient")
