"""Training step cost: our DPO step vs TRL's DPOTrainer step vs our TI-DPO step (with and without the triplet term).

One run, same model (the offline default, SmolLM2-135M-Instruct, float32, full fine-tuning) and the same batch (the
first two pairs of sample_data/train.jsonl).

- Time: the variants are built side by side in one process, in groups that each include our DPO (a group of three
  full fine-tunings with their references and AdamW states holds ~6 GB), then `--rounds` rounds each run one
  optimizer step of every variant of the group (after `--warmup` untimed rounds), the order rotating from round to
  round. A variant's cost is the median over rounds of its step time divided by our DPO step time *in the same
  round*, so a change of load on a shared machine hits numerator and denominator alike; "x TRL" divides that by
  TRL's ratio. Our variants also report where their time goes (phase timers).
- Memory: each variant again in its own subprocess (one warm-up step + one step), so its peak is its own: the peak
  resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, Linux) after the steps, and the growth of that
  peak over the peak reached once the model, reference and optimizer were set up (what the steps add:
  activations, gradients, optimizer state).

    .venv/bin/python benchmarks/step_cost.py                    # all variants, prints Markdown tables
    .venv/bin/python benchmarks/step_cost.py --rounds 5 --threads 2 --no-memory --groups ours-dpo,trl-dpo
    .venv/bin/python benchmarks/step_cost.py --groups weights --lora --rounds 3   # one row per weight source
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "train.jsonl"
VARIANTS = {
    "ours-dpo": {"preset": "dpo"},
    "ours-dpo-precomputed-ref": {"preset": "dpo", "precompute_ref_logps": True},
    "trl-dpo": {},
    "ours-tidpo-no-triplet": {"preset": "no-triplet"},
    "ours-tidpo-paper": {"preset": "paper"},
    "ours-tidpo-no-triplet-no-kl": {"preset": "no-triplet", "alpha_kl": 0.0},
    # weight sources (docs/TRAINING.md, token-weight sources): our DPO (no KL, no triplet) with its weights from X
    "w-tidpo": {"preset": "dpo", "weighting": "tidpo"},
    "w-gradient": {"preset": "dpo", "weighting": "gradient"},
    "w-grad_x_input": {"preset": "dpo", "weighting": "grad_x_input"},
    "w-implicit_reward": {"preset": "dpo", "weighting": "implicit_reward"},
    "w-attention": {"preset": "dpo", "weighting": "attention"},
    "w-integrated_gradients": {"preset": "dpo", "weighting": "integrated_gradients"},
    "w-occlusion": {"preset": "dpo", "weighting": "occlusion"},
    "w-random": {"preset": "dpo", "weighting": "random"},
    "w-fixed-gradient": {"preset": "dpo", "weighting": "gradient", "weights_from": "smollm2-135m-instruct"},
}
WEIGHT_GROUPS = ("ours-dpo,w-tidpo,w-gradient,w-grad_x_input;"
                 "ours-dpo,w-implicit_reward,w-attention,w-random,w-fixed-gradient;"
                 "ours-dpo,w-integrated_gradients,w-occlusion")
"""`--groups weights`: one row per weight source; the two costliest online sources (integrated gradients: `n_steps`
forwards and backwards per step, occlusion: a forward per response token) in a group of their own."""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Ours:
    """One of our variants, ready to step."""

    def __init__(self, name: str, tmp: str, lora: bool = False) -> None:
        from tiviz.data import load_pairs
        from tiviz.models import load_model
        from tiviz.training.config import config_from_preset
        from tiviz.training.trainer import TIDPOTrainer

        spec = dict(VARIANTS[name])
        if lora:  # no LoRA dropout: the gradient weights may reuse the training forward
            spec.update(use_lora=True, lora_r=16, lora_dropout=0.0)
        cfg = config_from_preset(spec.pop("preset"), batch_size=2, max_steps=1000, **spec)
        self.tr = TIDPOTrainer(load_model(dtype="float32", device="cpu"), load_pairs(DATA)[:2], cfg, tmp,
                               weights_cache=Path(tmp) / "attribution-cache")
        self.precompute_s = self.tr.timings.get("weights_precompute")
        self.tr.setup_reference()
        self.tokens = sum(len(p.chosen) + len(p.rejected) for p in self.tr.train_encoded)
        self.i = 0
        self.last: dict[str, float] = {}

    def step(self) -> None:
        self.last = self.tr.step(self.i)
        self.i += 1


class Trl:
    """TRL's DPOTrainer on the same model and pairs (conversational rows, so TRL applies the same chat template),
    stepped as its training loop would: training_step (forward, reference forward, loss, backward), gradient
    clipping, optimizer step."""

    def __init__(self, tmp: str) -> None:
        import datasets
        from trl import DPOConfig, DPOTrainer

        from tiviz.data import load_pairs
        from tiviz.models import load_model, reference_copy

        loaded = load_model(dtype="float32", device="cpu")
        ref = reference_copy(loaded)
        rows = [{"prompt": [{"role": "user", "content": p.prompt}],
                 "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in load_pairs(DATA)[:2]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = DPOConfig(output_dir=tmp, report_to=[], per_device_train_batch_size=2, learning_rate=1e-6,
                             beta=0.1, loss_type=["sigmoid"], use_cpu=True, bf16=False, disable_tqdm=True,
                             max_length=512, max_grad_norm=1.0)
            self.trainer = DPOTrainer(model=loaded.model, ref_model=ref, args=args,
                                      train_dataset=datasets.Dataset.from_list(rows),
                                      processing_class=loaded.tokenizer)
        self.batch = self.trainer.data_collator([self.trainer.train_dataset[i] for i in range(2)])
        self.optimizer = self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we bypass
        self.tokens = int(self.batch["attention_mask"].sum())
        self.last: dict[str, float] = {}

    def step(self) -> None:
        model = self.trainer.model
        model.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = self.trainer.training_step(model, dict(self.batch))
        self.trainer.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last = {"loss": float(loss)}


def build(name: str, tmp: str, lora: bool = False) -> Any:
    return Trl(tmp) if name == "trl-dpo" else Ours(name, tmp, lora)


def memory_child(name: str, threads: int, out: str, lora: bool = False) -> None:
    """Peak RSS of one variant alone: set-up, then a warm-up step and one more."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        v = build(name, tmp, lora)
        setup_peak = peak_rss_mib()
        v.step()
        v.step()
    Path(out).write_text(json.dumps({"setup_peak_mib": setup_peak, "peak_mib": peak_rss_mib()}))


def time_all(names: list[str], rounds: int, warmup: int, threads: int, lora: bool = False) -> dict[str, Any]:
    """Every variant in this process; interleaved rounds; per-round ratios to ours-dpo."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        variants = {n: build(n, str(Path(tmp) / n), lora) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(warmup + rounds):
            if r == warmup:
                for v in variants.values():
                    if isinstance(v, Ours):
                        v.tr.timings.clear()
            k = r % len(names)
            for n in names[k:] + names[:k]:  # rotate the order
                t0 = time.perf_counter()
                variants[n].step()
                if r >= warmup:
                    times[n].append(time.perf_counter() - t0)
            print(f"# round {r + 1}/{warmup + rounds}: " + ", ".join(f"{n} {t[-1]:.1f}s" for n, t in times.items()
                                                                       if t), file=sys.stderr, flush=True)
        out = {}
        for n, v in variants.items():
            base = times.get("ours-dpo")
            ratios = [a / b for a, b in zip(times[n], base, strict=True)] if base else []
            out[n] = {
                "step_s": statistics.median(times[n]), "times": times[n],
                "x_dpo": statistics.median(ratios) if ratios else None,
                "x_dpo_range": [min(ratios), max(ratios)] if ratios else None,
                "tokens": v.tokens, "loss": v.last.get("loss"),
                "phases": ({k: t / rounds for k, t in sorted(v.tr.timings.items(), key=lambda kv: -kv[1])}
                           if isinstance(v, Ours) else {}),
                "anchor_len": v.last.get("anchor/length"),
                "precompute_s": getattr(v, "precompute_s", None),
            }
    return out


GROUPS = ("ours-dpo,trl-dpo,ours-dpo-precomputed-ref;ours-dpo,ours-tidpo-no-triplet,ours-tidpo-paper;"
          "ours-dpo,ours-tidpo-no-triplet-no-kl")


def run_child(flag: str, value: str, args: argparse.Namespace) -> Any:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, __file__, flag, value, "--out", out, "--threads", str(args.threads),
           "--rounds", str(args.rounds), "--warmup", str(args.warmup)] + (["--lora"] if args.lora else [])
    subprocess.run(cmd, check=True, env=env)
    data = json.loads(Path(out).read_text())
    os.unlink(out)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds (one step of every variant each)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--groups", default=GROUPS,
                    help="';'-separated groups of ','-separated variants timed together; each starts with ours-dpo; "
                    "'weights' = one row per token-weight source")
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter (r 16, all linear layers, no "
                    "dropout) instead of every weight")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--time-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.threads, args.out, args.lora)
        return
    if args.time_child:
        res = time_all(args.time_child.split(","), args.rounds, args.warmup, args.threads, args.lora)
        Path(args.out).write_text(json.dumps(res))
        return
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    groups = WEIGHT_GROUPS if args.groups == "weights" else args.groups
    for group in groups.split(";"):
        for name, r in run_child("--time-child", group, args).items():
            results.setdefault(name, r)  # ours-dpo: from the first group
    trl_x = results.get("trl-dpo", {}).get("x_dpo")
    names = list(results)
    if not args.no_memory:
        for name in names:
            results[name].update(run_child("--memory-child", name, args))
            print(f"# memory {name}: peak {results[name]['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    print(f"{'LoRA r 16' if args.lora else 'full fine-tuning'}; "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up, {args.threads} thread(s); "
          f"total {time.perf_counter() - t_all:.0f} s\n")
    print("| variant | s/step (median) | x our DPO, median (min..max) over rounds | x TRL DPO | tokens in batch "
          "| peak RSS MiB | step adds MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        x_dpo = f"{r['x_dpo']:.2f} ({r['x_dpo_range'][0]:.2f}..{r['x_dpo_range'][1]:.2f})" if r["x_dpo"] else "-"
        x_trl = f"{r['x_dpo'] / trl_x:.2f}" if trl_x and r["x_dpo"] else "-"
        mem = (f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['setup_peak_mib']:.0f}" if "peak_mib" in r else "- | -")
        print(f"| {name} | {r['step_s']:.2f} | {x_dpo} | {x_trl} | {r['tokens']} | {mem} |")
    print("\nWhere the time goes (seconds per step, our variants):\n")
    for name, r in results.items():
        if r["phases"]:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
            extra = f" (anchor length {r['anchor_len']:.0f} tokens)" if r.get("anchor_len") else ""
            if r.get("precompute_s"):
                extra += f" (weights computed once before training: {r['precompute_s']:.1f} s)"
            print(f"- {name}: {parts}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
