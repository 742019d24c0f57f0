"""`tiviz train`: align a model with TI-DPO (or a baseline preset) on preference pairs; resumable.

    tiviz train --pairs sample_data/train.jsonl --preset paper --out runs/x       # Ctrl-C stops with a checkpoint
    tiviz train --resume runs/x                                                  # continue from the last good one
    accelerate launch --num_processes 2 -m tiviz.cli train --pairs ... --out ...  # DDP
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tiviz.commands import add_dataclass_flags, dataclass_overrides
from tiviz.training.config import PRESET_HELP, TIDPOConfig, list_presets

log = logging.getLogger(__name__)

_OWN_FLAGS = ("max_steps", "bf16")


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items())
    p = sub.add_parser(
        "train", help="align a model with TI-DPO on preference pairs (resumable)",
        description="Train with TI-DPO or a baseline preset. Writes RUN/config.json, metrics.jsonl, status.json, "
        "checkpoints/ and, when done, RUN/final/ (load it with tiviz.models.load_model). Ctrl-C (or "
        "tiviz.training.request_stop) stops after the current step with a checkpoint; --resume RUN continues.",
    )
    p.add_argument("--pairs", default=None, help="training pairs: .jsonl, .json, .csv or .parquet "
                   "(with --resume: defaults to the run's file, which must be unchanged)")
    p.add_argument("--model", default=None,
                   help="hub id, local folder, .gguf file, or the offline default smollm2-135m-instruct "
                   "(default; with --resume: the run's model)")
    p.add_argument("--out", default=None, help="run folder to create (required unless --resume)")
    p.add_argument("--preset", default="paper", choices=list_presets(), metavar="NAME",
                   help=f"starting settings, overridden by the flags below ({presets})")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None,
                   help="optimizer steps to run; -1 = num_epochs passes (default: -1)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its last good checkpoint (its saved settings apply; "
                   "--max-steps may extend it)")
    p.add_argument("--eval-pairs", default=None, metavar="FILE",
                   help="held-out pairs scored at the end: preference accuracy and mean reward margin")
    p.add_argument("--bf16", dest="bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="train under bfloat16 autocast (default: on where CUDA supports it)")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    add_dataclass_flags(p, TIDPOConfig, skip=_OWN_FLAGS)
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = dataclass_overrides(args, TIDPOConfig)
    return values


def _resume_settings(args: argparse.Namespace) -> tuple[TIDPOConfig, str, str, dict[str, Any]]:
    from tiviz.data import file_sha256
    from tiviz.errors import DataError, TivizError
    from tiviz.training.runfolder import read_run_config

    run_dir = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise TivizError(f"--out {args.out} differs from --resume {args.resume}. Fix: leave out --out; a resumed "
                         "run continues in its own folder")
    saved = read_run_config(run_dir)
    overrides = _overrides(args)
    changed = sorted(k for k, v in overrides.items() if k != "max_steps" and saved["tidpo"].get(k) != v)
    if changed:
        log.warning("--resume: overriding the run's saved %s; later steps will not match the original settings",
                    ", ".join(changed))
    cfg = TIDPOConfig.from_dict({**saved["tidpo"], **overrides})
    pairs_file = args.pairs or saved.get("data", {}).get("file")
    if not pairs_file:
        raise TivizError(f"{run_dir}/config.json names no data file. Fix: pass --pairs")
    want = saved.get("data", {}).get("sha256")
    if want and Path(pairs_file).exists() and file_sha256(pairs_file) != want:
        raise DataError("changed since the run started (sha256 differs from the run's config.json)",
                        source=str(pairs_file), fix="resume with the original file, or start a new run")
    model = str(args.model or saved.get("model") or "")
    info = {k: v for k, v in saved.items() if k in ("preset",)}
    return cfg, model, str(pairs_file), info


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tiviz.errors import TivizError
    from tiviz.models import DEFAULT_MODEL, load_model
    from tiviz.training.config import config_from_preset
    from tiviz.training.trainer import ProgressEvent, train

    if args.resume:
        cfg, model_id, pairs_file, info = _resume_settings(args)
        run_dir = Path(args.resume)
    else:
        if not args.pairs or not args.out:
            raise TivizError("--pairs and --out are required to start a run. Fix: e.g. tiviz train --pairs "
                             "sample_data/train.jsonl --out runs/x (or --resume RUN to continue one)")
        cfg = config_from_preset(args.preset, **_overrides(args))
        model_id, pairs_file, run_dir = args.model or DEFAULT_MODEL, args.pairs, Path(args.out)
        info = {"preset": args.preset}

    bar: Any = None

    def progress(event: ProgressEvent) -> bool:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total_steps, initial=event.step, unit="step", desc="training",
                       dynamic_ncols=True)
        bar.update(event.step - bar.n)
        if event.metrics:
            bar.set_postfix(loss=f"{event.metrics['loss']:.4f}",
                            acc=f"{event.metrics['rewards/accuracies']:.2f}",
                            margin=f"{event.metrics['rewards/margins']:.3f}")
        return False

    loaded = load_model(model_id, dtype="float32", trust_remote_code=args.trust_remote_code)
    result = train(loaded, pairs_file, cfg, run_dir, resume=bool(args.resume), eval_pairs=args.eval_pairs,
                   progress=progress, extra_run_info=info)
    if bar is not None:
        bar.close()
    if not result.main_process:
        return 0 if result.state == "finished" else 130
    if result.state == "finished":
        line = f"finished {result.step} steps; final model: {result.final_dir}"
        if result.eval_metrics:
            line += (f"; held-out accuracy {result.eval_metrics['eval/accuracy']:.3f}, "
                     f"mean margin {result.eval_metrics['eval/margin']:.4f}")
        print(line)
        return 0
    print(f"stopped at step {result.step} of {result.total_steps} (checkpoint saved); continue with: "
          f"tiviz train --resume {run_dir}")
    return 130
