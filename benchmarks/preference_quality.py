"""Preference quality: do the attribution methods find the tokens that decide a scorer's preference?

On planted-cue pairs (`tiviz.planted`: long responses identical but for a deciding cue and a label-independent
distractor) the answer is known. The script
  1. writes the planted pairs (train / test) unless present,
  2. trains two scorers on the train split, reusing them when present: a DPO LoRA policy with tiviz's own trainer
     (scored as its implicit reward against the adapter-free base) and a reward model with TRL's
     `RewardTrainer` (LoRA, merged and saved as safetensors); the base model's likelihood is the third scorer,
  3. reports each scorer's test accuracy (share of pairs whose margin chosen - rejected is > 0),
  4. attributes the test pairs with every method for every scorer and scores how well each ranks the cue's tokens
     above all others, the distractor's included: rationale AUPRC with the cue as positives beside a random
     ranking's, and the share of pairs whose best cue token outranks the best distractor token,
  5. does the same on `sample_data/test.jsonl` (annotated rationales; no distractor there).

Sized for a 2-core CPU (docs/EVALUATION.md gives the measured times); every size is a flag:

    .venv/bin/python benchmarks/preference_quality.py                       # train (once) and score

The defaults take hours on 2 shared cores. That is an estimate: occlusion alone took about 48 min for 16 planted
pairs of the base model (docs/EVALUATION.md), and the defaults attribute 40 pairs for each of three scorers.

    .venv/bin/python benchmarks/preference_quality.py --test-pairs 8 --sample-pairs 8 --ig-steps 4   # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("preference_quality")
METHODS = ("gradient", "grad_x_input", "integrated_gradients", "attention", "tidpo", "token_score", "occlusion")


# ---------------------------------------------------------------------------------------------- training


def train_dpo(pairs_file: Path, run_dir: Path, args: argparse.Namespace) -> Path:
    """A DPO LoRA policy trained by tiviz's trainer; returns its run folder (reused when `final/` exists)."""
    if (run_dir / "final").is_dir():
        log.info("reusing the DPO run %s", run_dir)
        return run_dir
    from tiviz.data import load_pairs
    from tiviz.training import config_from_preset, train

    # only the pairs the steps will see: the reference log-probs are precomputed for every training pair
    pairs = load_pairs(pairs_file)[: args.dpo_steps * 4]
    cfg = config_from_preset(
        "dpo", use_lora=True, lora_r=args.lora_r, lora_dropout=0.0, learning_rate=args.dpo_lr,
        lr_scheduler="constant_with_warmup", warmup_steps=3, max_steps=args.dpo_steps, batch_size=4,
        max_length=args.max_length, max_prompt_length=80, precompute_ref_logps=True, save_steps=50,
        logging_steps=5, seed=args.seed,
    )
    t0 = time.perf_counter()
    train("smollm2-135m-instruct", pairs, cfg, run_dir, extra_run_info={"train_file": str(pairs_file)})
    log.info("trained DPO in %.0f s", time.perf_counter() - t0)
    return run_dir


def reward_rows(pairs: list[Any], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """RewardTrainer's processed rows (`chosen_ids`, `rejected_ids`): each pair as `RewardTrainer` itself tokenises
    its conversational form, the one encoding tiviz's reward-model scorer reads (`encode_reward_pair`)."""
    from tiviz.tokenization import encode_reward_pair

    return [{"chosen_ids": list(c.input_ids), "rejected_ids": list(r.input_ids)}
            for c, r in (encode_reward_pair(tokenizer, p, max_length=max_length) for p in pairs)]


# recorded in the reward model's training.json: a model trained on rows encoded otherwise is retrained
RM_ENCODING = "tiviz.tokenization.encode_reward_pair (RewardTrainer's conversational form)"


def train_reward_model(pairs_file: Path, out: Path, args: argparse.Namespace) -> Path:
    """A reward model (the default model as `AutoModelForSequenceClassification`, num_labels=1) trained with
    TRL's `RewardTrainer` and a LoRA adapter, merged and saved as safetensors in `out` (reused when present and trained on rows encoded as `RM_ENCODING`)."""
    if (out / "model.safetensors").is_file():
        record = out / "training.json"
        encoding = json.loads(record.read_text(encoding="utf-8")).get("encoding") if record.is_file() else None
        if encoding == RM_ENCODING:
            log.info("reusing the reward model %s", out)
            return out
        log.info("retraining the reward model %s: its rows were encoded as %r, not as the scorer reads them", out,
                 encoding)
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from tiviz.data import load_pairs
    from tiviz.models import _default_model_folder

    torch.manual_seed(args.seed)
    base = _default_model_folder()
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    data = Dataset.from_list(reward_rows(load_pairs(pairs_file)[: args.rm_steps * 4], tok, 2 * args.max_length))
    cfg = RewardConfig(
        output_dir=str(out.with_name(out.name + ".trainer")), max_steps=args.rm_steps,
        per_device_train_batch_size=4, learning_rate=args.rm_lr, lr_scheduler_type="constant_with_warmup",
        warmup_steps=3, logging_steps=5, save_strategy="no", report_to=[], bf16=False,
        gradient_checkpointing=False, max_length=2 * args.max_length, use_cpu=True, seed=args.seed,
        disable_dropout=True,
    )
    # LoRA on the top layers only: the backward then stops there (a 2-core CPU affords it); the score head is
    # trained in full (peft's SEQ_CLS task saves it)
    n_layers = model.config.num_hidden_layers
    top = list(range(max(0, n_layers - args.rm_lora_layers), n_layers)) if args.rm_lora_layers else None
    lora = LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      layers_to_transform=top)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    log.info("trained the reward model in %.0f s", time.perf_counter() - t0)
    merged = trainer.model.merge_and_unload()  # type: ignore[union-attr,operator]
    merged.config.pad_token_id = tok.pad_token_id
    merged.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"steps": args.rm_steps, "lr": args.rm_lr, "lora_r": args.lora_r,
                                                   "lora_layers": top, "encoding": RM_ENCODING,
                                                   "train_file": str(pairs_file),
                                                   "seconds": round(time.perf_counter() - t0)}), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- scoring


def cue_beats_distractor(table: Any, pairs: list[Any]) -> dict[str, float]:
    """Per method: share of pairs whose highest-|score| cue token (either side) outranks the highest-|score|
    distractor token (either side); ties count one half. Pairs without distractor spans are left out."""
    import numpy as np

    from tiviz.evaluation.plausibility import span_labels

    by_id = {p.id: p for p in pairs}
    resp = table[table["in_response"]]
    wins: dict[str, list[float]] = {}
    for (pid, method), g in resp.groupby(["pair_id", "method"], sort=False):
        pair = by_id.get(pid)
        if pair is None or "distractor_chosen" not in pair.extra:
            continue
        best = {"cue": -math.inf, "distractor": -math.inf}
        for side, s in g.groupby("side", sort=False):
            spans = s[["char_start", "char_end"]].to_numpy()
            mag = np.abs(s["score"].to_numpy(dtype=np.float64))
            mag = np.where(np.isnan(mag), -np.inf, mag)
            for kind in best:
                labels = span_labels(spans, [tuple(pair.extra[f"{kind}_{side}"])])
                if labels.any():
                    best[kind] = max(best[kind], float(mag[labels].max()))
        c, d = best["cue"], best["distractor"]
        wins.setdefault(str(method), []).append(1.0 if c > d else 0.5 if c == d else 0.0)
    return {m: float(np.mean(v)) for m, v in wins.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "planted"), help="data, scorers and results folder")
    ap.add_argument("--n", type=int, default=400, help="planted pairs in all (a quarter is the test split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-fillers", default="0,2", help="fewest,most filler sentences in training responses")
    ap.add_argument("--dpo-steps", type=int, default=24, help="DPO optimizer steps of 4 pairs (0: no DPO scorer)")
    ap.add_argument("--dpo-lr", type=float, default=1e-3)
    ap.add_argument("--rm-steps", type=int, default=16, help="reward-model optimizer steps of 4 pairs")
    ap.add_argument("--rm-lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--rm-lora-layers", type=int, default=4, help="reward model: LoRA on the top N layers (0: all)")
    ap.add_argument("--max-length", type=int, default=128, help="longest prompt + response in training")
    ap.add_argument("--sample-dpo-steps", type=int, default=0,
                    help="train a DPO LoRA on sample_data/train.jsonl for the sample-data policy (0: skip)")
    ap.add_argument("--accuracy-pairs", type=int, default=100, help="test pairs scored for accuracy")
    ap.add_argument("--test-pairs", type=int, default=40, help="planted test pairs attributed (of 100)")
    ap.add_argument("--sample-pairs", type=int, default=40, help="sample_data/test.jsonl pairs attributed")
    ap.add_argument("--ig-steps", type=int, default=8, help="integrated-gradients steps")
    ap.add_argument("--methods", default=",".join(METHODS), help="methods to score (missing ones are skipped)")
    ap.add_argument("--faith-pairs", type=int, default=12,
                    help="pairs (of the attributed ones) on which pair-level deletion AOPC is measured (0: none)")
    ap.add_argument("--sample-faith-pairs", type=int, default=None,
                    help="the same on sample_data/test.jsonl (default: --faith-pairs)")
    ap.add_argument("--n-random", type=int, default=3, help="random rankings per sequence for the AOPC baseline")
    ap.add_argument("--confident", type=float, default=0.95,
                    help="a template counts as learnt by a scorer when its test accuracy reaches this")
    ap.add_argument("--write-ranking", action="store_true",
                    help="write the per-scorer method ranking the app opens on (tiviz/evaluation/quality_ranking.json)")
    ap.add_argument("--scorers", default="base,dpo,rm",
                    help="scorers to score now; results of the others are kept from OUT/quality.json")
    ap.add_argument("--report-only", action="store_true",
                    help="no model: the report from what OUT/tables holds (every table, accuracy and faithfulness "
                         "file earlier runs cached)")
    ap.add_argument("--train-only", action="store_true", help="stop after training the scorers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from tiviz.data import load_pairs, save_pairs
    from tiviz.planted import planted_pairs, split_pairs

    out = Path(args.out)
    data = out / "data"
    if not (data / "test.jsonl").is_file():
        # the train split has short responses (cheap training on a CPU), the test split the long ones
        data.mkdir(parents=True, exist_ok=True)
        lo, hi = (int(x) for x in args.train_fillers.split(","))
        save_pairs(split_pairs(planted_pairs(args.n, args.seed, fillers=(lo, hi)))[0], data / "train.jsonl")
        save_pairs(split_pairs(planted_pairs(args.n, args.seed))[1], data / "test.jsonl")
    if args.report_only:
        results = report_from_cache(args, {"planted": load_pairs(data / "test.jsonl"),
                                           "sample": load_pairs(ROOT / "sample_data" / "test.jsonl")})
        (out / "quality.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        if args.write_ranking:
            from tiviz.evaluation.method_ranking import write_ranking

            write_ranking(results["rows"], source="benchmarks/preference_quality.py --report-only --write-ranking")
        sys.stdout.write(format_results(results) + "\n")
        return
    t0 = time.perf_counter()
    dpo = train_dpo(data / "train.jsonl", out / "dpo", args) if args.dpo_steps else None
    rm = train_reward_model(data / "train.jsonl", out / "rm", args)
    sample_dpo = (train_dpo(ROOT / "sample_data" / "train.jsonl", out / "sample_dpo",
                            argparse.Namespace(**{**vars(args), "dpo_steps": args.sample_dpo_steps}))
                  if args.sample_dpo_steps else None)
    t_train = time.perf_counter() - t0
    if args.train_only:
        return
    results = run_quality(args, load_pairs(data / "test.jsonl"), load_pairs(ROOT / "sample_data" / "test.jsonl"),
                          dpo, rm, sample_dpo)
    results["train_seconds_this_run"] = round(t_train)
    results = keep_other_scorers(results, out / "quality.json", args.scorers.split(","))
    (out / "quality.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.write_ranking:
        from tiviz.evaluation.method_ranking import write_ranking

        write_ranking(results["rows"], source="benchmarks/preference_quality.py " + " ".join(argv or sys.argv[1:]))
    sys.stdout.write(format_results(results) + "\n")


def report_from_cache(args: argparse.Namespace, data: dict[str, list[Any]]) -> dict[str, Any]:
    """The results of every (dataset, scorer) whose attribution table OUT/tables holds, with their cached accuracy
    and faithfulness (no model is loaded: plausibility reads the tables)."""
    from tiviz.table import read_table

    tables = Path(args.out) / "tables"
    results: dict[str, Any] = {"settings": {"report_only": True}, "rows": [], "accuracy": {}, "faithfulness": []}
    for acc_path in sorted(tables.glob("accuracy_*.json")):
        _, data_name, sname, _n = acc_path.stem.split("_")
        results["accuracy"][f"{data_name}/{sname}"] = json.loads(acc_path.read_text(encoding="utf-8"))
    for path in sorted(tables.glob("*.parquet")):
        data_name, sname, n_pairs = path.stem.split("_")[:3]
        pairs = data[data_name][: int(n_pairs)]
        table = with_pair_view(read_table(path))
        skipped = json.loads(path.with_suffix(".skipped.json").read_text(encoding="utf-8"))
        results["rows"] += quality_rows(None, table, pairs, data_name, sname,
                                        results["accuracy"].get(f"{data_name}/{sname}", {}), skipped, math.nan,
                                        args.confident)
        for f_path in sorted(tables.glob(path.stem + "_faith*.json")):
            results["faithfulness"] += json.loads(f_path.read_text(encoding="utf-8"))
    return results


def keep_other_scorers(results: dict[str, Any], path: Path, scored: list[str]) -> dict[str, Any]:
    """`results` plus the rows and accuracies of the scorers not scored in this run, from an earlier `path`."""
    if not path.is_file():
        return results
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in ("rows", "faithfulness"):
        results[key] = [r for r in old.get(key, []) if r["scorer"] not in scored] + results[key]
    results["accuracy"] = {**{k: v for k, v in old.get("accuracy", {}).items() if k.split("/")[1] not in scored},
                           **results["accuracy"]}
    return results


def load_scorers(names: list[str], dpo: Path | None, rm: Path | None) -> dict[str, Any]:
    """name -> Scorer: `base` (likelihood of the default model), `dpo` (the run's implicit reward against its
    base), `rm` (the reward model)."""
    from tiviz.scoring import load_scorer

    paths = {"base": "smollm2-135m-instruct", "dpo": str(dpo) if dpo else "", "rm": str(rm) if rm else ""}
    return {n: load_scorer(paths[n], dtype="float32") for n in names if paths[n]}


SCORER_TARGET = {"likelihood": "logprob", "implicit_reward": "reward", "reward_model": "reward"}


def attribute_with(scorer: Any, pairs: list[Any], methods: list[str], args: argparse.Namespace
                   ) -> tuple[Any, dict[str, str]]:
    """(tidy table of the methods this scorer can give, method -> why it was skipped).

    Every method explains the scorer's own score per side (`SCORER_TARGET`: log pi for a causal LM alone, the
    implicit reward through both models for a run, the reward model's output); all methods go into one
    `attribute` call, so the gradient methods share their backward pass.
    """
    from tiviz.attribution import attribute
    from tiviz.attribution.methods import METHODS, scorer_methods

    can = scorer_methods(scorer.kind)
    skipped = {m: "not a registered method" if m not in METHODS else
               f"not for a {scorer.kind} scorer (it reads LM logits or needs a reference)"
               for m in methods if m not in can}
    run = [m for m in methods if m in can]
    settings = {"n_steps": args.ig_steps, "ig_max_steps": args.ig_steps, "batch_size": 2,
                "target": SCORER_TARGET[scorer.kind]}
    table = attribute(scorer.model, pairs, run, tokenizer=scorer.tokenizer, scorer=scorer, **settings)
    return table, skipped


def random_cue_share(pairs: list[Any], table: Any) -> float:
    """Expected share of pairs where a uniformly random ranking puts a cue token first among cue and distractor
    tokens: n_cue / (n_cue + n_distractor) per pair, averaged."""
    import numpy as np

    from tiviz.evaluation.plausibility import span_labels

    by_id = {p.id: p for p in pairs}
    first = table[table["in_response"] & (table["method"] == table["method"].iloc[0])]
    shares = []
    for pid, g in first.groupby("pair_id", sort=False):
        pair = by_id[pid]
        n = {"cue": 0, "distractor": 0}
        for side, s in g.groupby("side", sort=False):
            spans = s[["char_start", "char_end"]].to_numpy()
            for kind in n:
                n[kind] += int(span_labels(spans, [tuple(pair.extra[f"{kind}_{side}"])]).sum())
        shares.append(n["cue"] / (n["cue"] + n["distractor"]))
    return float(np.mean(shares))


def accuracy(scorer: Any, pairs: list[Any]) -> dict[str, Any]:
    """Test accuracy (margin > 0) overall and, for planted pairs, per template."""
    from tiviz.scoring import margin_summary, score_pairs

    margins = score_pairs(scorer, pairs, batch_size=4)
    out: dict[str, Any] = margin_summary(margins["margin"])
    templates = [p.extra.get("template") for p in pairs]
    if all(templates):
        out["by_template"] = {t: margin_summary(margins["margin"][[x == t for x in templates]])["accuracy"]
                              for t in dict.fromkeys(templates)}
    return out


def run_quality(args: argparse.Namespace, planted: list[Any], sample: list[Any], dpo: Path | None, rm: Path,
                sample_dpo: Path | None) -> dict[str, Any]:
    """Accuracy and cue-finding scores of every (dataset, scorer, method); tables cached under OUT/tables."""
    from tiviz.table import read_table, write_table

    out = Path(args.out)
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "rows": [], "accuracy": {},
                               "faithfulness": []}
    datasets = [("planted", planted, {"base": None, "dpo": dpo, "rm": rm}),
                ("sample", sample, {"base": None, "dpo": sample_dpo, "rm": rm})]
    for data_name, all_pairs, scorer_paths in datasets:
        n_attr = args.test_pairs if data_name == "planted" else args.sample_pairs
        pairs = all_pairs[:n_attr]
        names = [n for n in ("base", "dpo", "rm") if (n == "base" or scorer_paths[n]) and n in args.scorers.split(",")]
        scorers = load_scorers(names, scorer_paths["dpo"], scorer_paths["rm"])
        for sname, scorer in scorers.items():
            acc_path = tables / f"accuracy_{data_name}_{sname}_{args.accuracy_pairs}.json"
            if acc_path.is_file():
                acc = json.loads(acc_path.read_text(encoding="utf-8"))
            else:
                t0 = time.perf_counter()
                acc = accuracy(scorer, all_pairs[: args.accuracy_pairs])
                acc["seconds"] = round(time.perf_counter() - t0, 1)
                acc_path.write_text(json.dumps(acc), encoding="utf-8")
            results["accuracy"][f"{data_name}/{sname}"] = acc
            log.info("%s %s: accuracy %.3f on %d pairs", data_name, sname, acc["accuracy"], acc["n_pairs"])
            tag = zlib.crc32((",".join(methods) + SCORER_TARGET[scorer.kind]).encode("utf-8"))
            path = tables / f"{data_name}_{sname}_{len(pairs)}_{args.ig_steps}_{tag:08x}.parquet"
            t0 = time.perf_counter()
            if path.is_file():
                table = read_table(path)
                skipped = json.loads(path.with_suffix(".skipped.json").read_text(encoding="utf-8"))
            else:
                table, skipped = attribute_with(scorer, pairs, methods, args)
                write_table(table, path)
                path.with_suffix(".skipped.json").write_text(json.dumps(skipped), encoding="utf-8")
            seconds = time.perf_counter() - t0
            table = with_pair_view(table)
            log.info("%s %s: attributed %d pairs in %.0f s", data_name, sname, len(pairs), seconds)
            results["rows"] += quality_rows(scorer.model, table, pairs, data_name, sname, acc, skipped, seconds,
                                            args.confident)
            n_faith = (args.faith_pairs if data_name == "planted" or args.sample_faith_pairs is None
                       else args.sample_faith_pairs)
            if n_faith and scorer.kind != "reward_model":
                f_path = path.with_name(path.stem + f"_faith{n_faith}_{args.n_random}.json")
                if not f_path.is_file():
                    f_path.write_text(json.dumps(faithfulness_rows(scorer, table, pairs[:n_faith],
                                                                   data_name, sname, args)), encoding="utf-8")
                results["faithfulness"] += json.loads(f_path.read_text(encoding="utf-8"))
        del scorers
    return results


def with_pair_view(table: Any) -> Any:
    """The table plus `token_score_pair` (`tiviz.attribution.decomposition.pair_terms`: shared stretches cancel)
    when it holds `token_score`."""
    import pandas as pd

    from tiviz.attribution.decomposition import pair_terms

    if "token_score" not in set(table["method"]):
        return table
    out = pd.concat([table, pair_terms(table)], ignore_index=True)
    out.attrs = copy.deepcopy(table.attrs)
    out.attrs["tiviz"]["methods"] = [*table.attrs["tiviz"]["methods"], "token_score_pair"]
    return out


def quality_rows(model: Any, table: Any, pairs: list[Any], data_name: str, sname: str, acc: dict[str, Any],
                 skipped: dict[str, str], seconds: float, confident: float) -> list[dict[str, Any]]:
    """One record per method skipped (why), then per method run: rationale AUPRC (random beside) on all
    attributed pairs and on the pairs of the templates the scorer has learnt (test accuracy >= `confident`), and
    for planted pairs the cue-over-distractor share likewise."""
    import numpy as np

    from tiviz.evaluation import evaluate

    rows: list[dict[str, Any]] = [{"data": data_name, "scorer": sname, "method": m, "skipped": why}
                                  for m, why in skipped.items()]
    learnt = [t for t, a in (acc.get("by_template") or {}).items() if a >= confident]

    ev = evaluate(model, pairs, table=table, faithfulness=False)  # plausibility only: no forward
    per = ev.per_sequence
    template = {p.id: p.extra.get("template") for p in pairs}
    per = per.assign(template=per["pair_id"].map(template))
    learnt_pairs = [p for p in pairs if p.extra.get("template") in learnt]
    cue = cue_beats_distractor(table, pairs) if data_name == "planted" else {}
    cue_learnt = (cue_beats_distractor(table, learnt_pairs) if data_name == "planted" and learnt_pairs else {})
    settings = table.attrs.get("tiviz", {}).get("settings") or {}
    if data_name == "planted":  # a random ranking's share does not depend on the method
        cue_random = random_cue_share(pairs, table)
        cue_learnt_random = (random_cue_share(learnt_pairs, table[table["pair_id"].isin({p.id for p in learnt_pairs})])
                             if learnt_pairs else math.nan)
    for method, g in per.groupby("method", sort=False):
        g = g[g["auprc"].notna()]
        gl = g[g["template"].isin(learnt)]
        rec: dict[str, Any] = {
            "data": data_name, "scorer": sname, "method": method, "n_pairs": len(pairs),
            "auprc": float(g["auprc"].mean()), "auprc_random": float(g["auprc_random"].mean()),
            "learnt_templates": learnt, "n_pairs_learnt": len(learnt_pairs),
            "auprc_learnt": float(gl["auprc"].mean()) if len(gl) else math.nan,
            "auprc_learnt_random": float(gl["auprc_random"].mean()) if len(gl) else math.nan,
            "by_template": {str(t): float(x["auprc"].mean()) for t, x in g.groupby("template") if t},
            "seconds_all_methods": round(seconds, 1), "target": settings.get("target"),
        }
        if data_name == "planted":
            rec["cue_over_distractor"] = cue.get(str(method), math.nan)
            rec["cue_over_distractor_random"] = cue_random
            rec["cue_over_distractor_learnt"] = cue_learnt.get(str(method), math.nan)
            rec["cue_over_distractor_learnt_random"] = cue_learnt_random
        rows.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()})
        log.info("%s", rows[-1])
    return rows


def faithfulness_rows(scorer: Any, table: Any, pairs: list[Any], data_name: str, sname: str,
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pair-level deletion and insertion (docs/EVALUATION.md, "Pair-level faithfulness") of each method on the
    scorer's own score: log pi for a causal LM; for a run, the implicit reward with pi_ref perturbed alike
    (the base model loaded as the reference: the run's adapter-disabled copy cannot be perturbed apart)."""
    from tiviz.evaluation import evaluate

    ids = {p.id for p in pairs}
    sub = table[table["pair_id"].isin(ids)]
    # whatever a method explains, its top tokens are removed from the scorer's own score's inputs
    sub.attrs = copy.deepcopy(table.attrs)
    sub.attrs["tiviz"]["method_targets"] = {m: "reward" for m in sub.attrs["tiviz"]["methods"]}
    ref = None
    if scorer.kind == "implicit_reward":
        from tiviz.models import load_model

        ref = scorer.reference if scorer.reference is not None else load_model(
            "smollm2-135m-instruct", dtype="float32").model
    t0 = time.perf_counter()
    ev = evaluate(scorer.model, pairs, table=sub, tokenizer=scorer.tokenizer, ref_model=ref,
                  target="method" if ref is not None else "logprob", n_random=args.n_random,
                  curve_fractions=(0.1, 0.2, 0.3, 0.4, 0.5), eraser_fractions=(0.05, 0.1, 0.2), batch_size=16)
    seconds = time.perf_counter() - t0
    rows = []
    for _, r in ev.scores.iterrows():
        rec = {"data": data_name, "scorer": sname, "method": r["method"], "n_pairs": len(pairs),
               "seconds_all_methods": round(seconds, 1)}
        for s in ("margin_deletion", "margin_insertion"):
            for side in ("chosen", "rejected"):
                for tail in ("", "_random"):
                    rec[f"{s}_{side}{tail}"] = float(r[f"{s}_{side}{tail}"])
            rec[s] = (rec[f"{s}_chosen"] + rec[f"{s}_rejected"]) / 2
            rec[f"{s}_random"] = (rec[f"{s}_chosen_random"] + rec[f"{s}_rejected_random"]) / 2
        rows.append(rec)
        log.info("%s", rec)
    return rows


def _cell(value: Any, random: Any, digits: int = 3) -> str:
    """'value (random)', or an en dash where there is nothing to report."""
    if value is None or random is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f} ({random:.{digits}f})"


def format_results(results: dict[str, Any]) -> str:
    """Markdown: the accuracy table, the ranking table (random beside each), the pair-level faithfulness table,
    and the issue's targets checked on the templates each scorer has learnt."""
    lines = ["| data | scorer | test accuracy | by template |", "|---|---|---|---|"]
    for key, acc in results["accuracy"].items():
        data, scorer = key.split("/")
        by = ", ".join(f"{t} {v:.2f}" for t, v in (acc.get("by_template") or {}).items())
        lines.append(f"| {data} | {scorer} | {acc['accuracy']:.3f} ({int(acc['n_pairs'])} pairs) | {by} |")
    lines += ["", "| data | scorer | method | AUPRC (random) | cue > distractor (random) | learnt templates: "
              "AUPRC (random) | learnt: cue > distractor (random) |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['data']} | {r['scorer']} | {r['method']} | skipped: {r['skipped']} | | | |")
            continue
        learnt = (f"{_cell(r['auprc_learnt'], r['auprc_learnt_random'])} ({r['n_pairs_learnt']} pairs: "
                  f"{', '.join(r['learnt_templates'])})" if r.get("learnt_templates") else "no template learnt")
        if r["data"] != "planted":
            learnt = ""
        lines.append(f"| {r['data']} | {r['scorer']} | {r['method']} | {_cell(r['auprc'], r['auprc_random'])} | "
                     f"{_cell(r.get('cue_over_distractor'), r.get('cue_over_distractor_random'), 2)} | {learnt} | "
                     f"{_cell(r.get('cue_over_distractor_learnt'), r.get('cue_over_distractor_learnt_random'), 2)}"
                     " |")
    if results.get("faithfulness"):
        lines += ["", "| data | scorer | method | margin deletion AOPC (random) | chosen | rejected | "
                  "margin insertion AOPC (random) |", "|---|---|---|---|---|---|---|"]
        for r in results["faithfulness"]:
            lines.append(
                f"| {r['data']} | {r['scorer']} ({r['n_pairs']} pairs) | {r['method']} | "
                f"{_cell(r['margin_deletion'], r['margin_deletion_random'])} | "
                f"{_cell(r['margin_deletion_chosen'], r['margin_deletion_chosen_random'])} | "
                f"{_cell(r['margin_deletion_rejected'], r['margin_deletion_rejected_random'])} | "
                f"{_cell(r['margin_insertion'], r['margin_insertion_random'])} |")
    lines += ["", *check_targets(results)]
    return "\n".join(lines)


GRADIENT_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "occlusion")


def check_targets(results: dict[str, Any]) -> list[str]:
    """The issue's planted-cue targets, per scorer, on the templates it has learnt (accuracy >= --confident):
    best AUPRC >= 0.9 and cue > distractor >= 0.95; the gradient methods and occlusion >= 2x random AUPRC;
    pair-level deletion AOPC >= 2x random."""
    out = ["Targets on the learnt templates (planted test split):"]
    rows = [r for r in results["rows"] if r["data"] == "planted" and not r.get("skipped")]
    for sname in dict.fromkeys(r["scorer"] for r in rows):
        mine = [r for r in rows if r["scorer"] == sname and r.get("auprc_learnt") is not None]
        if not mine:
            out.append(f"- {sname}: no template reaches the accuracy threshold; the targets do not apply")
            continue
        best = max(mine, key=lambda r: r["auprc_learnt"])
        out.append(f"- {sname} ({', '.join(best['learnt_templates'])}; {best['n_pairs_learnt']} pairs): best "
                   f"{best['method']} AUPRC {best['auprc_learnt']:.3f} (>= 0.9: "
                   f"{'met' if best['auprc_learnt'] >= 0.9 else 'missed'}), cue > distractor "
                   f"{best['cue_over_distractor_learnt']:.2f} (>= 0.95: "
                   f"{'met' if best['cue_over_distractor_learnt'] >= 0.95 else 'missed'})")
        for r in mine:
            if r["method"] in GRADIENT_METHODS:
                ratio = r["auprc_learnt"] / r["auprc_learnt_random"]
                out.append(f"  - {r['method']}: {ratio:.1f}x random AUPRC (>= 2x: {'met' if ratio >= 2 else 'missed'})")
        for f in results.get("faithfulness", []):
            if f["data"] == "planted" and f["scorer"] == sname and f["margin_deletion_random"] > 0:
                ratio = f["margin_deletion"] / f["margin_deletion_random"]
                out.append(f"  - {f['method']}: pair-level deletion AOPC {ratio:.1f}x random (all templates; "
                           f">= 2x: {'met' if ratio >= 2 else 'missed'})")
    return out


if __name__ == "__main__":
    main()
