"""Which attribution method to open on for a scorer: the one the preference-quality benchmark ranks best on
planted cues (docs/EVALUATION.md, "Proof where the answer is known: planted cues"). (Not `ranking.py`: a
submodule of that name would replace `tiviz.evaluation.ranking`, the faithfulness ranking function.)

The ranking is a JSON file shipped in the package, `tiviz/evaluation/quality_ranking.json`, written by
`benchmarks/preference_quality.py --write-ranking` through `write_ranking`. Nothing here measures anything: a
missing file (or a scorer kind it does not rank) means no ranking, and `default_method` falls back to a fixed
order with `gradient` first (the only method better than random on every score of the sample test split,
docs/EVALUATION.md) and says so.

Schema (every field required; unknown fields are ignored)::

    {
      "source": "benchmarks/preference_quality.py --write-ranking",    # the command that wrote it
      "by_scorer_kind": {                                               # likelihood, implicit_reward, reward_model
        "likelihood": [                                                 # best first
          {"method": "gradient", "auprc": 0.61, "auprc_random": 0.30, "data": "planted", "n_pairs": 40},
          ...
        ],
        "implicit_reward": [...],
        "reward_model": [...]
      }
    }

`auprc` is a method's mean average precision at finding the planted cue's tokens, `auprc_random` the same for a
random ranking of the same tokens (`tiviz.evaluation.plausibility`); the methods are ranked by
`auprc / auprc_random` (how many times better than chance), largest first.

    best_method("likelihood", ["gradient", "attention", "tidpo"])
    # ("gradient", "planted-cue AUPRC 0.61 vs 0.30 random (2.0x), best of 7 methods ranked for likelihood
    #   scorers on 40 pairs (measured by benchmarks/preference_quality.py --write-ranking; docs/EVALUATION.md)")
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tiviz.errors import DataError

RANKING_FILE = Path(__file__).with_name("quality_ranking.json")
SOURCE = "benchmarks/preference_quality.py --write-ranking"
SCORER_KINDS = {"base": "likelihood", "dpo": "implicit_reward", "rm": "reward_model"}
"""The benchmark's scorer names -> the scorer kinds of `tiviz.scoring` (and of the app's model picker)."""
RANKED_DATA = "planted"  # only planted cues have known deciding tokens
FALLBACK_ORDER = ("gradient", "grad_x_input", "integrated_gradients", "occlusion", "token_score",
                  "implicit_reward", "attention")
"""The order to open on when nothing is ranked: gradient first (docs/EVALUATION.md, sample test split), then
methods not listed here, and `tidpo` (TI-DPO's training weights, below random there) last."""
ENTRY_FIELDS = ("method", "auprc", "auprc_random", "data", "n_pairs")


def lift(entry: Mapping[str, Any]) -> float:
    """How many times better than a random ranking a method finds the cue: auprc / auprc_random."""
    return float(entry["auprc"]) / float(entry["auprc_random"])


def ranking_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The benchmark's result rows (data, scorer, method, auprc, auprc_random, n_pairs) as the ranking per scorer
    kind: planted rows only, skipped or non-finite ones left out, best `lift` first.

    Raises:
        DataError: a row's scorer is not one of base, dpo, rm.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        if row.get("data") != RANKED_DATA or row.get("skipped"):
            continue
        scorer = row.get("scorer")
        if scorer not in SCORER_KINDS:
            raise DataError(f"unknown scorer {scorer!r}", source="benchmark rows", line=i, field="scorer",
                            fix=f"use one of {', '.join(SCORER_KINDS)}", unit="row")
        auprc, rand = float(row["auprc"]), float(row["auprc_random"])
        if not (math.isfinite(auprc) and math.isfinite(rand) and rand > 0):
            continue
        out.setdefault(SCORER_KINDS[scorer], []).append(
            {"method": str(row["method"]), "auprc": auprc, "auprc_random": rand, "data": RANKED_DATA,
             "n_pairs": int(row["n_pairs"])})
    return {kind: sorted(entries, key=lift, reverse=True) for kind, entries in out.items()}


def write_ranking(rows: Iterable[Mapping[str, Any]], path: str | Path = RANKING_FILE, *,
                  source: str = SOURCE) -> Path:
    """Write the ranking file (schema in the module docstring) from the benchmark's result rows; returns its path.
    `source` is the command that measured them."""
    path = Path(path)
    rec = {"source": source, "by_scorer_kind": ranking_from_rows(rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_ranking(path: str | Path | None = None) -> dict[str, Any] | None:
    """The ranking file as written by `write_ranking`, checked; None when there is none.

    Raises:
        DataError: a file that is not valid JSON or breaks the schema, naming the file and the field.
    """
    path = Path(path) if path is not None else RANKING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"not a readable JSON file ({err})", source=str(path),
                        fix=f"write it again with {SOURCE}") from None
    fix = f"write it again with {SOURCE}"
    if not isinstance(data, dict) or not isinstance(data.get("by_scorer_kind"), dict):
        raise DataError("needs an object with a 'by_scorer_kind' object", source=str(path), field="by_scorer_kind",
                        fix=fix)
    for kind, entries in data["by_scorer_kind"].items():
        if not isinstance(entries, list):
            raise DataError("must be a list of methods, best first", source=str(path),
                            field=f"by_scorer_kind.{kind}", fix=fix)
        for i, entry in enumerate(entries):
            field = f"by_scorer_kind.{kind}[{i}]"
            if not isinstance(entry, dict) or any(k not in entry for k in ENTRY_FIELDS):
                raise DataError(f"each entry needs {', '.join(ENTRY_FIELDS)}", source=str(path), field=field,
                                fix=fix)
            if not isinstance(entry["method"], str) or not all(
                    isinstance(entry[k], int | float) and not isinstance(entry[k], bool)
                    for k in ("auprc", "auprc_random", "n_pairs")) or not entry["auprc_random"] > 0:
                raise DataError("method must be a string, auprc, auprc_random and n_pairs numbers, "
                                "auprc_random > 0", source=str(path), field=field, fix=fix)
    return data


def best_method(scorer_kind: str, available: Sequence[str], *, path: str | Path | None = None
                ) -> tuple[str, str] | None:
    """(method, one-line reason naming the figure) of the best-ranked method for `scorer_kind` among `available`;
    None when the ranking file is missing, does not rank this kind, or ranks none of `available`.

    Raises:
        DataError: a ranking file that breaks the schema (`read_ranking`).
    """
    data = read_ranking(path)
    if data is None:
        return None
    entries = data["by_scorer_kind"].get(scorer_kind) or []
    ranked = sorted(entries, key=lift, reverse=True)  # the file is written best first; do not rely on it
    for rank, entry in enumerate(ranked, start=1):
        if entry["method"] in available:
            reason = (f"planted-cue AUPRC {float(entry['auprc']):.2f} vs {float(entry['auprc_random']):.2f} random "
                      f"({lift(entry):.1f}x), {_ordinal(rank)} of {len(ranked)} methods ranked for "
                      f"{scorer_kind.replace('_', ' ')} scorers on {int(entry['n_pairs'])} pairs (measured by "
                      f"{data.get('source') or SOURCE}; docs/EVALUATION.md)")
            return str(entry["method"]), reason
    return None


def default_method(scorer_kind: str, available: Sequence[str], *, path: str | Path | None = None
                   ) -> tuple[str, str]:
    """The method to open on for `scorer_kind` and why: `best_method`, else the first of `available` in
    `FALLBACK_ORDER` (then the others in `available`'s order, tidpo last), with a reason that says no ranking was used (and, for a
    ranking file that breaks the schema, what is wrong with it). Never fails on the file: a default must exist.

    Raises:
        ValueError: `available` is empty.
    """
    if not available:
        raise ValueError("default_method: no methods available")
    why = f"no quality ranking for {scorer_kind.replace('_', ' ')} scorers ({SOURCE} writes it)"
    try:
        best = best_method(scorer_kind, available, path=path)
    except DataError as err:
        best, why = None, f"the quality ranking is unreadable ({err})"
    if best is not None:
        return best
    order = ([m for m in FALLBACK_ORDER if m in available]
             + [m for m in available if m not in FALLBACK_ORDER and m != "tidpo"] + [m for m in available if m == "tidpo"])
    return order[0], f"{why}: {order[0]}, the first of a fixed order with gradient first"


def _ordinal(n: int) -> str:
    return "best" if n == 1 else f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'}"
