"""The TI-DPO trainer on the tiny model: a step trains the policy only, a few pairs are overfitted, resuming equals
not stopping, a SIGKILL mid-checkpoint loses nothing, the final folder loads, and the per-step weights are what
docs/METHOD.md §2 says."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiviz.attribution.gradient import embedding_gradients, gradient_norm
from tiviz.attribution.hybrid import hybrid_weights
from tiviz.attribution.targets import max_logit_target
from tiviz.data import load_pairs
from tiviz.errors import TivizError
from tiviz.testing import tiny_pairs
from tiviz.tokenization import collate
from tiviz.training.checkpoint import latest_good_checkpoint, list_checkpoints
from tiviz.training.data import StepOrder
from tiviz.training.metrics import read_metrics
from tiviz.training.trainer import TIDPOTrainer, read_status, request_stop
from tiviz.training.weights import random_weights, tidpo_weights, uniform_weights

from .conftest import fast_config, fast_flags, loaded_tiny, subprocess_env, tiviz_cmd

LOSS_KEYS = ("loss", "loss/dpo_w", "loss/triplet", "rewards/margins", "rewards/accuracies", "logps/chosen")


def make_trainer(tmp_path, preset="paper", name="run", seed=0, **overrides):
    return TIDPOTrainer(loaded_tiny(seed), load_pairs(tiny_pairs()), fast_config(preset, **overrides),
                        tmp_path / name)


def losses(run_dir, keys=LOSS_KEYS):
    return {r["step"]: {k: r.get(k) for k in keys} for r in read_metrics(run_dir) if "loss" in r}


# ---------------------------------------------------------------------------------------------- one step


def test_one_step_changes_the_policy_and_leaves_the_reference_unchanged(tmp_path):
    tr = make_trainer(tmp_path, "paper")
    before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in tr.reference.named_parameters()}
    metrics = tr.step(0)
    changed = [n for n, p in tr.policy.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # every weight gets a gradient in full fine-tuning
    for n, p in tr.reference.named_parameters():
        assert torch.equal(p, ref_before[n]), n
        assert not p.requires_grad
    # the first step starts from policy == reference: log-ratios 0, so L_w = log 2 and the triplet term is the margin
    assert metrics["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["loss/triplet"] == pytest.approx(tr.config.margin, abs=1e-9)
    assert metrics["loss"] == pytest.approx(math.log(2) + tr.config.gamma * tr.config.margin, abs=1e-6)
    assert metrics["kl/chosen"] == pytest.approx(0.0, abs=1e-6)


def test_lora_step_trains_the_adapter_only_and_its_disabled_policy_is_the_reference(tmp_path):
    tr = make_trainer(tmp_path, "dpo", use_lora=True, lora_r=4, lora_dropout=0.0)
    assert tr.reference is None
    base = {n: p.detach().clone() for n, p in tr.policy.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in tr.policy.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    original = loaded_tiny(0).model
    ids = torch.tensor([[5, 17, 42, 99, 100, 7]])
    tr.step(0)
    assert any(not torch.equal(p, lora[n]) for n, p in tr.policy.named_parameters() if n in lora)
    assert all(torch.equal(p, base[n]) for n, p in tr.policy.named_parameters() if n in base)
    with torch.no_grad(), tr.policy.disable_adapter():
        torch.testing.assert_close(tr.policy(input_ids=ids).logits, original(input_ids=ids).logits)
    with torch.no_grad():
        assert not torch.allclose(tr.policy(input_ids=ids).logits, original(input_ids=ids).logits)


@pytest.mark.parametrize("preset", ["dpo", "paper"])
def test_tiny_model_overfits_four_pairs(tmp_path, preset):
    tr = make_trainer(tmp_path, preset, max_steps=25, save_steps=0)
    result = tr.train()
    log = losses(tmp_path / "run")
    assert result.state == "finished" and sorted(log) == list(range(1, 26))
    assert log[1]["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-6)
    assert log[25]["rewards/accuracies"] == 1.0
    assert log[25]["loss/dpo_w"] < 0.5 * log[1]["loss/dpo_w"]
    assert log[25]["rewards/margins"] > 0.5


# ---------------------------------------------------------------------------------------------- resume


def test_resume_after_a_stop_request_equals_an_uninterrupted_run(tmp_path):
    """Stopped after step 3 by `request_stop`, resumed in a fresh trainer: steps 4-6 (anchor sampling included,
    so the restored RNG state matters) and the final weights equal the uninterrupted run's exactly."""
    full = make_trainer(tmp_path, "paper", name="full", max_steps=6, save_steps=0)
    full.train()

    part = make_trainer(tmp_path, "paper", name="part", max_steps=6, save_steps=0)
    run = tmp_path / "part"

    def stop_at_3(event):
        if event.step == 3 and event.state == "running":
            request_stop(run)

    part.progress = stop_at_3
    res = part.train()
    assert res.state == "cancelled" and res.step == 3 and res.final_dir is None
    assert read_status(run)["state"] == "cancelled" and not (run / "STOP").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step-0000003"]

    resumed = make_trainer(tmp_path, "paper", name="part", max_steps=6, save_steps=0)
    res = resumed.train(resume=True)
    assert res.state == "finished" and read_status(run)["state"] == "finished"
    want, got = losses(tmp_path / "full"), losses(run)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert got == want  # exactly: same process, same data order, restored optimizer, scheduler and RNG
    for (n, p), (_, q) in zip(full.policy.named_parameters(), resumed.policy.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    tr = make_trainer(tmp_path, "dpo", max_steps=4, save_steps=2)
    tr.train()
    run = tmp_path / "run"
    want = losses(run)
    newest = run / "checkpoints" / "step-0000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tiviz.training.checkpoint"):
        assert latest_good_checkpoint(run).name == "step-0000002"
    assert "sha256" in caplog.text and "step-0000004" in caplog.text
    again = make_trainer(tmp_path, "dpo", max_steps=4, save_steps=2)
    again.train(resume=True)
    assert losses(run) == want


def test_fresh_start_over_a_run_and_resume_without_checkpoints_are_refused(tmp_path):
    make_trainer(tmp_path, "dpo", max_steps=2, save_steps=0).train()
    with pytest.raises(TivizError, match="already holds checkpoints"):
        make_trainer(tmp_path, "dpo", max_steps=2).train()
    with pytest.raises(TivizError, match="no complete checkpoint"):
        make_trainer(tmp_path, "dpo", name="empty").train(resume=True)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_loses_nothing(tmp_path, tiny_model_dir, tiny_pairs_file):
    """`tiviz train` is paused (tests/training/pausing_cli.py) after writing the model file of checkpoint 4 and before its optimizer
    file, then SIGKILLed. Resuming drops the partial folder, restarts from checkpoint 2, and steps 3-4 come out as
    the killed run logged them; the log holds every step once, and the run finishes."""
    run = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--pairs", str(tiny_pairs_file), "--out", str(run),
            "--preset", "paper", *fast_flags(max_steps=5, save_steps=2)]
    pausing = [sys.executable, str(Path(__file__).with_name("pausing_cli.py")), "4", "model.safetensors"]
    proc = subprocess.Popen([*pausing, *args], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    marker = run / ".checkpoint-paused"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()[0].decode()[-3000:] if proc.poll() is not None else "timeout"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / ".tmp-step-0000004" / "model.safetensors").exists()
    assert not (run / "checkpoints" / ".tmp-step-0000004" / "optimizer.bin").exists()
    before = losses(run)
    assert sorted(before) == [1, 2, 3, 4]
    assert read_status(run)["state"] == "running"  # killed: nothing got to say otherwise

    done = subprocess.run(tiviz_cmd("train", "--resume", str(run)), env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = losses(run)
    assert sorted(after) == [1, 2, 3, 4, 5]
    for step in (1, 2, 3, 4):
        assert after[step] == before[step], step
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert read_status(run)["state"] == "finished"
    assert (run / "final" / "model.safetensors").exists()


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 2 pairs per step train like 1 batch of 4: same pairs (the data order depends only on the
    global batch), the loss scaled by 1/2 per micro-batch, metrics averaged."""
    big = make_trainer(tmp_path, "no-triplet", name="big", max_steps=3, save_steps=0, batch_size=4)
    big.train()
    acc = make_trainer(tmp_path, "no-triplet", name="acc", max_steps=3, save_steps=0, batch_size=2,
                       gradient_accumulation_steps=2)
    acc.train()
    la, lb = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert la[3]["rewards/margins"] > 0.1
    for step in la:
        for k in LOSS_KEYS:
            assert lb[step][k] == pytest.approx(la[step][k], rel=1e-4, abs=1e-5), (step, k)


# ---------------------------------------------------------------------------------------------- final model


@pytest.mark.parametrize("use_lora", [False, True])
def test_final_folder_loads_with_tiviz_and_transformers(tmp_path, use_lora):
    from transformers import AutoModelForCausalLM

    from tiviz.models import load_model

    tr = make_trainer(tmp_path, "dpo", max_steps=3, save_steps=0, use_lora=use_lora, lora_r=4, lora_dropout=0.0)
    ids = torch.tensor([[5, 17, 42, 99, 100, 7]])
    res = tr.train()
    with torch.no_grad():
        trained = tr.policy(input_ids=ids).logits  # merged in place for LoRA
        original = loaded_tiny(0).model(input_ids=ids).logits
    assert not torch.allclose(trained, original, atol=1e-4)
    ours = load_model(str(res.final_dir), device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(res.final_dir, use_safetensors=True)
    assert not list(res.final_dir.glob("adapter_*"))
    with torch.no_grad():
        torch.testing.assert_close(ours.model(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5)
    assert ours.tokenizer("hi")["input_ids"] == tr.tokenizer("hi")["input_ids"]
    info = json.loads((res.final_dir / "tiviz_training.json").read_text())
    assert info["steps"] == 3 and info["tidpo"]["use_lora"] is use_lora


def test_run_folder_records_config_status_and_trl_metric_names(tmp_path):
    tr = make_trainer(tmp_path, "paper", max_steps=2, save_steps=0)
    tr.train()
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["tidpo"] == tr.config.to_dict() and cfg["model"] == "tiny" and cfg["total_steps"] == 2
    status = read_status(run)
    assert status["state"] == "finished" and status["step"] == 2 and status["pid"] == os.getpid()
    rec = read_metrics(run)[-1]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "loss/dpo_w", "loss/triplet", "kl/chosen", "kl/rejected",
                "weights/entropy", "step", "epoch", "learning_rate", "elapsed_s"):
        assert key in rec, key
    assert rec["rewards/margins"] == pytest.approx(rec["rewards/chosen"] - rec["rewards/rejected"], abs=1e-6)


def test_precomputed_reference_logps_give_the_same_losses(tmp_path):
    a = make_trainer(tmp_path, "dpo", name="a", max_steps=3, save_steps=0)
    a.train()
    b = make_trainer(tmp_path, "dpo", name="b", max_steps=3, save_steps=0, precompute_ref_logps=True)
    b.train()
    assert "precompute_ref" in b.timings and "ref_forward" in b.timings
    assert b.reference is None and a.reference is not None  # nothing needs it after precomputing: freed
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    for step in la:
        for k in LOSS_KEYS:
            assert lb[step][k] == pytest.approx(la[step][k], rel=1e-5, abs=1e-6), (step, k)


# ---------------------------------------------------------------------------------------------- weights


def _step0_pair_batch(tr):
    idx = tr.order.shard(0, 0, 1, 1)[0]
    pairs = [tr.train_encoded[i] for i in idx]
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], tr.pad_id)


@pytest.mark.parametrize("preset", ["no-triplet", "paper", "authors-code"])
def test_tidpo_weights_are_hybrid_weights_of_the_l1_gradient_of_the_max_final_logit(tmp_path, preset):
    """Compared with a direct computation on a copy of the policy as it was when the step began: eval mode, the
    gradient of max_v logits[last valid position] w.r.t. the input embeddings, L1 over the hidden dimension,
    `hybrid_weights` over the span, kept on the response. Step 1 is also checked, after the policy has moved."""
    tr = make_trainer(tmp_path, preset, max_steps=2, warmup_steps=0)
    for step in (0, 1):
        snapshot = copy.deepcopy(tr.policy).eval()
        idx = tr.order.shard(step, 0, 1, 1)[0]
        pairs = [tr.train_encoded[i] for i in idx]
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], tr.pad_id)
        grad, _, _ = embedding_gradients(snapshot, batch, lambda lg, b=batch: max_logit_target(lg, b.attention_mask))
        span = batch.response_mask if tr.config.span == "response" else batch.attention_mask.bool()
        want = hybrid_weights(gradient_norm(grad, "l1"), span, lam=tr.config.lam,
                              sigma_divisor=tr.config.sigma_divisor, use_prior=tr.config.use_prior,
                              scale=tr.config.weight_scale) * batch.response_mask
        tr.step(step)
        got = tr.last_weights["weights"][:, : want.shape[1]]
        assert torch.equal(tr.last_weights["input_ids"][:, : want.shape[1]], batch.input_ids)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert (want[batch.response_mask] - 1).abs().max() > 0.05  # not uniform: the check has teeth
        torch.testing.assert_close(tidpo_weights(snapshot, batch, tr.config), want, rtol=1e-5, atol=1e-6)


def test_tidpo_weights_use_eval_mode_when_the_policy_has_dropout(tmp_path):
    tr = make_trainer(tmp_path, "paper", use_lora=True, lora_r=4, lora_dropout=0.5, gamma=0.0)
    assert not tr.fused_weights
    snapshot = copy.deepcopy(tr.policy)
    snapshot.train()
    batch = _step0_pair_batch(tr)
    first = tidpo_weights(snapshot, batch, tr.config)
    assert snapshot.training  # mode restored
    torch.testing.assert_close(tidpo_weights(snapshot, batch, tr.config), first)  # no dropout noise
    tr.step(0)
    torch.testing.assert_close(tr.last_weights["weights"][:, : first.shape[1]], first, rtol=1e-4, atol=1e-5)


def test_uniform_weights_are_ones_on_the_response_only(tmp_path):
    batch = _step0_pair_batch(make_trainer(tmp_path, "dpo"))
    w = uniform_weights(batch.response_mask)
    assert torch.equal(w, batch.response_mask.float())
    assert w.sum() == batch.response_mask.sum() > 0


def test_random_weights_are_seeded_positive_and_mean_one(tmp_path):
    tr = make_trainer(tmp_path, "random-weights")
    batch = _step0_pair_batch(tr)
    seeds = list(range(100, 100 + batch.input_ids.shape[0]))
    w = random_weights(batch, seeds, tr.config)
    resp = batch.response_mask
    assert (w[resp] > 0).all() and (w[~resp] == 0).all()
    means = (w * resp).sum(-1) / resp.sum(-1)
    torch.testing.assert_close(means, torch.ones_like(means))
    assert torch.equal(random_weights(batch, seeds, tr.config), w)  # seeded
    assert not torch.equal(random_weights(batch, [s + 1 for s in seeds], tr.config), w)
    assert w[resp].std() > 0.1  # random, not constant
    # a row's weights depend on its own seed only, not on the rest of the batch
    single = collate([tr.train_encoded[tr.order.shard(0, 0, 1, 1)[0][0]].chosen], tr.pad_id)
    one = random_weights(single, seeds[:1], tr.config)
    torch.testing.assert_close(one[0], w[0, : one.shape[1]])
    sum1 = random_weights(batch, seeds, fast_config("random-weights", weight_scale="sum1"))
    torch.testing.assert_close((sum1 * resp).sum(-1), torch.ones(len(seeds)))


def test_random_weights_preset_trains_with_seeded_weights(tmp_path):
    a = make_trainer(tmp_path, "random-weights", name="a", max_steps=2, save_steps=0, gamma=0.0)
    a.train()
    b = make_trainer(tmp_path, "random-weights", name="b", max_steps=2, save_steps=0, gamma=0.0)
    b.train()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert torch.equal(a.last_weights["weights"], b.last_weights["weights"])


# ---------------------------------------------------------------------------------------------- data order


def test_step_order_is_a_function_of_seed_and_step_and_covers_every_pair():
    order = StepOrder(n_pairs=10, global_batch=4, seed=7)
    assert order.steps_per_epoch == 3
    epoch0 = [i for s in range(3) for i in order.indices(s)]
    assert set(epoch0) == set(range(10)) and len(epoch0) == 12  # last step filled from the epoch's start
    assert StepOrder(10, 4, 7).indices(5) == order.indices(5)
    assert StepOrder(10, 4, 8).indices(0) != order.indices(0) or StepOrder(10, 4, 8).indices(1) != order.indices(1)
    assert order.permutation(0) != order.permutation(1)
    # split over processes and micro-batches, the step's pairs are the same
    for world, micro in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 1)):
        parts = [b for r in range(world) for b in order.shard(5, r, world, micro)]
        assert [i for b in parts for i in b] == order.indices(5)
        assert all(len(b) == 4 // (world * micro) for b in parts)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys, tiny_model_dir):
    from tiviz.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    code = main(["train", "--model", str(tiny_model_dir), "--pairs", str(bad), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "bad.jsonl, line 1, field 'rejected'" in err
    assert main(["train", "--pairs", str(bad)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["train", "--pairs", str(bad), "--out", str(tmp_path / "r2"), "--beta", "-1"]) == 2
    assert "'beta'" in capsys.readouterr().err


def test_cli_trains_and_resume_extends_a_finished_run(tmp_path, tiny_model_dir, tiny_pairs_file, capsys):
    from tiviz.cli import main

    run = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--pairs", str(tiny_pairs_file), "--out", str(run),
            "--preset", "dpo", *fast_flags(max_steps=2), "--eval-pairs", str(tiny_pairs_file)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "finished 2 steps" in out and "held-out accuracy" in out
    assert json.loads((run / "config.json").read_text())["preset"] == "dpo"
    assert main(["train", "--resume", str(run), "--max-steps", "3"]) == 0
    assert sorted(losses(run)) == [1, 2, 3]
    lrs = [r["learning_rate"] for r in read_metrics(run) if "loss" in r]
    assert lrs[2] == pytest.approx(1e-2 / 3)  # the linear decay re-planned for 3 steps, not the old schedule's 0
    assert any("eval/accuracy" in r for r in read_metrics(run))


def test_should_stop_flag_stops_after_the_current_step_with_a_checkpoint(tmp_path):
    tr = make_trainer(tmp_path, "dpo", max_steps=4, save_steps=0)
    tr.should_stop = lambda: True
    res = tr.train()
    assert (res.state, res.step) == ("cancelled", 1)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-0000001"]
    assert read_status(tmp_path / "run")["state"] == "cancelled"


@pytest.mark.integration
def test_real_default_model_trains_a_lora_step_and_its_final_folder_loads(tmp_path):
    """SmolLM2-135M-Instruct (dequantised from GGUF): one TI-DPO step with LoRA and a short anchor; the merged final
    folder loads with transformers and differs from the base model."""
    from transformers import AutoModelForCausalLM

    from tiviz.models import load_model

    pairs = load_pairs(tiny_pairs())[:1]
    cfg = fast_config("paper", max_steps=1, batch_size=1, use_lora=True, lora_dropout=0.0, learning_rate=1e-3,
                      anchor_max_new_tokens=4)
    tr = TIDPOTrainer(load_model(dtype="float32", device="cpu"), pairs, cfg, tmp_path / "run")
    res = tr.train()
    assert res.state == "finished" and res.last_metrics["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-5)
    ids = torch.tensor([[1, 9690, 198, 19556, 28, 905, 314, 346, 47, 2]])
    with torch.no_grad():
        after = AutoModelForCausalLM.from_pretrained(res.final_dir)(input_ids=ids).logits
        before = load_model(dtype="float32", device="cpu").model(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-4
