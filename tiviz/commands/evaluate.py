"""`tiviz evaluate`: attribute pairs, then score each method's plausibility, faithfulness and agreement against
a random ranking of the same tokens; print the table, write CSV/JSON with --out."""

from __future__ import annotations

import argparse
import time

from tiviz.commands import add_cache_flags, add_dataclass_flags, cache_arg, check_limit, dataclass_overrides
from tiviz.config import AttributionConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score attribution methods against random rankings",
                       description="Plausibility (overlap with the annotated rationales: AUPRC, hit@k), "
                       "faithfulness (deletion/insertion AOPC, comprehensiveness, sufficiency) and agreement "
                       "(Spearman, Kendall) per method, each beside a random ranking of the same tokens. "
                       "Definitions: docs/EVALUATION.md.")
    p.add_argument("--pairs", required=True, help="preference pairs with rationales: .jsonl, .json, .csv, .parquet")
    p.add_argument("--methods", default="gradient,integrated_gradients,attention,tidpo",
                   help="comma-separated method ids, or 'all' (see `tiviz methods`)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="hub id, local folder, .gguf file, or the offline default smollm2-135m-instruct")
    p.add_argument("--ref-model", default=None, help="reference model (for implicit_reward and the reward target)")
    p.add_argument("--table", default=None, help="reuse attributions already computed for these pairs (a table "
                   "written by `tiviz attribute`) instead of attributing again")
    p.add_argument("--out", default=None, help="folder for scores.csv, scores.json, per_sequence.csv, table.parquet")
    p.add_argument("--report", action="store_true", help="also write report.html (with the scores) into --out")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--faithfulness-target", choices=("logprob", "max_logit", "method"), default="logprob",
                   help="what the perturbations measure: the response log-prob (default), the max final logit, "
                   "or each method's own target")
    p.add_argument("--removal", choices=("pad", "unk", "zero", "mean"), default="pad",
                   help="embedding that replaces a removed token (default: the pad token's)")
    p.add_argument("--rank-by", choices=("weight", "score"), default="weight",
                   help="rank tokens by weight = |score| (default) or by the signed score")
    p.add_argument("--n-random", type=int, default=5, help="random permutations per sequence (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rankings (default: 0)")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the perturbation forwards")
    p.add_argument("--randomisation-check", action="store_true",
                   help="also attribute the pairs with a copy of the model whose weight matrices are re-drawn at "
                   "random (seed --seed) and report each method's Spearman with its own randomised attributions "
                   "(Adebayo et al. 2018; docs/EVALUATION.md)")
    p.add_argument("--perturb-batch-size", type=int, default=32, help="perturbed sequences per forward")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    add_cache_flags(p)
    add_dataclass_flags(p, AttributionConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tiviz.data import file_sha256, load_pairs
    from tiviz.evaluation import evaluate
    from tiviz.models import load_model
    from tiviz.table import read_table

    cfg = AttributionConfig(**dataclass_overrides(args, AttributionConfig))
    check_limit(args.limit)
    all_pairs = load_pairs(args.pairs)
    pairs = all_pairs[: args.limit] if args.limit is not None else all_pairs
    table = None
    if args.table:
        full = read_table(args.table)
        table = full[full["pair_id"].isin({p.id for p in pairs})].reset_index(drop=True)
        table.attrs = dict(full.attrs)
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    ref = None
    if args.ref_model:
        ref = load_model(args.ref_model, device=args.device, dtype=args.dtype,
                         trust_remote_code=args.trust_remote_code).model
    t_load = time.perf_counter() - t0
    # Each bar starts when its stage starts (not at its first report), so its rate and ETA are right.
    bars: dict[str, tqdm] = {}
    if table is None:
        bars["attribute"] = tqdm(total=len(pairs), unit="pair", mininterval=0, desc="attributing")
    perturb_start = {"t": time.time()}  # tqdm's clock

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "attribute" and done >= total:
            perturb_start["t"] = time.time()
        if stage not in bars:
            bars[stage] = tqdm(total=total, unit="sequence", mininterval=0, desc="perturbing")
            bars[stage].start_t = bars[stage].last_print_t = perturb_start["t"]  # it began when attribution ended
        bars[stage].update(done - bars[stage].n)
        if done >= total:
            bars[stage].close()

    ev = evaluate(loaded, pairs, args.methods, table=table, ref_model=ref, config=cfg,
                  data_info={"file": str(args.pairs), "sha256": file_sha256(args.pairs), "n_pairs": len(pairs)},
                  target=args.faithfulness_target, baseline=args.removal, rank_by=args.rank_by,
                  n_random=args.n_random, seed=args.seed, faithfulness=not args.no_faithfulness,
                  batch_size=args.perturb_batch_size, progress=progress,
                  cache=cache_arg(args))
    for bar in bars.values():
        bar.close()
    print(ev.to_text())
    s = ev.settings
    work = s["attribution_seconds"] + s["faithfulness_seconds"]
    n = max(s["n_pairs"], 1)
    print(f"\n{s['n_pairs']} pairs ({s['n_sequences']} sequences): model load {t_load:.1f} s, attribution "
          f"{s['attribution_seconds']:.1f} s, perturbation {s['faithfulness_seconds']:.1f} s; "
          f"{work / n:.1f} s per pair")
    if len(pairs) < len(all_pairs):
        print(f"projected for all {len(all_pairs)} pairs of {args.pairs}: about {work / n * len(all_pairs) / 60:.1f} "
              "min (same settings, this machine)")
    check = None
    if args.randomisation_check:
        from tiviz.evaluation.sanity import randomisation_check

        check = randomisation_check(loaded, pairs, table=ev.table, seed=args.seed, value=args.rank_by,
                                    ref_model=ref, config=cfg)
        print("\nmodel-randomisation check\n" + check.to_text())
    if args.out:
        paths = ev.write(args.out)
        if check is not None:
            paths += check.write(args.out)
        if args.report:
            from pathlib import Path

            from tiviz.report import write_report

            paths.append(write_report(ev.table, Path(args.out) / "report.html", scores=ev))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0

