"""Alignment effect of the token-weight source: each source against uniform-weight DPO, paired.

Every configuration is our DPO (`dpo` preset: no KL term, no triplet term) with its token weights from one source
(docs/TRAINING.md, token-weight sources), so the weights are the only difference. For each seed every source trains with
the same data order, the same LoRA initialisation and the same reference (the base model, adapter disabled), so the
per-pair difference against uniform DPO on the same held-out pairs is a paired comparison:

    d_correct = 1[margin_source > 0] - 1[margin_dpo > 0],   d_margin = margin_source - margin_dpo

(margin = beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))), DPO's implicit reward, scored
by `tiviz.scoring.score_pairs` from the likelihood of policy and base model). The table gives their means with a
bootstrap 95 % interval that resamples seeds and test pairs, and held-out accuracy against training steps.

Datasets: `sample` (sample_data/train.jsonl, test.jsonl) and `planted` (the planted-cue pairs of `tiviz.planted`:
responses identical except a short deciding cue and a label-independent distractor), when that module exists.

    .venv/bin/python benchmarks/alignment.py                  # the scaled-down default (DEFAULT)
    .venv/bin/python benchmarks/alignment.py --full           # the GPU-sized study (see FULL)
    .venv/bin/python benchmarks/alignment.py --sources uniform,tidpo --seeds 0 --steps 2 --datasets sample  # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("uniform", "tidpo", "gradient", "grad_x_input", "random", "gradient@base")
"""Weight sources: a `weighting` id (online, from the current policy) or `METHOD@base` / `METHOD@DIR` (computed
once from the base model or from the scorer in DIR, a finished run or a reward model: `--weights-from`); `uniform`
is plain DPO, the baseline."""
DEFAULT = {"sources": "uniform,tidpo,gradient@base", "datasets": "sample,planted", "seeds": "0,1,2",
           "steps": 3, "eval_every": 2, "batch_size": 2, "max_length": 128, "max_prompt_length": 64,
           "n_train": 16, "n_test": 16, "planted_n": 64, "planted_fillers": "1,3", "lr": 1e-3}
"""Scaled to fit a 2-core CPU: both datasets, 18 runs, took 1,046 s here beside one other job (docs/BENCHMARKS.md,
"The whole default study, one command")."""
FULL = {"sources": ",".join(SOURCES) + ",attention,integrated_gradients,implicit_reward", "datasets": "sample,planted",
        "seeds": "0,1,2,3,4", "steps": 100, "eval_every": 10, "batch_size": 8, "max_length": 512,
        "max_prompt_length": 256, "n_train": 0, "n_test": 0, "planted_n": 400, "planted_fillers": "5,10", "lr": 5e-5}
"""`--full`: every source, 5 seeds, 100 steps of 8 pairs, whole datasets (n_train 0 = all)."""


def datasets(names: list[str], args: argparse.Namespace) -> dict[str, tuple[list[Any], list[Any]]]:
    """name -> (train pairs, test pairs); `planted` is skipped with a note when `tiviz.planted` is absent."""
    from tiviz.data import load_pairs

    out = {}
    for name in names:
        if name == "sample":
            train, test = load_pairs(ROOT / "sample_data" / "train.jsonl"), load_pairs(ROOT / "sample_data" / "test.jsonl")
        elif name == "planted":
            try:
                from tiviz.planted import planted_pairs, split_pairs
            except ImportError:
                print("# planted: tiviz.planted is not in this build; skipped", file=sys.stderr)
                continue
            lo, hi = (int(x) for x in args.planted_fillers.split(","))
            train, test = split_pairs(planted_pairs(args.planted_n, seed=0, fillers=(lo, hi)))
        else:
            raise SystemExit(f"unknown dataset {name!r}: sample or planted")
        out[name] = (train[: args.n_train] if args.n_train else train, test[: args.n_test] if args.n_test else test)
    return out


def likelihoods(model: Any, tokenizer: Any, encoded: list[Any]) -> np.ndarray:
    """(N, 2) log pi(y|x) of [chosen, rejected] for each encoded pair (`score_pairs`, likelihood scorer)."""
    from tiviz.scoring import make_scorer, score_pairs

    table = score_pairs(make_scorer(model, tokenizer=tokenizer), encoded, batch_size=8)
    return table[["chosen", "rejected"]].to_numpy(np.float64)


def run_one(source: str, seed: int, train: list[Any], test_encoded: list[Any], ref_test: np.ndarray,
            args: argparse.Namespace) -> dict[str, Any]:
    """Train one (source, seed); held-out margins (N,) after each `eval_every` steps and at the end."""
    import torch

    from tiviz.models import DEFAULT_MODEL, load_model
    from tiviz.training.config import config_from_preset
    from tiviz.training.trainer import TIDPOTrainer

    method, _, scorer = source.partition("@")
    extra: dict[str, Any] = {"weighting": method}
    if scorer:
        extra["weights_from"] = DEFAULT_MODEL if scorer == "base" else scorer
    cfg = config_from_preset(
        "dpo", seed=seed, max_steps=args.steps, batch_size=args.batch_size, use_lora=True, lora_r=16,
        lora_dropout=0.0, learning_rate=args.lr, lr_scheduler="constant_with_warmup", warmup_steps=1,
        max_length=args.max_length, max_prompt_length=args.max_prompt_length, precompute_ref_logps=True, **extra)
    loaded = load_model(dtype="float32", device=args.device)
    tr = TIDPOTrainer(loaded, train, cfg, Path(args.tmp) / f"{source}-{seed}", weights_cache=Path(args.tmp) / "cache")
    tr.setup_reference()
    curve: dict[int, list[float]] = {}
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        tr.step(step)
        done = step + 1
        if done % args.eval_every == 0 or done == cfg.max_steps:
            lp = likelihoods(tr.policy, loaded.tokenizer, test_encoded)  # (N, 2)
            margins = cfg.beta * ((lp[:, 0] - ref_test[:, 0]) - (lp[:, 1] - ref_test[:, 1]))
            curve[done] = margins.tolist()
    del tr
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"source": source, "seed": seed, "curve": curve, "train_s": time.perf_counter() - t0}


def bootstrap_ci(d: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of d (seeds, pairs) and a 95 % percentile interval from resampling seeds and pairs with
    replacement."""
    rng = np.random.default_rng(seed)
    S, N = d.shape
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = d[rng.integers(0, S, S)][:, rng.integers(0, N, N)].mean()
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def paired_table(results: list[dict[str, Any]], dataset: str, sources: list[str], seeds: list[int]) -> list[str]:
    """Markdown rows: each source's final accuracy and margin, and its paired difference against uniform."""
    final = max(int(k) for k in results[0]["curve"])
    m = {(r["source"], r["seed"]): np.asarray(r["curve"][final]) for r in results}
    base = np.stack([m[("uniform", s)] for s in seeds])  # (S, N)
    rows = []
    for src in sources:
        cur = np.stack([m[(src, s)] for s in seeds])  # (S, N)
        acc = (cur > 0).mean(1)
        line = f"| {dataset} | {src} | {acc.mean():.3f} ({acc.min():.3f}..{acc.max():.3f}) | {cur.mean():+.4f} |"
        if src == "uniform":
            rows.append(line + " (baseline) | (baseline) |")
            continue
        dc = bootstrap_ci((cur > 0).astype(float) - (base > 0).astype(float))
        dm = bootstrap_ci(cur - base)
        rows.append(line + f" {dc[0]:+.3f} [{dc[1]:+.3f}, {dc[2]:+.3f}] | {dm[0]:+.4f} [{dm[1]:+.4f}, {dm[2]:+.4f}] |")
    return rows


def curve_rows(results: list[dict[str, Any]], dataset: str, sources: list[str]) -> list[str]:
    steps = sorted(int(k) for k in results[0]["curve"])
    rows = []
    for src in sources:
        accs = [statistics.fmean(float((np.asarray(r["curve"][s]) > 0).mean()) for r in results
                                 if r["source"] == src) for s in steps]
        rows.append(f"| {dataset} | {src} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the GPU-sized study (FULL); flags given still override")
    for key, value in DEFAULT.items():
        ap.add_argument("--" + key.replace("_", "-"), dest=key, type=type(value), default=None,
                        help=f"default {value} (--full: {FULL[key]})")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: automatic)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared 2-core machine)")
    ap.add_argument("--json", default=None, help="also write every run's margins to this JSON file")
    args = ap.parse_args()
    for key, value in (FULL if args.full else DEFAULT).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    from tiviz.models import load_model
    from tiviz.training.data import encode_pairs

    t_all = time.perf_counter()
    sources = args.sources.split(",")
    if sources[0] != "uniform":
        raise SystemExit("--sources must start with uniform (the baseline every source is paired with)")
    seeds = [int(s) for s in args.seeds.split(",")]
    table, curves, everything = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        for name, (train, test) in datasets(args.datasets.split(","), args).items():
            base = load_model(dtype="float32", device=args.device)
            test_encoded = encode_pairs(base.tokenizer, test, max_length=args.max_length,
                                        max_prompt_length=args.max_prompt_length)
            ref_test = likelihoods(base.model, base.tokenizer, test_encoded)  # (N, 2), the shared reference
            del base
            results = []
            for seed in seeds:
                for src in sources:
                    r = run_one(src, seed, train, test_encoded, ref_test, args)
                    results.append(r)
                    if args.json:  # every finished run, so a stopped study keeps what it measured
                        Path(args.json).write_text(json.dumps({"partial": {**everything, name: results}}, indent=1))
                    final = np.asarray(r["curve"][max(r["curve"])])
                    print(f"# {name} {src} seed={seed}: acc {(final > 0).mean():.3f} margin {final.mean():+.4f} "
                          f"({r['train_s']:.0f} s)", file=sys.stderr, flush=True)
            table += paired_table(results, f"{name} ({len(train)}/{len(test)})", sources, seeds)
            curves += curve_rows(results, name, sources)
            everything[name] = results
    steps = sorted(int(k) for k in everything[next(iter(everything))][0]["curve"])
    print(f"Seeds {seeds}; {args.steps} steps of {args.batch_size} pairs; LoRA r 16; lr {args.lr}.\n")
    print("| dataset (train/test pairs) | source | held-out accuracy, mean (min..max) over seeds | mean margin | "
          "accuracy - DPO's, paired [95 % CI] | margin - DPO's, paired [95 % CI] |")
    print("|---|---|---|---|---|---|")
    print("\n".join(table))
    print("\nHeld-out accuracy (mean over seeds) after each number of steps:\n")
    print("| dataset | source | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    print("\n".join(curves))
    print(f"\nTotal wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "tmp"},
                                               "results": everything}, indent=1))


if __name__ == "__main__":
    main()
