"""TI-DPO with uniform weights, alpha_kl 0 and gamma 0 is TRL's sigmoid DPO, on the same batch and model.

What is compared: TRL 1.16's `DPOTrainer` is built on the tiny policy (`tiny_model(seed=0)`), a different
reference (`tiny_model(seed=1)`), the tiny tokenizer and the four `tiny_pairs()` (prompt / chosen / rejected
strings; TRL tokenises them and appends EOS). One batch of the four pairs comes from TRL's own collator:
`input_ids`, `attention_mask`, `completion_mask`, right-padded, chosen rows first then rejected rows. On that exact
batch:

- TRL: `trainer.compute_loss(model, batch)`, i.e. `mean(-log sigmoid(beta * (chosen_logratios -
  rejected_logratios)))` from per-token log-probs of its fused LM head, which scores token t from the hidden state
  at t-1 wherever `completion_mask` is 1 (its labels are `input_ids` with -100 off the completion, shifted by one);
  its `rewards/*` metrics from the same log-ratios.
- tiviz: `token_logps` of the policy's and the reference's ordinary forward (entry t = log-prob of token t from
  the logits at t-1, so the same alignment), `token_log_ratios` on `completion_mask`, weights of 1,
  `weighted_dpo_delta`, `tidpo_dpo_loss(alpha_kl=0)`, `total_loss(gamma=0)`, and `preference_metrics`.

Settings matched: `loss_type=["sigmoid"]`, beta 0.1, label_smoothing 0, `f_divergence_type="reverse_kl"`,
`ld_alpha=None`, `precompute_ref_log_probs=False`, `padding_free=False`, float32 on CPU. Both tiny models have
their final norm scaled by 10 so their next-token distributions are peaked: the log-ratios are then O(1) and an
off-by-one in the alignment moves the loss by about 1e-2, far above the 1e-5 tolerance.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from tiviz.attribution.targets import token_logps
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer
from tiviz.training.losses import (
    preference_metrics,
    tidpo_dpo_loss,
    token_log_ratios,
    total_loss,
    weighted_dpo_delta,
)

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

BETA = 0.1
SHARPEN = 10.0


def sharpened(seed: int) -> Any:
    model = tiny_model(seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(SHARPEN)
    return model


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any, dict[str, torch.Tensor]]:
    from trl import DPOConfig, DPOTrainer

    policy, ref = sharpened(0), sharpened(1)
    pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in tiny_pairs()]
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        report_to=[],
        loss_type=["sigmoid"],
        beta=BETA,
        label_smoothing=0.0,
        f_divergence_type="reverse_kl",
        ld_alpha=None,
        precompute_ref_log_probs=False,
        padding_free=False,
        per_device_train_batch_size=len(pairs),
        max_length=None,
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=policy,
            ref_model=ref,
            args=args,
            train_dataset=datasets.Dataset.from_list(pairs),
            processing_class=tiny_tokenizer(chat_template=False),
        )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    return trainer, policy, ref, batch


def tiviz_dpo(
    policy: Any,
    ref: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    **kw: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Our loss on a [chosen; rejected] batch with uniform weights, alpha_kl 0, gamma 0, and TRL's metrics."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kw}
    policy_logps = token_logps(policy(**inputs).logits, input_ids)  # (2B, L)
    with torch.no_grad():
        ref_logps = token_logps(ref(**inputs).logits, input_ids)  # (2B, L)
    lr = token_log_ratios(policy_logps, ref_logps, response_mask)  # (2B, L)
    lr_w, lr_l = lr.chunk(2)  # (B, L) each: TRL's batch is chosen rows, then rejected rows
    mask_w, mask_l = response_mask.chunk(2)
    ones_w, ones_l = torch.ones_like(lr_w), torch.ones_like(lr_l)
    delta = weighted_dpo_delta(lr_w, ones_w, lr_l, ones_l, mask_w, mask_l)  # (B,)
    loss = total_loss(tidpo_dpo_loss(delta, beta=BETA, alpha_kl=0.0), 0.0, gamma=0.0)
    return loss, preference_metrics(lr_w, lr_l, mask_w, mask_l, BETA)


def trl_loss(trainer: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    for logged in trainer._metrics.values():  # {"train": defaultdict(list), "eval": ...}
        logged.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = trainer.compute_loss(trainer.model, dict(batch))
    mode = "train" if trainer.model.training else "eval"
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items() if k.startswith("rewards/")}
    return loss, metrics


def test_uniform_tidpo_equals_trl_sigmoid_dpo_loss_and_rewards(trl_setup):
    trainer, policy, ref, batch = trl_setup
    ours, our_metrics = tiviz_dpo(
        policy, ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    theirs, their_metrics = trl_loss(trainer, batch)
    assert abs(theirs.item() - 0.6931) > 0.05  # non-trivial: not log 2
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert set(their_metrics) == set(our_metrics)
    for name, value in their_metrics.items():
        assert our_metrics[name] == pytest.approx(value, abs=1e-5), name


def test_uniform_tidpo_gradient_equals_trl(trl_setup):
    trainer, policy, ref, batch = trl_setup
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.zero_grad()
    trl_loss(trainer, batch)[0].backward()
    theirs = [p.grad.clone() for p in params]
    policy.zero_grad()
    ours_loss, _ = tiviz_dpo(
        policy, ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    ours_loss.backward()
    ours = [p.grad.clone() for p in params]
    policy.zero_grad()
    scale = max(g.abs().max().item() for g in theirs)
    assert scale > 0
    for g_ours, g_theirs in zip(ours, theirs, strict=True):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-5 * scale)


def test_same_loss_when_the_batch_is_left_padded(trl_setup):
    """Our functions read the masks only: moving TRL's right padding to the left (with matching position ids,
    so the model sees the same positions) leaves the loss equal to TRL's."""
    trainer, policy, ref, batch = trl_setup
    ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    shift = (attn == 0).sum(-1)  # (2B,) padding per row
    left_ids, left_attn, left_resp = torch.empty_like(ids), torch.zeros_like(attn), torch.zeros_like(resp)
    pad_id = trainer.processing_class.pad_token_id
    for row, n in enumerate(shift.tolist()):
        left_ids[row] = torch.cat([ids.new_full((n,), pad_id), ids[row, : ids.shape[1] - n]])
        left_attn[row] = torch.roll(attn[row], n)
        left_resp[row] = torch.roll(resp[row], n)
    position_ids = (left_attn.cumsum(-1) - 1).clamp_min(0)  # (2B, L)
    with torch.no_grad():
        ours, _ = tiviz_dpo(policy, ref, left_ids, left_attn, left_resp, position_ids=position_ids)
        theirs, _ = trl_loss(trainer, batch)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
