"""`tiviz compare`: what changed between two tables of the same pairs (per token, per dataset, preference
accuracy and margin); or, given one table, how far its methods agree."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="before vs after, or method agreement in one table",
                       description="With --before and --after: per-token weight and implicit-reward changes, weight "
                       "distribution changes (entropy, top-10 %% share, KS test), preference accuracy and mean "
                       "margin. With --before alone: Spearman and Kendall agreement between its methods.")
    p.add_argument("--before", required=True, help="tidy table (e.g. attributions of the reference model), or a "
                   "run folder written with tiviz.integrations.trl.AttributionCallback (its first step), a "
                   "checkpoint-N folder of one, or a model folder (attributed with --pairs)")
    p.add_argument("--after", default=None, help="tidy table of the same pairs (e.g. after TI-DPO training), or a "
                   "folder as for --before (a run folder: its last step)")
    p.add_argument("--pairs", default=None, help="pairs to attribute a model folder with (TRL checkpoint, merged "
                   "LoRA) given as --before/--after")
    p.add_argument("--methods", default=None, help="comma-separated methods to compare (default: all shared)")
    p.add_argument("--out", default=None, help="folder for tokens.parquet, distributions.csv, margins.csv, "
                   "summary.json (agreement.csv with one table); with --html also compare.html")
    p.add_argument("--html", action="store_true", help="also write the before/after report as --out/compare.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tiviz.compare import agreement_summary, compare_tables, method_agreement
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    before = _table(args.before, "first", args.pairs, methods)
    if args.after is None:
        per = method_agreement(before, methods)
        summary = agreement_summary(per)
        print("method agreement over response tokens (mean over (pair, side); NaN where a method is constant)")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            per.to_csv(out / "agreement_per_sequence.csv", index=False)
            summary.to_csv(out / "agreement.csv", index=False)
            print(f"wrote {out / 'agreement.csv'}, {out / 'agreement_per_sequence.csv'}")
        return 0
    after = _table(args.after, "last", args.pairs, methods)
    cmp = compare_tables(before, after, methods)
    print(cmp.summary_text())
    if args.out:
        paths = cmp.write(args.out)
        if args.html:
            from tiviz.report import write_report

            paths.append(write_report(before, Path(args.out) / "compare.html", after=after, methods=methods))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _table(path: str, at: str, pairs: str | None, methods: list[str] | None) -> Any:
    """A table file as it is; a run, checkpoint or model folder through `tiviz.integrations.trl.run_table`."""
    if Path(path).is_dir():
        from tiviz.integrations.trl import run_table

        return run_table(path, "first" if at == "first" else "last", pairs=pairs, methods=methods)
    from tiviz.table import read_table

    return read_table(path)
