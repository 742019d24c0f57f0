"""`evaluate()`: attribute the pairs, then score every method for plausibility (rationale overlap),
faithfulness (perturbation of the response) and agreement (rank correlation between methods), each beside a
random ranking of the same tokens. docs/EVALUATION.md defines every score."""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tiviz.errors import ConfigError, TableError
from tiviz.evaluation.faithfulness import (
    CURVE_FRACTIONS,
    ERASER_FRACTIONS,
    add_log_ratio,
    faithfulness_curves,
    margin_scores,
    ranking,
    reference_embedding,
    summarise,
)
from tiviz.evaluation.plausibility import (
    average_precision,
    expected_random_ap,
    expected_random_hit,
    hit_at_k,
    rationale_labels,
)
from tiviz.table import PROVENANCE_KEY

log = logging.getLogger(__name__)

Target = Literal["logprob", "max_logit", "method"]
StageProgress = Callable[[str, int, int], None]
FAITHFULNESS = ("aopc_deletion", "aopc_insertion", "comprehensiveness", "sufficiency")
PLAUSIBILITY = ("auprc", "hit_at_k")
SCORES = (*PLAUSIBILITY, *FAITHFULNESS)
SCORE_COLUMNS = ["method", *[c for s in SCORES for c in (s, f"{s}_random")], "positive_rate", "spearman_mean",
                 "kendall_mean", "target", "n_sequences", "n_rationale_sequences"]
HIGHER_IS_BETTER = {s: s != "sufficiency" for s in SCORES}
# Pair-level faithfulness (docs/EVALUATION.md): per side of the pair, how the margin moves; higher is better.
MARGIN_SCORES = ("margin_deletion", "margin_insertion")
MARGIN_COLUMNS = [f"{s}_{side}{r}" for s in MARGIN_SCORES for side in ("chosen", "rejected") for r in ("", "_random")]
SCORE_COLUMNS += MARGIN_COLUMNS
# The one label of each score, for tables, figures and reports (↓: lower is better). docs/EVALUATION.md.
SCORE_LABELS = {"auprc": "AUPRC", "hit_at_k": "hit@k", "aopc_deletion": "AOPC deletion",
                "aopc_insertion": "AOPC insertion", "comprehensiveness": "comprehensiveness",
                "sufficiency": "sufficiency ↓"}


@dataclass
class TableSequence:
    """One (pair, side) of a tidy table, laid out for scoring: the full token ids and, over the response tokens,
    their character spans and each method's values."""

    pair_id: str
    side: str
    input_ids: np.ndarray  # (L,)
    response_start: int
    char_spans: np.ndarray  # (n, 2) into the response text
    values: dict[str, np.ndarray]  # method -> (n,)

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start


def table_sequences(table: pd.DataFrame, methods: Sequence[str], value: Literal["weight", "score"] = "weight"
                    ) -> list[TableSequence]:
    """The table's sequences in table order; raises `TableError` if a sequence's positions are not 0..L-1 or its
    response is not one contiguous run at the end (faithfulness needs the whole sequence)."""
    first = table[table["method"] == methods[0]].sort_values(["pair_id", "side", "position"], kind="stable")
    resp = table[table["in_response"] & table["method"].isin(methods)].sort_values(
        ["pair_id", "side", "method", "position"], kind="stable")
    vals = {k: g[value].to_numpy(dtype=np.float64) for k, g in resp.groupby(["pair_id", "side", "method"], sort=False)}
    order = list(dict.fromkeys(zip(table["pair_id"], table["side"], strict=True)))
    groups = {k: g for k, g in first.groupby(["pair_id", "side"], sort=False)}
    out = []
    for pid, side in order:
        g = groups.get((pid, side))
        if g is None:
            continue
        pos = g["position"].to_numpy()
        if not np.array_equal(pos, np.arange(len(pos))):
            raise TableError(f"pair {pid!r} ({side}): positions are not 0..{len(pos) - 1}; faithfulness needs every "
                             "token of the sequence. Fix: use a table written by `tiviz attribute`, unfiltered")
        in_resp = g["in_response"].to_numpy(dtype=bool)
        start = int(np.argmax(in_resp)) if in_resp.any() else len(in_resp)
        if not in_resp[start:].all():
            raise TableError(f"pair {pid!r} ({side}): the response tokens are not one run at the end of the sequence")
        if start == len(in_resp):
            log.warning("pair %r (%s): no response token, left out of the evaluation", pid, side)
            continue
        spans = g[["char_start", "char_end"]].to_numpy(dtype=np.int64)[start:]
        out.append(TableSequence(str(pid), str(side), g["token_id"].to_numpy(dtype=np.int64), start, spans,
                                 {m: vals[(pid, side, m)] for m in methods if (pid, side, m) in vals}))
    return out


@dataclass
class Evaluation:
    """The scores (one row per method), the per-sequence scores they average, the mean deletion/insertion
    curves, the method agreement, the attribution table, and the settings and timings that made them."""

    scores: pd.DataFrame
    per_sequence: pd.DataFrame
    curves: pd.DataFrame
    agreement: pd.DataFrame
    table: pd.DataFrame | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        """The method x score table, each score followed by the random ranking's in parentheses."""
        return format_scores(self.scores)

    def write(self, folder: str | Path) -> list[Path]:
        """Write scores.csv, scores.json (scores, agreement, curves, settings), per_sequence.csv and, when held,
        the attribution table as table.parquet."""
        from tiviz.table import write_table

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "scores.csv", folder / "scores.json", folder / "per_sequence.csv"]
        self.scores.to_csv(paths[0], index=False)
        doc = {"scores": _records(self.scores), "agreement": _records(self.agreement),
               "curves": _records(self.curves), "settings": self.settings}
        paths[1].write_text(json.dumps(doc, indent=2, default=_json_default), encoding="utf-8")
        self.per_sequence.to_csv(paths[2], index=False)
        if self.table is not None:
            paths.append(write_table(self.table, folder / "table.parquet"))
        return paths


def read_scores(path: str | Path) -> Evaluation:
    """Read scores written by `Evaluation.write`: a folder, its scores.json, or a scores.csv."""
    path = Path(path)
    if path.is_dir():
        path = path / "scores.json" if (path / "scores.json").is_file() else path / "scores.csv"
    if not path.is_file():
        raise TableError(f"{path}: no scores found. Fix: pass the folder `tiviz evaluate --out` wrote")
    try:
        if path.suffix.lower() == ".csv":
            scores = pd.read_csv(path)
            return Evaluation(scores, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TableError(f"{path}: cannot read scores ({type(err).__name__}: {err})") from None
    if not isinstance(doc, dict) or "scores" not in doc:
        raise TableError(f"{path}: not a tiviz scores file (no 'scores'). Fix: use the scores.json tiviz wrote")
    return Evaluation(pd.DataFrame(doc["scores"]), pd.DataFrame(), pd.DataFrame(doc.get("curves", [])),
                      pd.DataFrame(doc.get("agreement", [])), settings=doc.get("settings", {}))


def evaluate(
    model: Any,
    pairs: Any,
    methods: str | Sequence[str] | None = None,
    *,
    tokenizer: Any | None = None,
    table: pd.DataFrame | None = None,
    ref_model: Any | None = None,
    config: Any | None = None,
    data_info: dict[str, Any] | None = None,
    target: Target = "logprob",
    baseline: Literal["pad", "unk", "zero", "mean"] = "pad",
    rank_by: Literal["weight", "score"] = "weight",
    n_random: int = 5,
    seed: int = 0,
    eraser_fractions: Sequence[float] = ERASER_FRACTIONS,
    curve_fractions: Sequence[float] = CURVE_FRACTIONS,
    faithfulness: bool = True,
    batch_size: int = 32,
    progress: StageProgress | None = None,
    **attribution_settings: Any,
) -> Evaluation:
    """Score attribution methods against random rankings of the same tokens.

    Args:
        model: a `LoadedModel`, or a causal LM with `tokenizer`.
        pairs: `PreferencePair`s or anything `load_pairs` reads; their rationales drive plausibility.
        methods: method ids (default: the attribution defaults); ignored when `table` is given.
        table: attributions already computed for these pairs (then only the perturbation forwards run).
        ref_model, config, data_info: passed to `attribute` (reference model, `AttributionConfig`, data provenance).
        target: what the perturbations measure: "logprob" (default, log pi(response | prompt)), "max_logit",
            or "method" (each method's own target from the table's provenance).
        baseline: embedding that replaces a removed token: "pad" (default), "unk", "zero" or "mean".
        rank_by: "weight" (|score|, default: what the heatmaps shade) or "score" (signed).
        n_random: random permutations per sequence for the faithfulness baseline (seeded by `seed`).
        faithfulness: False skips the perturbation forwards (plausibility and agreement only).
        batch_size: perturbed sequences per forward.
        progress: called as progress(stage, done, total), stage "attribute" or "perturb".
        attribution_settings: `AttributionConfig` fields for `attribute` (e.g. n_steps=8).
    """
    from tiviz.attribution import attribute
    from tiviz.compare import agreement_summary, method_agreement
    from tiviz.data import PreferencePair, load_pairs
    from tiviz.models import LoadedModel

    if target not in ("logprob", "max_logit", "method"):
        raise ConfigError("target", target, "'logprob', 'max_logit', 'method'")
    if rank_by not in ("weight", "score"):
        raise ConfigError("rank_by", rank_by, "'weight', 'score'")
    if not isinstance(n_random, int) or n_random < 1:
        raise ConfigError("n_random", n_random, "an integer >= 1")
    if not isinstance(pairs, list | tuple) or (pairs and not isinstance(pairs[0], PreferencePair)):
        pairs = load_pairs(pairs)
    loaded = isinstance(model, LoadedModel)
    lm = model.model if loaded else model
    tokenizer = model.tokenizer if loaded and tokenizer is None else tokenizer
    t0 = time.perf_counter()
    if table is None:
        table = attribute(model, pairs, methods, tokenizer=None if loaded else tokenizer,
                          ref_model=ref_model, config=config, data_info=data_info,
                          progress=(lambda d, t: progress("attribute", d, t)) if progress else None,
                          **attribution_settings)
    t_attr = time.perf_counter() - t0
    names = list(dict.fromkeys(table["method"]))
    seqs = table_sequences(table, names, rank_by)
    prov = dict(table.attrs.get(PROVENANCE_KEY, {}) or {})
    by_id = {p.id: p for p in pairs}
    ref_emb = reference_embedding(lm, tokenizer, baseline) if faithfulness else None
    # a reward or margin method with a reference explains beta (log pi - log pi_ref): perturb pi_ref too
    reference = None
    if faithfulness and ref_model is not None and target == "method" and any(
            (prov.get("method_targets") or {}).get(m) in ("reward", "margin") for m in names):
        ref_lm = ref_model.model if isinstance(ref_model, LoadedModel) else ref_model
        reference = (ref_lm, reference_embedding(ref_lm, tokenizer, baseline))
    elif faithfulness and target == "method" and prov.get("reference_model") and any(
            (prov.get("method_targets") or {}).get(m) in ("reward", "margin") for m in names):
        log.warning("evaluate: no ref_model given, so the reward methods' faithfulness holds log pi_ref fixed "
                    "(beta x logprob); pass the reference model to perturb it too")
    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    for i, seq in enumerate(seqs):
        pair = by_id.get(seq.pair_id)
        base = {"pair_id": seq.pair_id, "side": seq.side, "n_tokens": seq.n_response}
        plaus = _plausibility(seq, pair, names)
        faith: dict[str, dict[str, float]] = {m: {} for m in names}
        if faithfulness:
            faith = _faithfulness(lm, seq, names, ref_emb, target, prov, n_random, seed, eraser_fractions,
                                  curve_fractions, batch_size, curve_rows, reference)
        for m in names:
            rows.append({**base, "method": m, **plaus[m], **faith[m]})
        if progress:
            progress("perturb", i + 1, len(seqs))
    t_faith = time.perf_counter() - t1
    per_seq = pd.DataFrame(rows)
    per_agree = method_agreement(table, names, value=rank_by)
    agree = agreement_summary(per_agree)
    scores = _aggregate(per_seq, agree, names, target, prov)
    curves = (pd.DataFrame(curve_rows).groupby(["method", "ranking", "kind", "fraction"], sort=False)["change"]
              .mean().reset_index() if curve_rows else pd.DataFrame(
                  columns=["method", "ranking", "kind", "fraction", "change"]))
    settings = {
        "target": target, "baseline": baseline, "rank_by": rank_by, "n_random": n_random, "seed": seed,
        "eraser_fractions": list(eraser_fractions), "curve_fractions": list(curve_fractions),
        "faithfulness": faithfulness, "n_pairs": len({s.pair_id for s in seqs}), "n_sequences": len(seqs),
        "attribution_seconds": round(t_attr, 2), "faithfulness_seconds": round(t_faith, 2),
        "provenance": prov,
    }
    return Evaluation(scores, per_seq, curves, agree, table, settings)


def _plausibility(seq: TableSequence, pair: Any, names: list[str]) -> dict[str, dict[str, float]]:
    """AP and hit@k per method on one sequence, with their random-ranking expectations (NaN without rationale)."""
    empty = {"n_rationale": 0, "auprc": math.nan, "auprc_random": math.nan, "hit_at_k": math.nan,
             "hit_at_k_random": math.nan}
    if pair is None:
        return {m: dict(empty) for m in names}
    rationales = pair.rationale_chosen if seq.side == "chosen" else pair.rationale_rejected
    labels = rationale_labels(seq.char_spans, pair.response_text(seq.side), rationales)
    n, p = len(labels), int(labels.sum())
    if not rationales or p == 0 or p == n:
        return {m: {**empty, "n_rationale": p} for m in names}
    out = {}
    for m in names:
        v = seq.values.get(m)
        if v is None:
            out[m] = {**empty, "n_rationale": p}
            continue
        out[m] = {"n_rationale": p, "auprc": average_precision(v, labels), "auprc_random": expected_random_ap(n, p),
                  "hit_at_k": hit_at_k(v, labels), "hit_at_k_random": expected_random_hit(n, p)}
    return out


def _faithfulness(model: Any, seq: TableSequence, names: list[str], ref_emb: Any, target: str,
                  prov: dict[str, Any], n_random: int, seed: int, eraser: Sequence[float], curve: Sequence[float],
                  batch_size: int, curve_rows: list[dict[str, Any]], reference: tuple[Any, Any] | None = None
                  ) -> dict[str, dict[str, float]]:
    """The faithfulness scores per method on one sequence, and the same for random rankings. `reference`:
    (pi_ref, its removal embedding), perturbed alike for methods that explain the implicit reward."""
    n = seq.n_response
    key = [seed, zlib.crc32(seq.pair_id.encode("utf-8")), 0 if seq.side == "chosen" else 1]
    rng_random = np.random.default_rng([*key, 0])
    orders = {f"random{r}": rng_random.permutation(n) for r in range(n_random)}
    for m in names:
        if m in seq.values:  # ties broken by a stream of the method's own, whatever else is evaluated
            orders[m] = ranking(seq.values[m], np.random.default_rng([*key, 1, zlib.crc32(m.encode("utf-8"))]))
    fractions = tuple(sorted(set(eraser) | set(curve)))
    curves = faithfulness_curves(model, seq.input_ids, seq.response_start, orders, ref_emb, fractions=fractions,
                                 batch_size=batch_size)
    if reference is not None:
        add_log_ratio(curves, faithfulness_curves(reference[0], seq.input_ids, seq.response_start, orders,
                                                  reference[1], fractions=fractions, batch_size=batch_size))
    out: dict[str, dict[str, float]] = {}
    for m in names:
        if m not in orders:
            out[m] = {}
            continue
        base, scale = _method_target(m, target, prov, seq.side, "log_ratio" in curves.full)
        own = summarise(curves, m, base, curve, eraser)
        rand = [summarise(curves, f"random{r}", base, curve, eraser) for r in range(n_random)]
        out[m] = {"f_full": scale * curves.full[base], "f_empty": scale * curves.empty[base]}
        for s in FAITHFULNESS:
            out[m][s] = scale * own[s]
            out[m][f"{s}_random"] = scale * float(np.mean([r[s] for r in rand]))
        own_margin = margin_scores(curves, m, seq.side, base, abs(scale), curve)
        rand_margin = [margin_scores(curves, f"random{r}", seq.side, base, abs(scale), curve) for r in range(n_random)]
        for s in MARGIN_SCORES:
            out[m][s] = own_margin[s]
            out[m][f"{s}_random"] = float(np.mean([r[s] for r in rand_margin]))
        for ranking_name, names_r in (("method", [m]), ("random", [f"random{r}" for r in range(n_random)])):
            for kind in ("deletion", "insertion"):
                for j, q in enumerate(curves.fractions):
                    if not any(abs(q - c) < 1e-9 for c in curve):
                        continue
                    vals = [curves.deletion[r][base][j] for r in names_r] if kind == "deletion" else \
                        [curves.insertion[r][base][j] for r in names_r]
                    ref = curves.full[base] if kind == "deletion" else curves.empty[base]
                    change = ref - np.mean(vals) if kind == "deletion" else np.mean(vals) - ref
                    curve_rows.append({"method": m, "ranking": ranking_name, "kind": kind, "fraction": float(q),
                                       "change": scale * float(change)})
    return out


def _method_target(method: str, target: str, prov: dict[str, Any], side: str,
                   log_ratio: bool = False) -> tuple[str, float]:
    """(base target, scale): the measured target is scale x base.

    reward = beta (log pi - log pi_ref): beta x the "log_ratio" curves when the reference was perturbed too
    (`log_ratio`), else beta x logprob (pi_ref held fixed); margin is the reward (or the logprob, with no
    reference model) signed +1 for chosen, -1 for rejected.
    """
    if target != "method":
        return target, 1.0
    t = (prov.get("method_targets") or {}).get(method)
    beta = float((prov.get("settings") or {}).get("beta", 0.1))
    reward_base = "log_ratio" if log_ratio else "logprob"
    if t == "max_logit":
        return "max_logit", 1.0
    if t == "reward":
        return reward_base, beta
    if t == "margin":
        if not prov.get("reference_model"):
            return "logprob", 1.0 if side == "chosen" else -1.0
        return reward_base, (1.0 if side == "chosen" else -1.0) * beta
    return "logprob", 1.0


def _aggregate(per_seq: pd.DataFrame, agree: pd.DataFrame, names: list[str], target: str,
               prov: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for m in names:
        g = per_seq[per_seq["method"] == m]
        row: dict[str, Any] = {"method": m}
        for s in SCORES:
            for c in (s, f"{s}_random"):
                row[c] = float(g[c].mean()) if c in g and g[c].notna().any() else math.nan
        rat = g[g["auprc"].notna()] if "auprc" in g else g.iloc[:0]
        row["positive_rate"] = float((rat["n_rationale"] / rat["n_tokens"]).mean()) if len(rat) else math.nan
        mine = agree[(agree["method_a"] == m) | (agree["method_b"] == m)] if len(agree) else agree
        row["spearman_mean"] = float(mine["spearman"].mean()) if len(mine) else math.nan
        row["kendall_mean"] = float(mine["kendall"].mean()) if len(mine) else math.nan
        row["target"] = ((prov.get("method_targets") or {}).get(m) or "logprob") if target == "method" else target
        row["n_sequences"] = int(g["aopc_deletion"].notna().sum()) if "aopc_deletion" in g else 0
        row["n_rationale_sequences"] = len(rat)
        for s in MARGIN_SCORES:  # e.g. margin_deletion_rejected: the mean over the rejected sequences
            for side in ("chosen", "rejected"):
                for r in ("", "_random"):
                    vals = g.loc[g["side"] == side, f"{s}{r}"] if f"{s}{r}" in g else pd.Series(dtype=float)
                    row[f"{s}_{side}{r}"] = float(vals.mean()) if vals.notna().any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def format_scores(scores: pd.DataFrame) -> str:
    """Plain-text table: one row per method, each score as 'value (random)'."""
    heads = list(SCORE_LABELS.items())
    width = max([len("method"), *[len(str(m)) for m in scores["method"]]]) + 2
    cells = [[f"{_num(r[s])} ({_num(r[f'{s}_random'])})" for s, _ in heads] for _, r in scores.iterrows()]
    cw = [max([len(h), *[len(c[i]) for c in cells]]) + 2 for i, (_, h) in enumerate(heads)]
    lines = ["method".ljust(width) + "".join(h.rjust(w) for (_, h), w in zip(heads, cw, strict=True)) +
             "  rho".rjust(8) + "n".rjust(6)]
    for (_, r), c in zip(scores.iterrows(), cells, strict=True):
        lines.append(str(r["method"]).ljust(width) + "".join(x.rjust(w) for x, w in zip(c, cw, strict=True)) +
                     _num(r["spearman_mean"]).rjust(8) + str(int(r["n_sequences"])).rjust(6))
    lines.append("(in parentheses: a random ranking of the same tokens. ↓: lower is better. rho: mean Spearman "
                 "with the other methods. n: sequences.)")
    margin = [c for c in MARGIN_COLUMNS if not c.endswith("_random")]
    if all(c in scores for c in margin) and scores[margin].notna().any().any():
        mheads = ["margin del. chosen", "margin del. rejected", "margin ins. chosen", "margin ins. rejected"]
        mcells = [[f"{_num(r[c])} ({_num(r[f'{c}_random'])})" for c in margin] for _, r in scores.iterrows()]
        mw = [max([len(h), *[len(c[i]) for c in mcells]]) + 2 for i, h in enumerate(mheads)]
        lines += ["", "pair-level: the margin's move when one side's top tokens go (or stay alone), higher is "
                  "more faithful",
                  "method".ljust(width) + "".join(h.rjust(w) for h, w in zip(mheads, mw, strict=True))]
        for (_, r), c in zip(scores.iterrows(), mcells, strict=True):
            lines.append(str(r["method"]).ljust(width) + "".join(x.rjust(w) for x, w in zip(c, mw, strict=True)))
    return "\n".join(lines)


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(f):
        return "-"
    return f"{f:.3f}" if abs(f) < 100 else f"{f:.1f}"


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records")) if len(df) else []


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
