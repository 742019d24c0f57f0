"""Attribution speed and memory: tiviz's methods against the floor (one forward+backward), Captum and inseq.

One run, on the offline default model (SmolLM2-135M-Instruct, float32, CPU) and fixed pairs:

- table: the first `--pairs` pairs of sample_data/train.jsonl, each response cut to its first `--response-tokens`
  tokens (so the per-token loops of Captum's LLM API and of inseq stay affordable), time and peak memory per
  pair for every tiviz method, the floor, a plain forward, Captum (plain and LLM API) and inseq. Variants are
  interleaved (round 1: A, B, C...; round 2: A, B, C...) and each ratio is the median over rounds of ratios
  taken within a round.
- ig: completeness of tiviz's integrated gradients at its defaults, and the n_steps Captum's
  `LLMGradientAttribution` (LayerIntegratedGradients on the embedding layer) needs for the same completeness,
  with Captum's default baseline (token 0) and with tiviz's (the pad token).
- occlusion: tiviz's occlusion with its prefix key/value cache against the naive one full forward per occluded
  token, on the same pairs in the same process (interleaved rounds), per scorer (`--occlusion-scorers
  likelihood,implicit_reward`): time ratio, tokens forwarded, and the largest difference between the two; on
  `--occlusion-data train` (responses cut), `planted` (planted-cue test pairs, 65-140-token responses) or `test`
  (sample_data/test.jsonl), each its own section of docs/BENCHMARKS.md; on the train data also the noise floor
  (float64, another batch shape, eager attention). `--parts occlusion` runs only this.
- scaling: time and memory per pair against sequence length (synthetic pairs of 64..512 tokens a side) and
  against dataset size, fitted slopes, and an HTML plot (docs/benchmarks/attribution_scaling.html).

Every measurement runs in its own subprocess (one torch thread; see `--threads`), which loads the model, warms up
on 8 tokens, then resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`) and reports the peak
(VmHWM) minus the RSS before the run: what the variant itself added (activations, logits, gradients).

    .venv/bin/python benchmarks/attribution.py --quick            # short version
    .venv/bin/python benchmarks/attribution.py                    # full version, writes docs/BENCHMARKS.md
    .venv/bin/python benchmarks/attribution.py --parts table,ig   # some parts only
    .venv/bin/python benchmarks/attribution.py --parts occlusion  # the occlusion comparison alone (minutes)
    .venv/bin/python benchmarks/attribution.py --parts occlusion --occlusion-data planted  # long responses

inseq runs from a separate interpreter (`--inseq-python`, default /tmp/inseqenv/bin/python when present), see
benchmarks/README.md; without it the inseq rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "train.jsonl"
DOC = ROOT / "docs" / "BENCHMARKS.md"
PLOT = ROOT / "docs" / "benchmarks" / "attribution_scaling.html"
SECTION = "## Attribution speed and memory"
OCCLUSION_SECTION = "## Occlusion: prefix cache against one forward per token"
TIVIZ_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "attention", "tidpo")
DEFAULT_INSEQ = Path("/tmp/inseqenv/bin/python")


# ------------------------------------------------------------------------------------------------ memory


def _status_mib(key: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    """Give freed heap memory back to the OS, then reset VmHWM to the current RSS (Linux >= 4.0).

    Without the trim, memory that loading the model allocated and freed stays in the process and is reused by the
    run, so the run's own peak would not show in the RSS.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")


# ------------------------------------------------------------------------------------------------ pairs


def comparison_pairs(tokenizer: Any, n_pairs: int, response_tokens: int) -> list[dict[str, Any]]:
    """The first `n_pairs` pairs of train.jsonl, each response cut to its first `response_tokens` tokens.

    The cut is made on tokens and decoded back to text; a cut that does not re-encode to the same tokens moves one
    token earlier, so every tool sees the same text and the same tokens.
    """
    from tiviz.data import load_pairs

    out = []
    for p in load_pairs(DATA)[:n_pairs]:
        rec = {"id": p.id, "prompt": p.prompt}
        for side in ("chosen", "rejected"):
            ids = tokenizer.encode(p.response_text(side), add_special_tokens=False)
            k = min(response_tokens, len(ids))
            while k > 1 and tokenizer.encode(tokenizer.decode(ids[:k]), add_special_tokens=False) != ids[:k]:
                k -= 1
            rec[side] = tokenizer.decode(ids[:k])
        out.append(rec)
    return out


def synthetic_pairs(tokenizer: Any, total_tokens: int, n_pairs: int) -> list[dict[str, Any]]:
    """`n_pairs` pairs whose two sides are each about `total_tokens` tokens long (prompt with chat template about
    half), made of words from the sample data, different words for every pair and side."""
    from tiviz.data import load_pairs
    from tiviz.tokenization import encode

    words = " ".join(f"{p.prompt} {p.chosen} {p.rejected}" for p in load_pairs(DATA)).split()
    cursor = 0

    def take(n: int) -> str:
        return " ".join(words[(cursor + i) % len(words)] for i in range(n))

    def longest(fits: Callable[[int], bool]) -> int:
        lo, hi = 1, 4 * total_tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    out = []
    for i in range(n_pairs):
        n_prompt = longest(lambda n: len(encode(tokenizer, take(n), "x")) <= total_tokens // 2)
        prompt = take(n_prompt)
        cursor += n_prompt
        rec: dict[str, Any] = {"id": f"synthetic-{total_tokens}-{i}", "prompt": prompt}
        for side in ("chosen", "rejected"):
            n_resp = longest(lambda n, prompt=prompt: len(encode(tokenizer, prompt, take(n))) <= total_tokens)
            rec[side] = take(n_resp)
            cursor += n_resp
        out.append(rec)
    return out


# ------------------------------------------------------------------------------------------------ worker side


def _load(spec: dict[str, Any]) -> Any:
    import torch

    from tiviz.models import load_model

    torch.manual_seed(0)
    return load_model(device="cpu")


def _encoded(lm: Any, p: dict[str, Any]) -> Any:
    """The pair's padded batch (chosen, rejected), exactly as tiviz builds it."""
    from tiviz.data import PreferencePair
    from tiviz.tokenization import collate, encode_pair, pad_token_id

    pair = PreferencePair(id=p["id"], prompt=p["prompt"], chosen=p["chosen"], rejected=p["rejected"])
    seqs = list(encode_pair(lm.tokenizer, pair, max_length=4096))
    return seqs, collate(seqs, pad_token_id(lm.tokenizer))


def _floor(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The floor: one forward+backward of the pair's padded batch (B=2), all-position logits, the summed response
    log-probs, backward to the input embeddings with every parameter frozen."""
    import torch

    from tiviz.attribution.targets import sequence_logp

    model = lm.model
    model.requires_grad_(False)

    def run(p: dict[str, Any]) -> dict[str, Any]:
        seqs, b = _encoded(lm, p)
        t0 = time.perf_counter()
        emb = model.get_input_embeddings()(b.input_ids).detach().requires_grad_(True)  # (2, L, H)
        logits = model(inputs_embeds=emb, attention_mask=b.attention_mask, position_ids=b.position_ids,
                       use_cache=False).logits  # (2, L, V)
        values = sequence_logp(logits, b.input_ids, b.response_mask)  # (2,)
        (grad,) = torch.autograd.grad(values.sum(), emb)
        dt = time.perf_counter() - t0
        l1 = grad.abs().sum(-1) * b.attention_mask  # (2, L)
        return {"time": dt, "tokens": sum(len(s) for s in seqs), "target": values.tolist(),
                "l1_sum": l1.sum(-1).tolist()}

    return run


def _forward(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A plain batched forward of the pair (B=2) under inference_mode: the reference for `attention`."""
    import torch

    def run(p: dict[str, Any]) -> dict[str, Any]:
        seqs, b = _encoded(lm, p)
        t0 = time.perf_counter()
        with torch.inference_mode():
            lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                     use_cache=False)
        return {"time": time.perf_counter() - t0, "tokens": sum(len(s) for s in seqs)}

    return run


def _tiviz(method: str, **fixed: Any) -> Callable[[Any, dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """`tiviz.attribute` on one pair (tokenisation and the tidy table included in the time)."""

    def make(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        from tiviz.attribution import attribute
        from tiviz.data import PreferencePair

        settings = {"target": "logprob", "batch_size": 1, "max_length": 4096, **fixed}
        passes: list[tuple[int, int]] = []  # (sequences, n_steps) of each IG pass, to show what refinement costs
        if method == "integrated_gradients":
            import tiviz.attribution.integrated as integrated

            one_pass = integrated._captum_ig

            def counted(model: Any, tokenizer: Any, batch: Any, **kw: Any) -> Any:
                passes.append((int(batch.input_ids.shape[0]), int(kw["n_steps"])))
                return one_pass(model, tokenizer, batch, **kw)

            integrated._captum_ig = counted  # type: ignore[assignment]

        def run(p: dict[str, Any]) -> dict[str, Any]:
            pair = PreferencePair(id=p["id"], prompt=p["prompt"], chosen=p["chosen"], rejected=p["rejected"])
            t0 = time.perf_counter()
            df = attribute(lm, [pair], [method], **settings)
            dt = time.perf_counter() - t0
            g = df.groupby("side", sort=False).agg(total=("score", "sum"), value=("target_value", "first"),
                                                   delta=("convergence_delta", "first"), n=("score", "size"))
            info: dict[str, Any] = {"time": dt, "tokens": int(g.n.sum()), "target": g.value.tolist(),
                                    "score_sum": g.total.tolist()}
            if method == "integrated_gradients":
                gap = (g.total - g.delta).abs()  # |f(x) - f(baseline)|
                info["rel_error"] = (g.delta.abs() / gap).tolist()
                info["passes"] = list(passes)
                passes.clear()
            return info

        return run

    return make


def _proposed_ig(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """tiviz's integrated gradients with the change proposed for `integrated.py` (owned by the lead): its forward
    runs the LM head only at the positions the target reads (`target_positions` / `target_value_at`), as the
    gradient methods now do. Patched in this process only."""
    import tiviz.attribution.integrated as integrated
    from tiviz.attribution.gradient import forward_logits
    from tiviz.attribution.targets import target_positions, target_value_at

    def lazy_logits(model: Any, emb: Any, attention_mask: Any, position_ids: Any) -> Any:
        return model, emb, attention_mask, position_ids

    def value(name: str, lazy: Any, input_ids: Any, attention_mask: Any, response_mask: Any, sign: Any,
              ref_logp: Any, reward_scale: float) -> Any:
        model, emb, _, position_ids = lazy
        positions, valid = target_positions(name, attention_mask, response_mask)
        logits = forward_logits(model, emb, attention_mask, position_ids, positions)  # (B, K, V)
        return target_value_at(name, logits, positions, valid, input_ids, sign, ref_logp, reward_scale)

    integrated.forward_logits = lazy_logits  # type: ignore[assignment]
    integrated.target_value = value  # type: ignore[assignment]
    return _tiviz("integrated_gradients")(lm, spec)


def _tiviz_dataset(lm: Any, spec: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """`tiviz.attribute` over all pairs at once with its default batching."""
    from tiviz.attribution import attribute
    from tiviz.data import PreferencePair

    objs = [PreferencePair(id=p["id"], prompt=p["prompt"], chosen=p["chosen"], rejected=p["rejected"])
            for p in pairs]
    t0 = time.perf_counter()
    df = attribute(lm, objs, [spec["method"]], target="logprob", max_length=4096, **spec.get("settings", {}))
    return {"time": time.perf_counter() - t0, "tokens": int(df.groupby("method").size().iloc[0])}


def _captum_plain(kind: str) -> Callable[[Any, dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """Captum's `Saliency` / `InputXGradient` on the input embeddings of the pair's padded batch, with the same
    target (summed response log-probs) written as a forward function, as a Captum user would (no frozen
    parameters)."""

    def make(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        from captum.attr import InputXGradient, Saliency

        from tiviz.attribution.targets import sequence_logp

        model = lm.model

        def run(p: dict[str, Any]) -> dict[str, Any]:
            seqs, b = _encoded(lm, p)

            def forward(emb: Any) -> Any:
                logits = model(inputs_embeds=emb, attention_mask=b.attention_mask, position_ids=b.position_ids,
                               use_cache=False).logits
                return sequence_logp(logits, b.input_ids, b.response_mask)

            t0 = time.perf_counter()
            emb = model.get_input_embeddings()(b.input_ids).detach()
            if kind == "saliency":
                attr = Saliency(forward).attribute(emb, abs=True)  # (2, L, H)
            else:
                attr = InputXGradient(forward).attribute(emb)
            scores = attr.sum(-1) * b.attention_mask  # (2, L)
            dt = time.perf_counter() - t0
            return {"time": dt, "tokens": sum(len(s) for s in seqs), "score_sum": scores.sum(-1).tolist()}

        return run

    return make


def _captum_llm(kind: str) -> Callable[[Any, dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """Captum's LLM API: `LLMGradientAttribution` over a `TextTokenInput` of the (chat-templated) prompt, target
    the response tokens (EOS included, as tiviz scores them), one sequence at a time (the API takes one)."""

    def make(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        import torch
        from captum.attr import (
            LayerGradientXActivation,
            LayerIntegratedGradients,
            LLMGradientAttribution,
            TextTokenInput,
        )

        model, tok = lm.model, lm.tokenizer
        layer = model.get_input_embeddings()
        if kind == "integrated_gradients":
            method: Any = LayerIntegratedGradients(model, layer)
        else:
            method = LayerGradientXActivation(model, layer, multiply_by_inputs=kind == "input_x_gradient")
        llm = LLMGradientAttribution(method, tok)
        kwargs = ({"n_steps": spec["n_steps"], "internal_batch_size": spec.get("internal_batch_size", 16)}
                  if kind == "integrated_gradients" else {})
        baseline = spec.get("baseline_token", 0)

        def run(p: dict[str, Any]) -> dict[str, Any]:
            seqs, _ = _encoded(lm, p)
            t0 = time.perf_counter()
            totals = []
            for s in seqs:
                prompt_text = s.prompt_text
                inp = TextTokenInput(prompt_text, tok, baselines=baseline)
                assert inp.inp_tensor[0].tolist() == s.input_ids[: s.response_start], "prompt tokens differ"
                res = llm.attribute(inp, target=torch.tensor(s.input_ids[s.response_start:]), **kwargs)
                totals.append(float(res.seq_attr.sum()))
            return {"time": time.perf_counter() - t0, "tokens": sum(len(s) for s in seqs), "score_sum": totals}

        return run

    return make


def _inseq(method: str) -> Callable[[Any, dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """inseq's `attribute` on the pair (both sides as one batch of two), target the log-probability of each
    response token (`attributed_fn="probability", logprob=True`)."""

    def make(lm: Any, spec: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        tok, model = lm.tokenizer, lm
        kwargs: dict[str, Any] = {"show_progress": False}
        if method != "attention":
            kwargs.update(attributed_fn="probability", logprob=True)
        if method == "integrated_gradients":
            kwargs.update(n_steps=spec["n_steps"], internal_batch_size=spec.get("internal_batch_size", 16))

        def run(p: dict[str, Any]) -> dict[str, Any]:
            prompt = p["prompt_text"]
            gens = [prompt + p[side] + tok.eos_token for side in ("chosen", "rejected")]
            t0 = time.perf_counter()
            out = model.attribute(input_texts=[prompt, prompt], generated_texts=gens, **kwargs)
            dt = time.perf_counter() - t0
            lengths = [len(a.target) for a in out.sequence_attributions]
            return {"time": dt, "tokens": sum(lengths), "expected_tokens": p["n_tokens"]}

        return run

    return make


def _inseq_load(spec: dict[str, Any]) -> Any:
    import inseq

    return inseq.load_model(spec["model_folder"], spec["inseq_method"])


RUNNERS: dict[str, Callable[[Any, dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "floor": _floor,
    "forward": _forward,
    **{f"tiviz:{m}": _tiviz(m) for m in TIVIZ_METHODS},
    "tiviz:integrated_gradients,no-refinement": _tiviz("integrated_gradients", ig_tolerance=0.0),
    "proposed:integrated_gradients": _proposed_ig,
    "captum:saliency": _captum_plain("saliency"),
    "captum:input_x_gradient": _captum_plain("input_x_gradient"),
    "captum-llm:gradient": _captum_llm("gradient"),
    "captum-llm:input_x_gradient": _captum_llm("input_x_gradient"),
    "captum-llm:integrated_gradients": _captum_llm("integrated_gradients"),
    **{f"inseq:{m}": _inseq(m) for m in ("saliency", "input_x_gradient", "integrated_gradients", "attention")},
}


def _warm_up(spec: dict[str, Any], lm: Any) -> None:
    """One 8-token forward+backward, so lazy initialisation is not timed (nor counted as the run's memory)."""
    import torch

    if spec["variant"].startswith("inseq:"):
        kwargs = {} if spec["variant"] == "inseq:attention" else {"attributed_fn": "probability", "logprob": True}
        lm.attribute(input_texts="Hi", generated_texts="Hi there", show_progress=False, **kwargs)
        return
    ids = torch.arange(100, 108).unsqueeze(0)
    emb = lm.model.get_input_embeddings()(ids).detach().requires_grad_(True)
    lm.model(inputs_embeds=emb, use_cache=False).logits[0, -1].max().backward()
    lm.model.zero_grad(set_to_none=True)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one variant over the spec's pairs in this process; returns times, checks and memory."""
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    if spec["variant"].startswith("inseq:"):
        spec["inseq_method"] = spec["variant"].split(":", 1)[1]
        lm = _inseq_load(spec)
    else:
        lm = _load(spec)
    run = None if spec.get("dataset") else RUNNERS[spec["variant"]](lm, spec)
    _warm_up(spec, lm)
    gc.collect()
    _reset_peak()
    base = _status_mib("VmRSS")
    if run is not None:
        results = [run(p) for p in spec["pairs"]]
    elif spec["method"] == "floor":
        results = [_floor_all(lm, spec)]
    else:
        results = [_tiviz_dataset(lm, spec, spec["pairs"])]
    return {"variant": spec["variant"], "results": results, "peak_mib": _status_mib("VmHWM") - base,
            "base_mib": base}


def _floor_all(lm: Any, spec: dict[str, Any]) -> dict[str, Any]:
    run = _floor(lm, spec)
    t0 = time.perf_counter()
    tokens = sum(run(p)["tokens"] for p in spec["pairs"])
    return {"time": time.perf_counter() - t0, "tokens": tokens}


# ------------------------------------------------------------------------------------------------ parent side


class Runner:
    """Spawns one subprocess per measurement and keeps a log of what ran."""

    def __init__(self, threads: int, inseq_python: Path | None, model_folder: str, verbose: bool = True):
        self.threads = threads
        self.inseq_python = inseq_python
        self.model_folder = model_folder
        self.verbose = verbose
        self.loads: list[float] = []

    def __call__(self, variant: str, pairs: list[dict[str, Any]], **extra: Any) -> dict[str, Any] | None:
        python = sys.executable
        if variant.startswith("inseq:"):
            if self.inseq_python is None:
                return None
            python = str(self.inseq_python)
        spec = {"variant": variant, "pairs": pairs, "threads": self.threads, "model_folder": self.model_folder,
                **extra}
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([python, __file__, "--worker", f.name], capture_output=True, text=True, env=env,
                                  cwd=ROOT)
        finally:
            os.unlink(f.name)
        self.loads.append(os.getloadavg()[0])
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-3000:]
            print(f"  {variant}: FAILED (exit {proc.returncode})\n{tail}", file=sys.stderr, flush=True)
            return {"variant": variant, "error": tail.strip().splitlines()[-1] if tail.strip() else "failed"}
        out: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        if self.verbose:
            per = [r["time"] for r in out["results"]]
            print(f"  {variant}: {sum(per) / len(per):.2f} s/item, peak +{out['peak_mib']:.0f} MiB "
                  f"({time.perf_counter() - t0:.0f} s wall, load {self.loads[-1]:.1f})", flush=True)
        return out


def _per_pair(out: dict[str, Any] | None) -> float:
    """Mean seconds per pair of a worker's results (nan when it failed or did not run)."""
    if not out or "results" not in out:
        return float("nan")
    return sum(r["time"] for r in out["results"]) / len(out["results"])


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


CHEAP = ["floor", "forward", *[f"tiviz:{m}" for m in TIVIZ_METHODS if m != "integrated_gradients"],
         "captum:saliency", "captum:input_x_gradient", "captum-llm:gradient", "captum-llm:input_x_gradient"]
CHEAP_INSEQ = ["inseq:saliency", "inseq:input_x_gradient", "inseq:attention"]
TIVIZ_IG = ["tiviz:integrated_gradients", "tiviz:integrated_gradients,no-refinement", "proposed:integrated_gradients"]
# tiviz method -> the peers doing the same job (same target, same inputs)
PEERS = {
    "tiviz:gradient": ["captum:saliency", "captum-llm:gradient", "inseq:saliency"],
    "tiviz:grad_x_input": ["captum:input_x_gradient", "captum-llm:input_x_gradient", "inseq:input_x_gradient"],
    "tiviz:tidpo": ["captum-llm:gradient", "inseq:saliency"],
    "tiviz:attention": ["inseq:attention"],
    "tiviz:integrated_gradients": ["captum-llm:integrated_gradients", "inseq:integrated_gradients"],
}


def run_table(runner: Runner, pairs: list[dict[str, Any]], rounds: int, ig_pairs: list[dict[str, Any]],
              peer_ig_steps: int, inseq_ig_steps: int, inseq: bool) -> dict[str, Any]:
    """Interleaved rounds over every variant (ratios within a round, medians over rounds), then the
    integrated-gradients peers once on `ig_pairs`, next to a floor and tiviz's IG on the same pairs."""
    variants = CHEAP + (CHEAP_INSEQ if inseq else []) + TIVIZ_IG
    per_round: list[dict[str, dict[str, Any] | None]] = []
    for r in range(rounds):
        print(f"table round {r + 1}/{rounds}", flush=True)
        order = variants if r % 2 == 0 else variants[::-1]  # alternate: no variant always runs first
        per_round.append({v: runner(v, pairs) for v in order})
    print("table: integrated gradients of the peers, once", flush=True)
    once = {"floor": runner("floor", ig_pairs),
            "tiviz:integrated_gradients": runner("tiviz:integrated_gradients", ig_pairs),
            "captum-llm:integrated_gradients": runner("captum-llm:integrated_gradients", ig_pairs,
                                                      n_steps=peer_ig_steps)}
    if inseq:
        once["inseq:integrated_gradients"] = runner("inseq:integrated_gradients", ig_pairs, n_steps=inseq_ig_steps)
    return {"rounds": per_round, "once": once}


def summarise_table(res: dict[str, Any]) -> dict[str, Any]:
    """Rows (variant: median s/pair, x floor, x forward, peak) and tiviz-vs-peer speed-ups (peer time / tiviz
    time), each ratio taken within a round and then the median over rounds."""

    def ratio(a: str, b: str, runs: list[dict[str, Any]]) -> float:
        return _median([_per_pair(rd.get(a)) / _per_pair(rd.get(b)) for rd in runs])

    rounds = res["rounds"]
    rows = []
    for v in rounds[0]:
        peaks = [rd[v]["peak_mib"] for rd in rounds if rd.get(v) and "peak_mib" in rd[v]]
        rows.append({"variant": v, "s_per_pair": _median([_per_pair(rd.get(v)) for rd in rounds]),
                     "x_floor": ratio(v, "floor", rounds), "x_forward": ratio(v, "forward", rounds),
                     "peak_mib": max(peaks) if peaks else float("nan"), "where": "rounds"})
    once = res["once"]
    for v, out in once.items():
        if v != "floor" and out is not None:
            rows.append({"variant": v + " (once)", "s_per_pair": _per_pair(out),
                         "x_floor": ratio(v, "floor", [once]), "x_forward": float("nan"),
                         "peak_mib": out.get("peak_mib", float("nan")), "where": "once"})
    speedups = []
    for mine, peers in PEERS.items():
        for peer in peers:
            runs = [once] if peer in once else rounds
            if all(rd.get(peer) is None for rd in runs):
                continue
            speedups.append({"tiviz": mine, "peer": peer + (", 16 steps" if "integrated" in peer else ""),
                             "x": ratio(peer, mine, runs), "where": "once" if runs is not rounds else "rounds"})
    return {"rows": rows, "speedups": speedups}


def run_ig_sweep(lm: Any, pairs: list[dict[str, Any]], steps: list[int], target: float,
                 threads: int) -> dict[str, Any]:
    """Completeness of Captum's LLM integrated gradients per n_steps and baseline token, on `pairs`.

    Captum's `LLMGradientAttribution` sums one IG per response token; IG is linear in the function explained, so
    that sum is the IG of the summed log-probs over the same path and quadrature nodes, and its convergence delta
    is computed here with one LayerIntegratedGradients per sequence (checked against the LLM API once, first).
    Stops at the first n_steps whose largest relative error is <= `target`.
    """
    import torch
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    from tiviz.attribution.targets import sequence_logp

    torch.set_num_threads(threads)
    model, tok = lm.model, lm.tokenizer
    layer = model.get_input_embeddings()
    seqs = [s for p in pairs for s in _encoded(lm, p)[0]]

    def logp(ids: torch.Tensor, true_ids: torch.Tensor, start: int) -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits  # (n, L, V)
        mask = torch.zeros_like(true_ids, dtype=torch.bool)
        mask[:, start:] = True
        return sequence_logp(logits, true_ids.expand(ids.shape[0], -1), mask.expand(ids.shape[0], -1))

    special = set(tok.all_special_ids)

    def rel_errors(n: int, base_tok: int, keep_special: bool) -> list[float]:
        errs = []
        for s in seqs:
            ids = torch.tensor([s.input_ids])  # (1, L)
            base = ids.clone()
            for i in range(s.response_start):  # Captum's TextTokenInput baseline: the prompt replaced
                if not (keep_special and s.input_ids[i] in special):  # skip_tokens keeps these
                    base[0, i] = base_tok
            lig = LayerIntegratedGradients(lambda x, s=s, ids=ids: logp(x, ids, s.response_start), layer)
            _, delta = lig.attribute(ids, baselines=base, n_steps=n, internal_batch_size=16,
                                     return_convergence_delta=True)
            with torch.no_grad():
                gap = (logp(ids, ids, s.response_start) - logp(base, ids, s.response_start)).abs()
            errs.append(float(delta.abs().sum() / gap.sum()))
        return errs

    s = seqs[0]
    short = s.input_ids[: s.response_start + 4]  # 4 response tokens keep the LLM API's per-token loop short
    api = LLMGradientAttribution(LayerIntegratedGradients(model, layer), tok).attribute(
        TextTokenInput(s.prompt_text, tok), target=torch.tensor(short[s.response_start:]), n_steps=4)
    ids = torch.tensor([short])
    base = torch.where(torch.arange(len(short)) < s.response_start, 0, ids)
    one = LayerIntegratedGradients(lambda x: logp(x, ids, s.response_start), layer).attribute(
        ids, baselines=base, n_steps=4).sum(-1)[0, : s.response_start]
    identity = float((api.seq_attr - one).abs().max() / one.abs().max())
    print(f"ig: LLM API sum vs one IG of the summed target: max rel diff {identity:.2e}", flush=True)

    sweep: dict[str, dict[int, list[float]]] = {}
    seconds: dict[int, float] = {}
    configs = (("token 0, special tokens kept (`skip_tokens`)", 0, True, steps),
               ("token 0 (Captum's default)", 0, False, steps[:4]),
               ("pad token (tiviz's)", int(tok.pad_token_id), False, steps[:4]))
    for name, base_tok, keep, n_list in configs:
        sweep[name] = {}
        for n in n_list:
            t0 = time.perf_counter()
            sweep[name][n] = rel_errors(n, base_tok, keep)
            seconds[n] = time.perf_counter() - t0
            print(f"ig: {name} n_steps={n}: max rel error {max(sweep[name][n]):.3f} ({seconds[n]:.0f} s)",
                  flush=True)
            if max(sweep[name][n]) <= target:
                break
    reached = [min((n for n, e in per.items() if max(e) <= target), default=None) for per in sweep.values()]
    return {"identity_rel_diff": identity, "sweep": sweep, "target": target, "n_sequences": len(seqs),
            "matched_steps": {name: n for name, n in zip(sweep, reached, strict=True)}, "seconds": seconds}


def run_scaling(runner: Runner, lm: Any, lengths: list[int], per_length: int, ig_per_length: int,
                sizes: list[int], ig_sizes: list[int], ig_max_length: int, rounds: int) -> dict[str, Any]:
    """Time and memory per pair against length (synthetic pairs) and against dataset size (sample pairs)."""
    from tiviz.data import load_pairs

    variants = ["floor", "forward", *[f"tiviz:{m}" for m in TIVIZ_METHODS]]
    by_length: dict[str, dict[int, list[dict[str, Any] | None]]] = {v: {} for v in variants}
    for r in range(rounds):
        for T in lengths:
            pairs = synthetic_pairs(lm.tokenizer, T, per_length)
            print(f"scaling: {T} tokens a side, round {r + 1}/{rounds}", flush=True)
            for v in (variants if r % 2 == 0 else variants[::-1]):
                if v == "tiviz:integrated_gradients":
                    if T > ig_max_length:
                        continue
                    out = runner(v, pairs[:ig_per_length])
                else:
                    out = runner(v, pairs)
                by_length[v].setdefault(T, []).append(out)
    records = [{"id": p.id, "prompt": p.prompt, "chosen": p.response_text("chosen"),
                "rejected": p.response_text("rejected")} for p in load_pairs(DATA)]
    by_size: dict[str, dict[int, dict[str, Any] | None]] = {}
    for v in ["floor", *[f"tiviz:{m}" for m in TIVIZ_METHODS]]:
        by_size[v] = {}
        for n in (ig_sizes if v == "tiviz:integrated_gradients" else sizes):
            print(f"scaling: {n} pairs, {v}", flush=True)
            method = "floor" if v == "floor" else v.split(":", 1)[1]
            by_size[v][n] = runner(v, records[:n], dataset=True, method=method)
    return {"by_length": by_length, "by_size": by_size}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(log-log slope, seconds per unit from a least-squares line through the origin)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0 and not math.isnan(y)]
    if len(pts) < 2:
        return float("nan"), float("nan")
    lx = [math.log(x) for x, _ in pts]
    ly = [math.log(y) for _, y in pts]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
    per_unit = sum(x * y for x, y in pts) / sum(x * x for x, _ in pts)
    return slope, per_unit


def _ig_steps(outs: list[dict[str, Any]]) -> float | None:
    """IG steps computed per sequence on average (every refinement pass counted), or None for other methods."""
    passes = [ps for o in outs for r in o["results"] for ps in [r.get("passes")] if ps]
    if not passes:
        return None
    return statistics.fmean(sum(n * k for n, k in ps) / max(n for n, _ in ps) for ps in passes)


def summarise_scaling(res: dict[str, Any]) -> dict[str, Any]:
    length_rows = []
    for v, per_T in res["by_length"].items():
        pts = []
        for T, outs in sorted(per_T.items()):
            ok = [o for o in outs if o and "results" in o]
            if not ok:
                continue
            tokens = statistics.fmean(r["tokens"] for o in ok for r in o["results"]) / 2  # per side
            pts.append({"T": T, "tokens": tokens, "s_per_pair": _median([_per_pair(o) for o in ok]),
                        "peak_mib": max(o["peak_mib"] for o in ok), "ig_steps": _ig_steps(ok)})
        slope, per_tok = fit([p["tokens"] * 2 for p in pts], [p["s_per_pair"] for p in pts])
        row = {"variant": v, "points": pts, "slope": slope, "ms_per_token": 1000 * per_tok}
        if all(p["ig_steps"] for p in pts):  # integrated gradients: also per (IG step x token)
            row["slope_per_step"], _ = fit([p["tokens"] * 2 * p["ig_steps"] for p in pts],
                                           [p["s_per_pair"] for p in pts])
        length_rows.append(row)
    size_rows = []
    for v, per_n in res["by_size"].items():
        pts = []
        for n, o in sorted(per_n.items()):
            if o and "results" in o:
                pts.append({"pairs": n, "s_total": o["results"][0]["time"], "tokens": o["results"][0]["tokens"],
                            "peak_mib": o["peak_mib"]})
        slope, per_pair = fit([p["pairs"] for p in pts], [p["s_total"] for p in pts])
        size_rows.append({"variant": v, "points": pts, "slope": slope, "s_per_pair": per_pair})
    return {"length": length_rows, "size": size_rows}


def write_plot(scaling: dict[str, Any], path: Path) -> None:
    """Time per pair against tokens, and total time against pairs, log-log, one line per variant."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("seconds per pair vs tokens per side",
                                                         "total seconds vs number of pairs"))
    for row in scaling["length"]:
        pts = row["points"]
        fig.add_trace(go.Scatter(x=[p["tokens"] for p in pts], y=[p["s_per_pair"] for p in pts],
                                 mode="lines+markers", name=f"{row['variant']} (slope {row['slope']:.2f})",
                                 legendgroup=row["variant"]), row=1, col=1)
    for row in scaling["size"]:
        pts = row["points"]
        fig.add_trace(go.Scatter(x=[p["pairs"] for p in pts], y=[p["s_total"] for p in pts],
                                 mode="lines+markers", name=f"{row['variant']} by pairs (slope {row['slope']:.2f})",
                                 legendgroup=row["variant"], line={"dash": "dot"}), row=1, col=2)
    fig.update_xaxes(type="log", title_text="tokens per side", row=1, col=1)
    fig.update_xaxes(type="log", title_text="pairs", row=1, col=2)
    fig.update_yaxes(type="log", title_text="seconds", row=1, col=1)
    fig.update_yaxes(type="log", title_text="seconds", row=1, col=2)
    fig.update_layout(title="tiviz attribution scaling (SmolLM2-135M-Instruct, CPU)", height=550, width=1200)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs="cdn", full_html=True)  # docs page: small, plotly.js from its CDN


# ------------------------------------------------------------------------------------------------ occlusion

OCCLUSION_DATA = ("train", "planted", "test")


def occlusion_pairs(tokenizer: Any, data: str, n_pairs: int, response_tokens: int) -> tuple[list[dict[str, Any]],
                                                                                               str]:
    """The pairs of an occlusion setting and their description: "train" the first pairs of train.jsonl cut to
    `response_tokens` response tokens; "planted" the planted-cue test pairs (`tiviz.planted`, seed 0, responses of
    about 65-140 tokens); "test" the first pairs of sample_data/test.jsonl, uncut."""
    from tiviz.data import load_pairs
    from tiviz.planted import planted_pairs, split_pairs

    if data == "train":
        return (comparison_pairs(tokenizer, n_pairs, response_tokens),
                f"the first {n_pairs} pairs of sample_data/train.jsonl, responses cut to their first "
                f"{response_tokens} tokens (+ EOS)")
    if data == "planted":
        total = 4 * n_pairs  # every 4th pair of a template is a test pair: grow until there are enough
        while len(test := split_pairs(planted_pairs(total, 0))[1]) < n_pairs:
            total *= 2
        test = test[:n_pairs]
        desc = (f"the first {n_pairs} planted-cue test pair(s) (`split_pairs(planted_pairs({total}, 0))[1]`, "
                "whole responses)")
    elif data == "test":
        test = load_pairs(ROOT / "sample_data" / "test.jsonl")[:n_pairs]
        desc = f"the first {n_pairs} pairs of sample_data/test.jsonl, whole responses"
    else:
        raise SystemExit(f"--occlusion-data {data!r}: one of {', '.join(OCCLUSION_DATA)}")
    return [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in test], desc


def occlusion_scorer(lm: Any, kind: str) -> Any:
    """The scorer an occlusion row explains: "likelihood" (the model alone) or "implicit_reward" (beta 0.1, the
    reference the default model loaded a second time, so the cost of two models' forwards is real but every score
    is 0)."""
    from tiviz.models import load_model
    from tiviz.scoring import make_scorer

    if kind == "likelihood":
        return make_scorer(lm)
    if kind == "implicit_reward":
        return make_scorer(lm, reference=load_model(device="cpu"), beta=0.1)
    raise SystemExit(f"--occlusion-scorers: {kind!r} is not one of likelihood, implicit_reward")


def run_occlusion(scorer: Any, batches: list[Any], rounds: int) -> dict[str, Any]:
    """Occlusion of the scorer's score with the prefix cache ("fast") and with one full forward per occluded
    token ("naive"), pair by pair, the two interleaved (their order alternating by round); wall and process CPU
    seconds, tokens forwarded (rows x length over every forward of every model), and the largest |fast - naive|."""
    import torch

    from tiviz.attribution.occlusion import scorer_occlusion, scorer_terms

    forwarded = [0]

    def count(mod: Any, args: Any, kw: dict[str, Any], out: Any) -> None:
        forwarded[0] += int(kw["inputs_embeds"].shape[:2].numel())

    models = list({id(t.model): t.model for t in scorer_terms(scorer)}.values())
    hooks = [getattr(m, m.base_model_prefix).register_forward_hook(count, with_kwargs=True) for m in models]
    scorer_occlusion(scorer, batches[0])  # warm-up
    runs: list[dict[str, Any]] = []
    scores: dict[str, list[Any]] = {"fast": [], "naive": []}
    try:
        for r in range(rounds):
            row: dict[str, Any] = {}
            for variant in (("fast", "naive") if r % 2 == 0 else ("naive", "fast")):
                wall = cpu = 0.0
                forwarded[0] = 0
                out = []
                for b in batches:
                    t0, c0 = time.perf_counter(), time.process_time()
                    out.append(scorer_occlusion(scorer, b, naive=variant == "naive")[0])
                    wall += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                row[variant] = {"wall": wall, "cpu": cpu, "tokens": forwarded[0]}
                scores[variant] = out
            runs.append(row)
            print(f"occlusion {scorer.kind} round {r + 1}: {row}", flush=True)
    finally:
        for h in hooks:
            h.remove()
    diff = max(float((f - n).abs().max()) for f, n in zip(scores["fast"], scores["naive"], strict=True))
    biggest = max(float(n.abs().max()) for n in scores["naive"])
    return {"kind": scorer.kind, "runs": runs, "max_abs_diff": diff, "max_abs_score": biggest,
            "threads": torch.get_num_threads(),
            "wall_ratio": _median([x["fast"]["wall"] / x["naive"]["wall"] for x in runs]),
            "cpu_ratio": _median([x["fast"]["cpu"] / x["naive"]["cpu"] for x in runs]),
            "token_ratio": runs[0]["fast"]["tokens"] / runs[0]["naive"]["tokens"]}


def run_precision(lm: Any, batches: list[Any]) -> dict[str, Any]:
    """The noise floor of occlusion of the log-likelihood: the naive path against itself in another batch shape
    (one row per forward) and another float32 implementation of the same forward (eager attention), and both paths
    against a float64 run (`tiviz.testing.float64_copy`: RMSNorm in float64 too). Returns each comparison's
    largest |difference| and the float64 scores' largest |score| and |f(x)|."""
    from tiviz.attribution.occlusion import occlusion, target_terms
    from tiviz.evaluation.faithfulness import reference_embedding
    from tiviz.models import load_model
    from tiviz.testing import float64_copy

    def scores(model: Any, **kw: Any) -> tuple[Any, Any]:
        t0 = time.perf_counter()
        ref = reference_embedding(model, lm.tokenizer, "pad")
        out = [occlusion(target_terms(model, None, "logprob", 0.1), b, ref, **kw) for b in batches]
        print(f"occlusion precision {kw} {time.perf_counter() - t0:.0f} s", flush=True)
        return [o[0] for o in out], [o[1] for o in out]

    eager = load_model(device="cpu", attn_implementation="eager").model
    f64 = float64_copy(lm.model)
    runs = {"fast": scores(lm.model), "naive": scores(lm.model, naive=True),
            "naive_rows1": scores(lm.model, naive=True, tokens_per_forward=1),
            "naive_eager": scores(eager, naive=True),
            "fast64": scores(f64), "naive64": scores(f64, naive=True)}
    del eager, f64

    def gap(a: str, b: str) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(runs[a][0], runs[b][0], strict=True))

    pairs = [("fast", "naive"), ("naive", "naive_rows1"), ("naive", "naive_eager"), ("fast", "naive64"),
             ("naive", "naive64"), ("naive_eager", "naive64"), ("fast64", "naive64")]
    return {"gaps": {f"{a}|{b}": gap(a, b) for a, b in pairs},
            "scale": max(float(s.abs().max()) for s in runs["naive64"][0]),
            "value_scale": max(float(v.abs().max()) for v in runs["naive64"][1]),
            "value_gap": max(float((x - y).abs().max()) for x, y in zip(runs["fast"][1], runs["naive64"][1],
                                                                         strict=True))}


PRECISION_ROWS = {
    "fast|naive": "fast (prefix cache) vs naive, float32: the benchmark's difference",
    "naive|naive_rows1": "naive vs naive in another batch shape (one row per forward), float32",
    "naive|naive_eager": "naive vs naive with eager attention (another float32 implementation)",
    "fast|naive64": "fast, float32 vs naive, float64",
    "naive|naive64": "naive, float32 vs naive, float64",
    "naive_eager|naive64": "naive with eager attention, float32 vs naive, float64",
    "fast64|naive64": "fast vs naive, both float64",
}


def occlusion_heading(data: str) -> str:
    """The section of docs/BENCHMARKS.md an occlusion setting writes (one per `--occlusion-data`)."""
    return OCCLUSION_SECTION if data == "train" else {
        "planted": f"{OCCLUSION_SECTION} (long responses: planted-cue test pairs)",
        "test": f"{OCCLUSION_SECTION} (sample_data/test.jsonl)"}[data]


def occlusion_report(args: argparse.Namespace, rows: list[dict[str, Any]], precision: dict[str, Any] | None,
                     loads: list[float], wall: float, pairs_desc: str, batches: list[Any]) -> str:
    """An occlusion section of docs/BENCHMARKS.md: one fast and one naive row per scorer, then the noise floor."""
    argv = list(args.argv)
    if "--json" in argv:  # where the raw results went is no part of the command a reader reruns
        del argv[argv.index("--json"):argv.index("--json") + 2]
    cmd = " ".join(argv)
    n_pairs = len(batches)
    n_resp = sum(int(b.response_mask.sum()) for b in batches)
    n_tok = sum(int(b.attention_mask.sum()) for b in batches)
    quantity = {"likelihood": "log-likelihood log pi(y|x)",
                "implicit_reward": "implicit reward beta (log pi - log pi_ref), beta 0.1"}
    lines = [
        occlusion_heading(args.occlusion_data), "",
        "**What.** `occlusion` (leave-one-out of the scorer's score, pad-embedding removal) as tiviz computes it "
        "(the intact sequence once with its key/value cache, then only the suffix after each occluded token, in "
        "chunks of consecutive tokens that share one cached prefix) against the naive reference (one full forward "
        "per occluded token, batched to the same token budget), on the same pairs, in one process, interleaved "
        "rounds (order alternating); ratio = fast / naive within a round, median over rounds. Scorers: "
        + "; ".join(f"{r['kind']}: {quantity[r['kind']]}" for r in rows) + ".",
        "",
        f"**Machine.** {machine()}; {rows[0]['threads']} torch thread(s); shared with other jobs, 1-minute load "
        f"average {min(loads):.1f} to {max(loads):.1f} during the run.",
        "",
        f"**Command.** `nice -n 5 .venv/bin/python benchmarks/attribution.py {cmd}` ({wall / 60:.0f} min).",
        "",
        f"**Pairs.** {pairs_desc}: {n_tok} tokens in all, {n_resp} of them response tokens (each occluded once); "
        f"{len(rows[0]['runs'])} round(s).",
        "",
        "| scorer | variant | s/pair (wall) | x naive (wall) | x naive (process CPU) | tokens forwarded "
        "| max abs difference | / largest score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in rows:
        fast = _median([x["fast"]["wall"] for x in o["runs"]]) / n_pairs
        naive = _median([x["naive"]["wall"] for x in o["runs"]]) / n_pairs
        rel = f"{o['max_abs_diff'] / o['max_abs_score']:.0e}" if o["max_abs_score"] > 0 else "n/a (every score 0)"
        lines += [
            f"| {o['kind']} | occlusion, prefix cache | {fast:.2f} | **{o['wall_ratio']:.2f}** | "
            f"{o['cpu_ratio']:.2f} | {o['runs'][0]['fast']['tokens']} ({o['token_ratio']:.2f}x) | "
            f"{o['max_abs_diff']:.1e} | {rel} |",
            f"| {o['kind']} | naive, one forward per token | {naive:.2f} | 1 | 1 | {o['runs'][0]['naive']['tokens']} "
            f"| (largest score {o['max_abs_score']:.2f}) | |",
        ]
    lines += [
        "",
        "Tokens forwarded: rows x length summed over every forward of every model's backbone (the intact forward "
        "included), the same in every round. The fast path's saving grows with the prompt's share of the "
        "sequence: an occluded token's forward starts at the token, never in the prompt; on a response of r "
        "tokens after a prompt of p, about (p + r/2) / (p + r) of the naive tokens are saved.",
    ]
    if any(o["kind"] == "implicit_reward" for o in rows):
        lines += ["", "implicit_reward: the reference is the same model loaded a second time, so both models run "
                  "(the cost is the real two-model cost) and every score is exactly 0 in both paths; its "
                  "difference column says only that."]
    if precision:
        g, scale = precision["gaps"], precision["scale"]
        lines += [
            "", f"**Precision (noise floor)**, log-likelihood, the same {n_pairs} pair(s); float64 = "
            "`tiviz.testing.float64_copy` (weights and activations in float64, RMSNorm included: transformers' "
            "RMSNorm rounds its input to float32 whatever the model's dtype). Relative = max abs difference / the "
            f"largest |score| of the float64 run ({scale:.2f} nats; the largest |f(x)| is "
            f"{precision['value_scale']:.1f} nats).", "",
            "| comparison | max abs difference | relative |", "|---|---|---|",
        ]
        lines += [f"| {PRECISION_ROWS[k]} | {g[k]:.1e} | {g[k] / scale:.0e} |" if g[k] else f"| {PRECISION_ROWS[k]} | 0 | 0 |"
                  for k in PRECISION_ROWS]
        exact = g["fast64|naive64"] < 1e-9 * scale
        floor = max(g["naive|naive64"], g["naive|naive_eager"])
        lines += [
            "",
            "Read: " + ("in float64 the two paths agree to rounding, so the cache, positions and masks are those of "
                        "the full forward; " if exact else
                        f"**in float64 the two paths differ by {g['fast64|naive64']:.1e}: more than rounding**; ")
            + f"in float32 the fast path is {g['fast|naive64']:.1e} from float64 and the naive path "
            f"{g['naive|naive64']:.1e}; fast vs naive ({g['fast|naive']:.1e}) is "
            + ("within" if g["fast|naive"] <= floor else "**above**")
            + f" the naive path's own distance from float64 and from another float32 implementation of the same "
            f"forward ({floor:.1e}); the naive path in another batch shape differs from itself by "
            f"{g['naive|naive_rows1']:.1e}. f(x) of up to {precision['value_scale']:.0f} nats is itself "
            f"{precision['value_gap']:.0e} off float64 in float32. The test suite holds the two paths to 1e-12 in "
            "float64 and 1e-5 in float32 on the tiny model (tests/test_occlusion.py).",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ report


def machine() -> str:
    """CPU model, cores, memory and versions, for the report."""
    import captum
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Python {platform.python_version()}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}, captum {captum.__version__}")


def _fmt(x: float, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report(args: argparse.Namespace, results: dict[str, Any], loads: list[float], inseq_version: str | None,
           wall: float) -> str:
    """The Markdown section for docs/BENCHMARKS.md."""
    lines = [
        SECTION, "",
        "**What.** Time and peak memory per preference pair (both sides) for each tiviz method on the offline "
        "default model (SmolLM2-135M-Instruct, float32, CPU), next to the floor and to Captum's and inseq's "
        "equivalents, on the same pairs and the same target, the response's log-probability (tiviz's default "
        "target `logprob`). **Floor**: one forward+backward of the pair as one padded batch of 2, logits at "
        "every position, the summed response log-probs, backward to the input embeddings with every parameter "
        "frozen. **Forward**: one plain batched forward under `inference_mode` (the reference for `attention`). "
        "tiviz times are whole `attribute()` calls on one pair (tokenisation and the tidy table included). Each "
        "measurement runs in its own subprocess with one torch thread; **peak** is VmHWM minus the RSS before "
        "the run, after `malloc_trim` and `echo 5 > /proc/self/clear_refs`: what the run itself added "
        "(activations, logits, gradients). Ratios are taken within an interleaved round, then the median over "
        "rounds.",
        "",
        f"**Machine.** {machine()}; inseq {inseq_version or 'not run'} (in a separate venv sharing these "
        f"packages, see benchmarks/README.md). Shared with other jobs: 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} during the run (2 cores). One torch thread per process.",
        "",
        f"**Command.** `.venv/bin/python benchmarks/attribution.py{' ' if args.argv else ''}{' '.join(args.argv)}` "
        f"({wall / 60:.0f} min).",
        "",
    ]
    if "table" in results:
        t = results["table"]
        lines += [
            f"**Per pair**: {t['n_pairs']} pairs of sample_data/train.jsonl, responses cut to their first "
            f"{t['response_tokens']} tokens (+ EOS), {t['mean_tokens']:.0f} tokens per pair; {t['rounds']} "
            f"interleaved rounds. Rows marked *once* ran once on {t['n_ig_pairs']} pair(s) (the per-token loops "
            f"of Captum's LLM API and of inseq make integrated gradients slow), their ratio against a floor "
            f"measured with them.",
            "",
            "| variant | s/pair | x floor | x forward | peak MiB |",
            "|---|---|---|---|---|",
        ]
        for row in t["rows"]:
            lines.append(f"| {row['variant']} | {_fmt(row['s_per_pair'])} | {_fmt(row['x_floor'])} | "
                         f"{_fmt(row['x_forward'])} | {_fmt(row['peak_mib'], '.0f')} |")
        if any(row["variant"].startswith("proposed:") for row in t["rows"]):
            lines += ["", "`proposed:` rows are not tiviz's code: a change under consideration, patched into "
                          "tiviz's integrated gradients by this script for its own process only (`_proposed_ig`)."]
        lines += ["", "**tiviz against its peers** (peer time / tiviz time, same pairs; > 1: tiviz is faster):",
                  "", "| tiviz | peer | speed-up |", "|---|---|---|"]
        measured = [sp for sp in t["speedups"] if not sp.get("estimate")]
        for sp in measured:
            lines.append(f"| {sp['tiviz']} | {sp['peer']}{' (once)' if sp['where'] == 'once' else ''} | "
                         f"{_fmt(sp['x'], '.1f')}x |")
        for sp in t["speedups"]:
            if sp.get("estimate"):
                lines += ["", f"Estimated, not run: {sp['tiviz']} against {sp['peer']}: about {_fmt(sp['x'], '.1f')}x "
                              f"({sp['estimate']})."]
        lines += ["", *t["notes"], ""]
    if "ig" in results:
        g = results["ig"]
        lines += [
            "**Integrated gradients: completeness** (relative error |sum of attributions - (f(x) - f(baseline))| "
            "/ |f(x) - f(baseline)|, largest over the sequences):",
            "",
            *g["tiviz_lines"],
            f"- Captum `LLMGradientAttribution` + `LayerIntegratedGradients` on {g['n_sequences']} sequences, "
            "baseline = the prompt's tokens replaced by the baseline token (the LLM API attributes the prompt "
            "only; computed as one IG of the summed log-probs per sequence, which the LLM API's sum equals: "
            f"checked, max relative difference {g['identity_rel_diff']:.1e}):",
            "",
            "| baseline token | " + " | ".join(f"n_steps {n}" for n in args.sweep_steps) + " |",
            "|---|" + "---|" * len(args.sweep_steps),
        ]
        for name, per_n in g["sweep"].items():
            cells = [_fmt(max(per_n[n]), ".3f") if n in per_n else "-" for n in args.sweep_steps]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", *g.get("notes", []), ""]
    if "scaling" in results:
        s = results["scaling"]
        lines += [
            "**Scaling with length** (synthetic pairs, each side about T tokens: prompt with chat template about "
            "half; s/pair and peak MiB; slope = d log(time) / d log(tokens), 1 = linear; ms/token from a "
            "least-squares line through the origin):",
            "",
            "| variant | " + " | ".join(f"T={T}" for T in args.lengths) + " | slope | ms/token |",
            "|---|" + "---|" * (len(args.lengths) + 2),
        ]
        for row in s["length"]:
            by_T = {p["T"]: p for p in row["points"]}
            cells = [f"{by_T[T]['s_per_pair']:.2f} s ({by_T[T]['peak_mib']:.0f})" if T in by_T else "-"
                     for T in args.lengths]
            lines.append(f"| {row['variant']} | " + " | ".join(cells) +
                         f" | {_fmt(row['slope'])} | {_fmt(row['ms_per_token'], '.1f')} |")
        for row in s["length"]:
            if "slope_per_step" in row:
                steps = ", ".join(f"T={p['T']}: {p['ig_steps']:.0f}" for p in row["points"])
                lines += ["", f"{row['variant']}: IG steps computed per sequence (refinement passes included) "
                              f"{steps}. Against tokens x steps the slope is {_fmt(row['slope_per_step'])}: the "
                              "cost per step is linear in length; longer sequences need more steps to reach the "
                              "completeness tolerance, which is what bends the per-token slope."]
        lines += [
            "",
            "**Scaling with dataset size** (the first N pairs of sample_data/train.jsonl in one `attribute` call "
            "with its default batching (the floor: one pair at a time); total seconds (peak MiB); slope = "
            "d log(total time) / d log(pairs)):",
            "",
            "| variant | pairs: total s (peak MiB) | slope | s/pair |",
            "|---|---|---|---|",
        ]
        for row in s["size"]:
            cells = ", ".join(f"{p['pairs']}: {p['s_total']:.1f} ({p['peak_mib']:.0f})" for p in row["points"])
            lines.append(f"| {row['variant']} | {cells} | {_fmt(row['slope'])} | {_fmt(row['s_per_pair'])} |")
        lines += ["", f"Plot: `{PLOT.relative_to(ROOT)}` (self-contained HTML).", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_section(text: str, path: Path = DOC) -> None:
    """Replace the section of BENCHMARKS.md that `text` heads (its first line), or append it, leaving the other
    sections alone."""
    section = text.split("\n", 1)[0]
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = doc.find(section + "\n")
    if start < 0:
        doc = doc.rstrip() + "\n\n" + text
    else:
        nxt = doc.find("\n## ", start + len(section))
        doc = doc[:start] + text + ("\n" + doc[nxt + 1:] if nxt >= 0 else "")
    path.write_text(doc)


def table_checks(raw: dict[str, Any]) -> list[str]:
    """Same target, same gradients: tiviz's values and L1 gradient norms against the floor's, Captum's saliency
    against tiviz's `gradient`; inseq's token counts against tiviz's."""
    notes = []
    rd = raw["rounds"][0]

    def field(v: str, key: str) -> list[float]:
        return [x for r in (rd.get(v) or {}).get("results", []) for x in r.get(key, [])]

    def worst(a: list[float], b: list[float]) -> float:
        return max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))

    floor_t, floor_l1 = field("floor", "target"), field("floor", "l1_sum")
    grad_t, grad_s = field("tiviz:gradient", "target"), field("tiviz:gradient", "score_sum")
    sal = field("captum:saliency", "score_sum")
    if floor_t and grad_t:
        text = (f"Checks: tiviz `gradient` against the floor: target values agree to {worst(floor_t, grad_t):.1e} "
                f"(relative), summed L1 gradient norms to {worst(floor_l1, grad_s):.1e}")
        if sal:
            text += f"; Captum `Saliency` (summed |gradient|) agrees with tiviz to {worst(grad_s, sal):.1e}"
        notes.append(text + ".")
    counts = [(r["tokens"], r["expected_tokens"]) for r in (rd.get("inseq:saliency") or {}).get("results", [])]
    if counts and any(a != b for a, b in counts):
        notes.append(f"inseq drops every EOS token (`<|im_end|>`, also inside the chat template) from the texts "
                     f"it is given, so it sees {sum(a for a, _ in counts)} tokens where tiviz and Captum see "
                     f"{sum(b for _, b in counts)}; its times are not adjusted. inseq attributes the two sides one "
                     "after the other (\"batched constrained decoding is not supported for decoder-only models\").")
    notes.append("Captum's `LLMGradientAttribution` accepts only layer methods (it asserts on `Saliency` and "
                 "`InputXGradient`): `captum-llm:gradient` is `LayerGradientXActivation(multiply_by_inputs=False)` "
                 "on the embedding layer (the signed gradient, summed over the hidden size), "
                 "`captum-llm:input_x_gradient` the same with `multiply_by_inputs=True`; like the LLM API's IG they "
                 "run one forward+backward per response token and attribute the prompt only. Plain "
                 "`captum:saliency` / `captum:input_x_gradient` attribute the same padded batch as tiviz through a "
                 "forward function that returns the summed log-probs; parameters are left trainable there, as a "
                 "Captum user would.")
    return notes


def _as_pair(p: dict[str, Any]) -> Any:
    from tiviz.data import PreferencePair

    return PreferencePair(id=p["id"], prompt=p["prompt"], chosen=p["chosen"], rejected=p["rejected"])


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        spec = json.loads(Path(argv[1]).read_text())
        print("RESULT " + json.dumps(worker(spec)), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short version (fewer pairs, rounds and steps)")
    ap.add_argument("--parts", default="ig,table,scaling,occlusion",
                    help="comma-separated: ig, table, scaling, occlusion")
    ap.add_argument("--occlusion-pairs", type=int, default=2, help="occlusion: pairs compared (default 2)")
    ap.add_argument("--occlusion-data", default="train", choices=OCCLUSION_DATA,
                    help="occlusion: train (train.jsonl, responses cut), planted (planted-cue test pairs, long "
                    "responses) or test (sample_data/test.jsonl); each writes its own section (default train)")
    ap.add_argument("--occlusion-scorers", default="likelihood",
                    help="occlusion: comma-separated scorers, likelihood and/or implicit_reward (default likelihood)")
    ap.add_argument("--occlusion-precision-pairs", type=int, default=None,
                    help="occlusion: noise floor (float64, another batch shape, eager attention) on the first N "
                    "pairs (default 2 with --occlusion-data train, else 0)")
    ap.add_argument("--occlusion-response-tokens", type=int, default=24,
                    help="occlusion, train data: each response cut to its first N tokens (default 24)")
    ap.add_argument("--occlusion-rounds", type=int, default=2, help="occlusion: interleaved rounds (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measurement process (default 1)")
    ap.add_argument("--inseq-python", default=str(DEFAULT_INSEQ) if DEFAULT_INSEQ.exists() else "",
                    help="interpreter of a venv with inseq installed; '' skips inseq")
    ap.add_argument("--json", default="", help="also write the raw results to this file")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not touch docs/")
    args = ap.parse_args(argv)
    args.argv = argv
    quick = args.quick
    args.sweep_steps = [16, 32, 64, 128, 256]
    args.lengths = [64, 128, 256, 512]
    parts = set(args.parts.split(","))

    import torch

    from tiviz.config import AttributionConfig
    from tiviz.models import load_model
    from tiviz.tokenization import encode_pair, render_prompt

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    lm = load_model(device="cpu")
    defaults = AttributionConfig()
    inseq_python = Path(args.inseq_python) if args.inseq_python else None
    inseq_version = None
    if inseq_python is not None:
        probe = subprocess.run([str(inseq_python), "-c", "import importlib.metadata as m; print(m.version('inseq'))"],
                               capture_output=True, text=True)
        inseq_version = probe.stdout.strip() if probe.returncode == 0 else None
        if inseq_version is None:
            print(f"inseq is not importable from {inseq_python}: skipping it", file=sys.stderr)
            inseq_python = None
    runner = Runner(args.threads, inseq_python, str(lm.model.config.name_or_path))
    results: dict[str, Any] = {}

    n_pairs, response_tokens = (2, 6) if quick else (3, 12)
    pairs = comparison_pairs(lm.tokenizer, n_pairs, response_tokens)
    for p in pairs:
        p["prompt_text"] = render_prompt(lm.tokenizer, p["prompt"])[0]
        p["n_tokens"] = sum(len(s) for s in encode_pair(lm.tokenizer, _as_pair(p)))
    ig_pairs = pairs[:1]  # the peers' integrated gradients cost minutes per pair

    if "ig" in parts:
        print("ig: Captum's completeness sweep", flush=True)
        results["ig"] = run_ig_sweep(lm, ig_pairs, args.sweep_steps, defaults.ig_tolerance, args.threads)
    # Captum's LLM IG is timed at 16 steps; at the n_steps that matches tiviz's completeness its time is scaled,
    # its cost being linear in n_steps (the sweep's own timings show it).
    peer_steps = 16
    if "table" in parts:
        raw = run_table(runner, pairs, 2 if quick else 3, ig_pairs, peer_steps, 16, inseq_python is not None)
        summary = summarise_table(raw)
        results["table"] = {**summary, "raw": raw, "n_pairs": len(pairs), "rounds": len(raw["rounds"]),
                            "response_tokens": response_tokens, "n_ig_pairs": len(ig_pairs),
                            "mean_tokens": statistics.fmean(p["n_tokens"] for p in pairs),
                            "notes": table_checks(raw), "peer_ig_steps": peer_steps}
    if "ig" in parts:
        results["ig"]["tiviz_lines"], results["ig"]["notes"] = ig_lines(results, defaults, peer_steps)
    if "scaling" in parts:
        raw_s = run_scaling(runner, lm, args.lengths, per_length=1 if quick else 2, ig_per_length=1,
                            sizes=[2, 8] if quick else [10, 100], ig_sizes=[2] if quick else [3, 10],
                            ig_max_length=128 if quick else 512, rounds=1)
        results["scaling"] = {**summarise_scaling(raw_s), "raw": raw_s}
        if not args.no_write:
            write_plot(results["scaling"], PLOT)
    if "occlusion" in parts:
        from tiviz.tokenization import collate, pad_token_id

        t_occ, load0 = time.perf_counter(), os.getloadavg()[0]
        occ_pairs, desc = occlusion_pairs(lm.tokenizer, args.occlusion_data, args.occlusion_pairs,
                                          args.occlusion_response_tokens)
        batches = [collate(list(encode_pair(lm.tokenizer, _as_pair(p))), pad_token_id(lm.tokenizer))
                   for p in occ_pairs]
        rows = [run_occlusion(occlusion_scorer(lm, kind), batches, args.occlusion_rounds)
                for kind in args.occlusion_scorers.split(",")]
        n_prec = (2 if args.occlusion_data == "train" else 0) if args.occlusion_precision_pairs is None \
            else args.occlusion_precision_pairs
        precision = run_precision(lm, batches[:n_prec]) if n_prec > 0 else None
        results["occlusion"] = {"rows": rows, "precision": precision}
        occ_text = occlusion_report(args, rows, precision, [load0, os.getloadavg()[0]], time.perf_counter() - t_occ,
                                    desc, batches)
        print(occ_text)
        if not args.no_write:
            write_section(occ_text)
    wall = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if parts & {"ig", "table", "scaling"}:
        text = report(args, results, runner.loads or [os.getloadavg()[0]], inseq_version, wall)
        print(text)
        if not args.no_write:
            write_section(text)
    return 0


def ig_lines(results: dict[str, Any], defaults: Any, peer_steps: int) -> tuple[list[str], list[str]]:
    """tiviz's completeness (from the table's runs), and Captum's cost at the matched n_steps."""
    g = results["ig"]
    table = results.get("table")
    lines: list[str] = []
    if table:
        for v, label in (("tiviz:integrated_gradients", "tiviz at its defaults"),
                         ("tiviz:integrated_gradients,no-refinement", "tiviz, no refinement"),
                         ("proposed:integrated_gradients", "the proposed change (patched in, not shipped): response-only LM head")):
            errs = [e for rd in table["raw"]["rounds"] for r in (rd.get(v) or {}).get("results", [])
                    for e in r["rel_error"]]
            runs = [r for rd in table["raw"]["rounds"] for r in (rd.get(v) or {}).get("results", [])]
            seq_steps = [b * n for r in runs for b, n in r.get("passes", [])]
            if errs:
                lines.append(f"- {label}: max {max(errs):.3f}, median {statistics.median(errs):.3f} over "
                             f"{len(errs)} sequence runs; {sum(seq_steps) / len(errs):.0f} IG steps computed per "
                             "sequence on average (refinement restarts at twice the steps).")
        lines[:1] = [lines[0] + f" Defaults: n_steps {defaults.n_steps}, {defaults.ig_method}, pad-token baseline on "
                     f"the response, a sequence above {defaults.ig_tolerance:.0%} recomputed with twice the steps "
                     f"up to {defaults.ig_max_steps}."] if lines else []
    notes: list[str] = []
    by = {r["variant"]: r for r in (table or {}).get("rows", [])}
    tiviz_t = by.get("tiviz:integrated_gradients (once)", {}).get("s_per_pair", float("nan"))
    captum_t = by.get("captum-llm:integrated_gradients (once)", {}).get("s_per_pair", float("nan"))
    for name, n in g["matched_steps"].items():
        if n is None:
            worst = max(g["sweep"][name])
            notes.append(f"- baseline {name}: Captum does not reach {g['target']:.0%} within {worst} steps "
                         f"(largest error {max(g['sweep'][name][worst]):.3f}); at {worst} steps its LLM API would "
                         f"take about {_fmt(captum_t * worst / peer_steps)} s/pair (estimate: its {peer_steps}-step "
                         f"time x {worst}/{peer_steps}), "
                         f"{_fmt(captum_t * worst / peer_steps / tiviz_t, '.1f')}x tiviz's {_fmt(tiviz_t)} s/pair.")
            continue
        cost = captum_t * n / peer_steps
        how = "measured" if n == peer_steps else f"estimate: its {peer_steps}-step time x {n}/{peer_steps}"
        if table:
            table["speedups"].append({
                "tiviz": "tiviz:integrated_gradients", "where": "once", "x": cost / tiviz_t,
                "peer": f"captum-llm:integrated_gradients, {n} steps, baseline {name} (the steps at which it matches "
                        "tiviz's completeness)",
                "estimate": None if n == peer_steps else
                f"Captum's time measured at {peer_steps} steps, scaled by {n}/{peer_steps}: its cost is linear in "
                "n_steps"})
        notes.append(f"- baseline {name}: Captum reaches max error <= {g['target']:.0%} at n_steps {n}; its LLM "
                     f"API then takes about {_fmt(cost)} s/pair ({how}), {_fmt(cost / tiviz_t, '.1f')}x "
                     f"tiviz's {_fmt(tiviz_t)} s/pair on the same pair.")
    secs = ", ".join(f"{n}: {t:.0f} s" for n, t in sorted(g["seconds"].items()))
    notes.append(f"- Captum's IG cost is linear in n_steps (seconds per sweep step count, same sequences: {secs}), "
                 "so its LLM API time at n steps is its 16-step time x n/16.")
    return lines, notes


if __name__ == "__main__":
    sys.exit(main())
