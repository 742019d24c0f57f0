"""tiviz inside a TRL run: `AttributionCallback` on a real `trl.DPOTrainer` (tiny model, 2 steps) writes one tidy
table per step with the per-token implicit reward, and `tiviz compare` reads the run and its checkpoint back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from tiviz.cli import main  # noqa: E402
from tiviz.errors import TableError  # noqa: E402
from tiviz.integrations.trl import AttributionCallback, run_table, step_tables  # noqa: E402
from tiviz.table import provenance, read_table  # noqa: E402
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow


def _train(out, peft: bool = False):
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in tiny_pairs()]
    args = trl.DPOConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                         report_to=[], save_strategy="steps", save_steps=2, logging_steps=1, use_cpu=True,
                         beta=0.1, max_length=128, seed=0)
    extra = {}
    if peft:
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM")
    else:
        extra["ref_model"] = tiny_model()
    trainer = trl.DPOTrainer(model=tiny_model(), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tiny_tokenizer(), **extra)
    callback = AttributionCallback.for_trainer(trainer, tiny_pairs()[:2], "gradient,implicit_reward", every=1)
    trainer.train()
    return callback


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    return out, _train(out)


def test_callback_writes_one_table_per_step(run):
    out, callback = run
    tables = step_tables(out)
    assert list(tables) == [0, 1, 2] and callback.reference_kind == "trainer.ref_model"
    first, last = read_table(tables[0]), read_table(tables[2])
    assert provenance(first)["training"]["global_step"] == 0 and provenance(last)["training"]["global_step"] == 2
    assert set(first.method) == {"gradient", "implicit_reward"}
    reward0 = first[(first.method == "implicit_reward") & first.in_response]["score"]
    reward2 = last[(last.method == "implicit_reward") & last.in_response]["score"]
    np.testing.assert_allclose(reward0, 0.0, atol=1e-5)  # before any step the policy is its reference
    assert np.abs(reward2).max() > 1e-3  # two steps at lr 1e-2 move it
    assert provenance(last)["settings"]["beta"] == 0.1  # the trainer's beta


def test_compare_reads_the_run_and_its_checkpoint(run, tmp_path, capsys):
    out, _ = run
    assert main(["compare", "--before", str(out), "--after", str(out / "checkpoint-2"),
                 "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "margins from implicit_reward" in printed
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert summary  # written from the two step tables
    before = run_table(out, "first")
    assert provenance(before)["training"]["global_step"] == 0
    assert provenance(run_table(out / "checkpoint-2"))["training"]["global_step"] == 2


def test_a_bare_model_folder_is_attributed_with_pairs(run, tmp_path):
    out, _ = run
    merged = tmp_path / "merged"  # a checkpoint copied out of its run: no tiviz tables beside it
    shutil.copytree(out / "checkpoint-2", merged)
    with pytest.raises(TableError, match="--pairs"):
        run_table(merged)
    with pytest.raises(TableError, match="implicit_reward needs the run's reference"):
        run_table(merged, pairs=tiny_pairs()[:2], methods="implicit_reward")
    df = run_table(merged, pairs=tiny_pairs()[:2], methods="gradient")
    callback_table = read_table(step_tables(out)[2])
    np.testing.assert_allclose(df[df.method == "gradient"]["score"].to_numpy(),
                               callback_table[callback_table.method == "gradient"]["score"].to_numpy(), rtol=1e-4)


def test_peft_reference_is_the_adapter_disabled_policy(tmp_path):
    callback = _train(tmp_path, peft=True)
    assert callback.reference_kind == "policy with adapters disabled"
    first = read_table(step_tables(tmp_path)[0])
    reward0 = first[(first.method == "implicit_reward") & first.in_response]["score"]
    np.testing.assert_allclose(reward0, 0.0, atol=1e-5)  # LoRA starts at zero: policy == base
