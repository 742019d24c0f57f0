"""Alignment effect: TI-DPO vs DPO / TDPO and the paper's ablations, on the sample data, with label noise.

Trains the offline default model (SmolLM2-135M-Instruct) on sample_data/train.jsonl with each preset, then scores
sample_data/test.jsonl: held-out preference accuracy (share of pairs whose implicit reward margin
`beta * (sum lr^w - sum lr^l)` is > 0) and the mean margin. dpo and paper are repeated with 20 % of the training
labels flipped (a seeded subset; chosen and rejected swapped). Every configuration runs with each seed; the table
gives the mean and the spread (min..max) over seeds.

Sized for about an hour on a 2-core CPU (see docs/BENCHMARKS.md for the measured cost): LoRA (r 16, all linear
layers, no dropout so the TI-DPO weights reuse the training forward), 14 optimizer steps of 4 pairs (56 of the 110
pairs), prompts <= 96 and sequences <= 192 tokens (no sample pair is cut), anchors of <= 16 new tokens, learning
rate 5e-4 constant after 2 warm-up steps. The reference is the adapter-free base model; its test log-probs are computed once and shared.

    .venv/bin/python benchmarks/alignment.py                                  # the full table (~1 h)
    .venv/bin/python benchmarks/alignment.py --presets dpo,paper --seeds 0 --steps 3 --no-noise   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("dpo", "tdpo", "paper", "uniform-weights", "random-weights", "no-prior", "no-triplet")
NOISY = ("dpo", "paper")


def flip_labels(pairs: list[Any], fraction: float, seed: int) -> list[Any]:
    """A copy of the pairs with a seeded `fraction` of them having chosen and rejected swapped."""
    g = torch.Generator().manual_seed(10_007 + seed)
    n = round(fraction * len(pairs))
    flipped = set(torch.randperm(len(pairs), generator=g)[:n].tolist())
    return [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen, rationale_chosen=p.rationale_rejected,
                                rationale_rejected=p.rationale_chosen) if i in flipped else p
            for i, p in enumerate(pairs)]


@torch.no_grad()
def sequence_logps(model: Any, encoded: list[Any], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """(N, 2) summed response log-probs [chosen, rejected] of each encoded pair."""
    from tiviz.attribution.targets import token_logps
    from tiviz.tokenization import collate

    model.eval()
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        b = collate([p.chosen for p in chunk] + [p.rejected for p in chunk], pad_id)
        lp = token_logps(model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                               use_cache=False).logits, b.input_ids)  # (2b, L)
        s = (lp * b.response_mask.float()).sum(-1)  # (2b,)
        out.append(torch.stack([s[: len(chunk)], s[len(chunk) :]], dim=-1))
    return torch.cat(out)


def run_one(preset: str, seed: int, noise: float, args: argparse.Namespace, train_pairs: list[Any],
            test_encoded: list[Any], ref_test: torch.Tensor) -> dict[str, Any]:
    from tiviz.models import load_model
    from tiviz.training.config import config_from_preset
    from tiviz.training.trainer import TIDPOTrainer

    cfg = config_from_preset(
        preset, seed=seed, max_steps=args.steps, batch_size=args.batch_size, use_lora=True, lora_r=args.lora_r,
        lora_dropout=0.0, learning_rate=args.lr, lr_scheduler="constant_with_warmup", warmup_steps=2,
        max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        anchor_max_new_tokens=args.anchor_tokens,
    )
    if cfg.alpha_kl == 0 and cfg.gamma == 0:
        cfg.precompute_ref_logps = True
    pairs = flip_labels(train_pairs, noise, seed) if noise else train_pairs
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tr = TIDPOTrainer(load_model(dtype="float32", device="cpu"), pairs, cfg, tmp)
        tr.setup_reference()
        t0 = time.perf_counter()
        losses = [tr.step(s)["loss"] for s in range(cfg.max_steps)]
        train_s = time.perf_counter() - t0
        lp = sequence_logps(tr.policy, test_encoded, tr.pad_id)  # (N, 2)
    margins = cfg.beta * ((lp[:, 0] - ref_test[:, 0]) - (lp[:, 1] - ref_test[:, 1]))  # (N,)
    return {"preset": preset, "seed": seed, "noise": noise, "accuracy": (margins > 0).float().mean().item(),
            "margin": margins.mean().item(), "train_s": train_s, "s_per_step": train_s / cfg.max_steps,
            "first_loss": losses[0], "last_loss": losses[-1]}


def spread(values: list[float], fmt: str) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--no-noise", action="store_true", help="skip the 20 %% flipped-label runs")
    ap.add_argument("--noise", type=float, default=0.2, help="fraction of training labels flipped (default 0.2)")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-prompt-length", type=int, default=96)
    ap.add_argument("--anchor-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared 2-core machine)")
    ap.add_argument("--json", default=None, help="also write every run's result to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from tiviz.data import load_pairs
    from tiviz.models import load_model
    from tiviz.tokenization import pad_token_id
    from tiviz.training.data import encode_pairs

    t_all = time.perf_counter()
    train_pairs = load_pairs(ROOT / "sample_data" / "train.jsonl")
    base = load_model(dtype="float32", device="cpu")
    test_encoded = encode_pairs(base.tokenizer, load_pairs(ROOT / "sample_data" / "test.jsonl"),
                                max_length=args.max_length, max_prompt_length=args.max_prompt_length)
    ref_test = sequence_logps(base.model, test_encoded, pad_token_id(base.tokenizer))  # (N, 2) shared reference
    del base
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(p, 0.0) for p in args.presets.split(",")]
    if not args.no_noise:
        jobs += [(p, args.noise) for p in NOISY if p in args.presets.split(",")]
    results = []
    for preset, noise in jobs:
        for seed in seeds:
            r = run_one(preset, seed, noise, args, train_pairs, test_encoded, ref_test)
            results.append(r)
            print(f"# {preset} noise={noise:.0%} seed={seed}: acc {r['accuracy']:.3f} margin {r['margin']:.4f} "
                  f"({r['s_per_step']:.1f} s/step, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f})",
                  file=sys.stderr, flush=True)
    print(f"| preset | label noise | held-out accuracy, mean (min..max) over {len(seeds)} seed(s) | mean margin | "
          "s/step |")
    print("|---|---|---|---|---|")
    for preset, noise in jobs:
        rs = [r for r in results if r["preset"] == preset and r["noise"] == noise]
        print(f"| {preset} | {noise:.0%} | {spread([r['accuracy'] for r in rs], '.3f')} | "
              f"{spread([r['margin'] for r in rs], '.4f')} | {statistics.fmean(r['s_per_step'] for r in rs):.1f} |")
    print(f"\n{len(test_encoded)} held-out pairs; total wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
