"""`tiviz attribute`: attribute every pair of a dataset with the chosen methods, write one tidy table."""

from __future__ import annotations

import argparse
import time

from tiviz.commands import add_dataclass_flags, dataclass_overrides
from tiviz.config import AttributionConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attribute", help="attribute preference pairs, write a tidy table",
                       description="Attribute every pair (both sides) with each method; write Parquet/CSV/JSON.")
    p.add_argument("--pairs", required=True, help="preference pairs: .jsonl, .json, .csv or .parquet")
    p.add_argument("--methods", default="gradient,integrated_gradients,attention,tidpo",
                   help="comma-separated method ids, or 'all' (see `tiviz methods`)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="hub id, local folder, .gguf file, or the offline default smollm2-135m-instruct")
    p.add_argument("--ref-model", default=None, help="reference model (for implicit_reward and the reward target)")
    p.add_argument("--out", default="results.parquet", help="output table (.parquet, .csv or .json)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    p.add_argument("--limit", type=int, default=None, help="attribute only the first N pairs")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad rows in the pairs file: stop (raise) or skip them with a warning")
    add_dataclass_flags(p, AttributionConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tiviz.attribution import attribute, resolve_methods
    from tiviz.data import file_sha256, load_pairs
    from tiviz.models import load_model
    from tiviz.table import write_table

    cfg = AttributionConfig(**dataclass_overrides(args, AttributionConfig))
    methods = resolve_methods(args.methods)
    pairs = load_pairs(args.pairs, on_error=args.on_error)
    if args.limit:
        pairs = pairs[: args.limit]
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    ref = None
    if args.ref_model:
        ref = load_model(args.ref_model, device=args.device, dtype=args.dtype,
                         trust_remote_code=args.trust_remote_code).model
    bar = tqdm(total=len(pairs), unit="pair", desc="attributing")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    df = attribute(loaded, pairs, methods, ref_model=ref, config=cfg, progress=progress,
                   data_info={"file": str(args.pairs), "sha256": file_sha256(args.pairs), "n_pairs": len(pairs)})
    bar.close()
    out = write_table(df, args.out)
    elapsed = time.perf_counter() - t0
    print(f"wrote {len(df)} rows ({len(pairs)} pairs x 2 sides x {len(methods)} methods) to {out} "
          f"in {elapsed:.1f} s ({elapsed / max(len(pairs), 1):.2f} s/pair)")
    return 0
