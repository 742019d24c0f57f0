"""`tiviz attribute`: attribute every pair of a dataset with the chosen methods, write one tidy table.

With `--shard-dir` the work is written shard by shard (a killed run resumes with `--resume`, losing at most
the shard in progress), and under `accelerate launch` each process takes its share of the shards; rank 0
merges them into `--out` once every process is done.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from tiviz.commands import (
    add_cache_flags,
    add_dataclass_flags,
    cache_arg,
    check_limit,
    check_table_out,
    dataclass_overrides,
)
from tiviz.config import AttributionConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attribute", help="attribute preference pairs, write a tidy table",
                       description="Attribute every pair (both sides) with each method; write Parquet/CSV/JSON.")
    p.add_argument("--pairs", required=True, help="preference pairs: .jsonl, .json, .csv or .parquet")
    p.add_argument("--methods", default="gradient,integrated_gradients,attention,tidpo",
                   help="comma-separated method ids, or 'all' (see `tiviz methods`)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="the scorer to explain: a causal LM (hub id, local folder, .gguf file, or the offline "
                   "default smollm2-135m-instruct: its likelihood), a tiviz run folder (the implicit reward of its "
                   "final/ model against its base), or a reward-model folder (its score)")
    p.add_argument("--ref-model", default=None,
                   help="reference pi_ref: the scorer becomes the implicit reward beta * (log pi - log pi_ref) "
                   "(for token_score / implicit_reward and the reward target); see --beta")
    p.add_argument("--out", default="results.parquet", help="output table (.parquet, .csv or .json)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    p.add_argument("--limit", type=int, default=None, help="attribute only the first N pairs")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad rows in the pairs file: stop (raise) or skip them with a warning")
    p.add_argument("--shard-dir", default=None, metavar="DIR",
                   help="write results shard by shard into DIR (resumable; split across `accelerate launch` "
                   "processes), then merge them into --out")
    p.add_argument("--shard-size", type=int, default=32, metavar="N", help="pairs per shard (default: 32)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --shard-dir: keep its finished shards, compute the rest")
    add_cache_flags(p)
    p.add_argument("--target", default=None, choices=("max_logit", "logprob", "reward", "margin"),
                   help="what gradient, grad_x_input and integrated_gradients explain (default: the scorer's own "
                   "score: logprob for a causal LM alone, reward with --ref-model, a run folder or a reward "
                   "model): max_logit (TI-DPO Eq. 4), logprob (log pi(y|x)), reward (the implicit reward through "
                   "both models, or a reward model's score), margin (the signed score: chosen +, rejected -)")
    add_dataclass_flags(p, AttributionConfig, skip=("target",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tiviz.attribution import attribute, resolve_methods
    from tiviz.data import file_sha256, load_pairs
    from tiviz.errors import ConfigError
    from tiviz.table import PROVENANCE_KEY, write_table

    # Every option is checked before the data, the model or any attribution is touched.
    cfg = AttributionConfig(**dataclass_overrides(args, AttributionConfig))
    methods = resolve_methods(args.methods)
    check_table_out(args.out)
    check_limit(args.limit)
    if args.resume and not args.shard_dir:
        raise ConfigError("resume", True, "--resume only together with --shard-dir DIR")
    if args.shard_dir and args.shard_size < 1:
        raise ConfigError("shard_size", args.shard_size, "an integer >= 1")
    pairs = load_pairs(args.pairs, on_error=args.on_error)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    if args.shard_dir:
        return _run_sharded(args, cfg, methods, pairs)
    t0 = time.perf_counter()
    scorer = _scorer(args, args.device)
    cfg = _scorer_config(args, scorer)
    bar = tqdm(total=len(pairs), unit="pair", desc="attributing")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    df = attribute(scorer, pairs, methods, config=cfg, progress=progress, cache=cache_arg(args),
                   data_info={"file": str(args.pairs), "sha256": file_sha256(args.pairs), "n_pairs": len(pairs)})
    bar.close()
    out = write_table(df, args.out)
    elapsed = time.perf_counter() - t0
    cached = df.attrs.get(PROVENANCE_KEY, {}).get("cache")
    reuse = f"; {cached['reused']} of {cached['reused'] + cached['computed']} (pair, method) results from the cache " \
        f"{cached['folder']} (--no-cache to recompute)" if cached and cached["reused"] else ""
    print(f"wrote {len(df)} rows ({len(pairs)} pairs x 2 sides x {len(methods)} methods) to {out} "
          f"in {elapsed:.1f} s ({elapsed / max(len(pairs), 1):.2f} s/pair){reuse}")
    return 0


def _run_sharded(args: argparse.Namespace, cfg: AttributionConfig, methods: list[str], pairs: list[Any]) -> int:
    from tqdm import tqdm

    from tiviz.attribution.shards import attribute_to_dir, finished_shards, merge_shards
    from tiviz.data import file_sha256
    from tiviz.errors import TableError
    from tiviz.table import write_table

    rank, world_size, barrier, device = _processes(args.device)
    if not args.resume:
        done = finished_shards(args.shard_dir)
        if done:
            raise TableError(f"{args.shard_dir}: already holds {len(done)} finished shard(s). Fix: pass --resume "
                             "to continue that run, or choose an empty --shard-dir")
    barrier()  # every process has looked at the folder before any writes to it
    t0 = time.perf_counter()
    scorer = _scorer(args, device)
    cfg = _scorer_config(args, scorer)
    bar = tqdm(total=None, unit="pair", desc=f"attributing (process {rank})", disable=rank != 0)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    run = attribute_to_dir(
        scorer, pairs, methods, args.shard_dir, shard_size=args.shard_size, rank=rank, world_size=world_size,
        config=cfg, progress=progress, model_id=scorer.model_id,
        data_info={"file": str(args.pairs), "sha256": file_sha256(args.pairs), "n_pairs": len(pairs)},
    )
    bar.close()
    print(f"process {rank}/{world_size}: computed {len(run.computed)} shard(s), skipped {len(run.skipped)} "
          f"finished earlier, of {run.n_shards} in {args.shard_dir}")
    barrier()  # every shard is on disk before rank 0 merges
    if rank == 0:
        df = merge_shards(args.shard_dir)
        out = write_table(df, args.out)
        elapsed = time.perf_counter() - t0
        print(f"wrote {len(df)} rows ({len(pairs)} pairs x 2 sides x {len(methods)} methods) to {out} "
              f"in {elapsed:.1f} s")
    return 0


def _scorer(args: argparse.Namespace, device: str | None) -> Any:
    """The scorer `--model` / `--ref-model` / `--beta` name (`tiviz.scoring.load_scorer`)."""
    from tiviz.scoring import load_scorer

    beta = args.beta if args.beta is not None else AttributionConfig().beta
    return load_scorer(args.model, reference=args.ref_model, beta=beta, device=device, dtype=args.dtype,
                       trust_remote_code=args.trust_remote_code)


def _scorer_config(args: argparse.Namespace, scorer: Any) -> AttributionConfig:
    """The settings, with the target defaulting to the scorer's own score when `--target` is not given:
    logprob for a causal LM alone, reward for the implicit reward and for a reward model."""
    overrides = dataclass_overrides(args, AttributionConfig)
    if "target" not in overrides:
        overrides["target"] = "logprob" if scorer.kind == "likelihood" else "reward"
    return AttributionConfig(**overrides)


def _processes(device: str | None) -> tuple[int, int, Callable[[], None], str | None]:
    """(rank, world size, barrier, device) under `accelerate launch` (or torchrun); (0, 1, no-op, device) when
    one process runs. accelerate is imported only when several processes were launched. Without a GPU (or with
    --device cpu) the processes talk over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None, device
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone, device or str(state.device)
