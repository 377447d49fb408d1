"""The CPU head (train/cpu_lm_head.py) computes what TRL's tiled head computes: same figures, same gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from trl.trainer import utils as trl_utils

from tests.tiny_model import make_tiny_model
from train import cpu_lm_head

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    tiled = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    plain = copy.deepcopy(tiled)
    trl_utils.add_fused_lm_head(tiled, outputs=OUTPUTS)
    trl_utils.add_fused_lm_head(plain, outputs=OUTPUTS)  # the trainer patches first; the CPU head replaces it
    assert cpu_lm_head._patch(plain, OUTPUTS)
    return tiled, plain


def _batch(vocab: int):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (4, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, :3] = 0  # a left-padded row
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100  # prompt positions carry no label
    labels[3] = -100  # a row without any label
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_same_figures_and_gradients_as_trls_tiled_head(models, autocast):
    tiled, plain = models
    inputs, labels = _batch(tiled.config.vocab_size)
    results = []
    for model in (tiled, plain):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**inputs, labels=labels, fused_lm_head=True)
            (out.log_probs.sum() * 0.5 + out.entropy.sum() * 0.1).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results.append((out, grads))
    (a, grads_a), (b, grads_b) = results
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-5, "rtol": 1e-4}
    assert torch.equal(a.label_mask, b.label_mask)
    for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), **tolerance, msg=name)
    assert torch.equal(a.is_top1, b.is_top1)
    torch.testing.assert_close(b.loss, a.loss, **tolerance)
    assert (b.log_probs[3] == 0).all() and (b.log_probs[:, :4] == 0).all()  # unlabelled positions are 0
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], **tolerance, msg=name)


def test_calls_it_does_not_cover_keep_trls_head(models, monkeypatch):
    tiled, plain = models
    inputs, labels = _batch(tiled.config.vocab_size)
    with torch.no_grad():
        plain_logits = plain(**inputs).logits  # generation's plain forward is untouched
        torch.testing.assert_close(plain_logits, tiled(**inputs).logits)
        monkeypatch.setattr(cpu_lm_head, "MAX_LOGITS", 0)  # too many logits to hold: TRL's tiles
        calls = []
        monkeypatch.setattr(cpu_lm_head, "plain_head_output", lambda *a: calls.append(a))
        out = plain(**inputs, labels=labels, fused_lm_head=True)
    assert calls == [] and out.log_probs.shape == labels[:, 1:].shape


def test_scaled_logits_keep_trls_head(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "tiny"))
    model.config.logit_scale = 0.5
    assert not cpu_lm_head._patch(model, OUTPUTS)


def test_a_trainer_built_inside_gets_it_and_keeps_its_autocast(tmp_path, monkeypatch):
    """End to end through TRL's DPOTrainer in bf16 mixed precision: the reference model's forward stays inside
    accelerate's autocast (set up in the constructor, after TRL's head), and the loss matches TRL's own head."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from train.common import load_tokenizer

    folder = str(make_tiny_model(tmp_path / "tiny"))
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": "The sea, the wind and the sky."}]} for i in range(4)]
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, bf16=True, use_cpu=True,
                     report_to="none", max_length=128, model_init_kwargs={"dtype": torch.float32})

    def trainer():
        return DPOTrainer(model=folder, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=load_tokenizer(folder))

    from trl.trainer import dpo_trainer

    trls_own = dpo_trainer.add_fused_lm_head
    tiled = trainer()
    with cpu_lm_head.plain_lm_head():
        plain = trainer()
    calls = []
    original = cpu_lm_head.plain_head_output
    monkeypatch.setattr(cpu_lm_head, "plain_head_output",
                        lambda *a, **k: calls.append(torch.is_autocast_enabled("cpu")) or original(*a, **k))
    losses = []
    for built in (tiled, plain):
        batch = next(iter(built.get_train_dataloader()))
        model = built.accelerator.prepare_model(built.model)
        with torch.no_grad():
            losses.append(built.compute_loss(model, batch))
    assert calls == [True, True]  # policy and reference, both under autocast
    torch.testing.assert_close(losses[1], losses[0], atol=2e-2, rtol=2e-2)
    assert dpo_trainer.add_fused_lm_head is trls_own  # the block puts TRL's function back
