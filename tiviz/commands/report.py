"""`tiviz report`: the self-contained HTML report of a tidy table (optionally with quality scores and a second
table to compare), or an export of a selection of it as Parquet, CSV or JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an offline HTML report, or export a selection of a table",
                       description="One self-contained HTML file (plots embedded, opens offline): provenance, "
                       "distribution plots, quality scores, before/after, and every pair's shaded text. With "
                       "--format parquet|csv|json, export the selected rows instead.")
    p.add_argument("--table", required=True, help="tidy table written by `tiviz attribute` (.parquet/.csv/.json)")
    p.add_argument("--after", default=None, help="a second table of the same pairs (e.g. after training): adds the "
                   "before/after section")
    p.add_argument("--scores", default=None, help="quality scores: the folder `tiviz evaluate --out` wrote, or its "
                   "scores.json / scores.csv")
    p.add_argument("--out", default="report.html", help="output file (default: report.html)")
    p.add_argument("--format", choices=("html", "parquet", "csv", "json"), default=None,
                   help="output format (default: from the --out suffix)")
    p.add_argument("--pairs-filter", default=None, help="pair ids or shell patterns, comma-separated (harm-*,fact-001)")
    p.add_argument("--methods", default=None, help="comma-separated methods to keep (default: all)")
    p.add_argument("--max-pairs", type=int, default=20, help="pairs whose text the report shows (default: 20)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--aggregate", choices=("token", "word"), default="token",
                   help="report the table per token (default) or per word (subword pieces merged)")
    p.add_argument("--figures", default=None, metavar="DIR", help="instead of the HTML, write every figure of the "
                   "report as an image into DIR (needs kaleido and a Chrome/Chromium)")
    p.add_argument("--figure-format", choices=("png", "svg"), default="png", help="image format for --figures")
    p.add_argument("--labels", default="before,after", help="names of --table and --after (default: before,after)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tiviz.errors import ConfigError
    from tiviz.report import export_table, write_report
    from tiviz.table import read_table

    out = Path(args.out)
    fmt = args.format or (out.suffix.lower().lstrip(".") if out.suffix else "html")
    if fmt == "htm":
        fmt = "html"
    if fmt not in ("html", "parquet", "csv", "json"):
        raise ConfigError("format", fmt, "html, parquet, csv, json (or an --out with one of those suffixes)")
    table = read_table(args.table)
    if args.aggregate == "word":
        from tiviz.aggregate import aggregate_words

        table = aggregate_words(table)
    if fmt != "html":
        if args.after or args.scores:
            raise ConfigError("format", fmt, "html when --after or --scores is given (exports hold one table)")
        path = export_table(table, out, fmt, pairs=args.pairs_filter, methods=args.methods)
        print(f"wrote {path}")
        return 0
    after = read_table(args.after) if args.after else None
    if after is not None and args.aggregate == "word":
        after = aggregate_words(after)
    scores = None
    if args.scores:
        from tiviz.evaluation import read_scores

        scores = read_scores(args.scores)
    labels = tuple(x.strip() for x in args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        raise ConfigError("labels", args.labels, "two names separated by a comma")
    if args.figures:
        from tiviz.report import export_figures

        paths = export_figures(table, args.figures, args.figure_format, after=after, pairs=args.pairs_filter,
                               methods=args.methods, scores=scores, labels=(labels[0], labels[1]))
        print(f"wrote {len(paths)} figures to {args.figures} ({args.figure_format})")
        return 0
    path = write_report(table, out, after=after, pairs=args.pairs_filter, methods=args.methods, scores=scores,
                        title=args.title, max_pairs=args.max_pairs, labels=(labels[0], labels[1]))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0
