"""On the CPU, DPO's per-token log-probabilities from one projection of the labelled positions, not TRL's tiles.

TRL's DPOTrainer patches the policy and the reference with a fused LM head (`trl.trainer.utils.add_fused_lm_head`):
the projection onto the vocabulary runs in tiles that a Triton kernel folds into online log-softmax statistics, so
the [tokens, vocab] logits never exist at once. At 70B on GPUs that is the right trade. Without Triton (the CPU) each
tile goes through about a dozen torch element-wise passes, forward and again backward, and every position is
scored, prompt and padding included: on the embedded 135M model that fallback took about 60% of a cpu-demo DPO step
(torch profiler: 6.7 s of 11.0 s over three steps).

On the CPU, a trainer built inside `plain_lm_head()` has both models re-patched. The head projects only the positions that have a label, in
one matrix product under the caller's autocast (as TRL's tiles do), and one fp32 log-softmax gives the same
per-token figures: the label's log-probability, the entropy, the mean logit, whether the label is the top token and
log(sum p^2). Autograd gives the backward. The definitions are TRL's; only the rounding differs (one product and one
softmax where TRL sums tiles with an online log-sum-exp). Where the plain path does not apply, TRL's head stays: a
temperature or an fp32 head asked of it, a model that scales or soft-caps its logits, a vision-language wrapper, a mixture of experts, and any call whose
logits would exceed `MAX_LOGITS` elements (memory: TRL's tiles never hold them).
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Iterator
from typing import Any

from builder.environment import attribute

# Above this many logits (1 GiB in fp32) a call takes TRL's tiled head, which never holds them all.
MAX_LOGITS = 1 << 28

_SCALING_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                       "logits_scaling")


@contextlib.contextmanager
def plain_lm_head() -> Iterator[None]:
    """Build a DPOTrainer inside this block and its models get the plain head right after TRL's.

    The re-patch goes where TRL patches (its `add_fused_lm_head` call), so whatever wraps the forward afterwards
    still wraps it: accelerate's autocast around the reference model, set up in the trainer's constructor.
    With a TRL that no longer patches through that name, nothing changes.
    """
    from trl.trainer import dpo_trainer

    tiled = getattr(dpo_trainer, "add_fused_lm_head", None)
    if tiled is None:
        yield
        return

    signature = inspect.signature(tiled)

    def add_heads(model, *args, **kwargs):
        tiled(model, *args, **kwargs)
        called = signature.bind(model, *args, **kwargs)
        called.apply_defaults()
        options = called.arguments
        # a temperature or an fp32 head is TRL's to apply
        if options.get("temperature", 1.0) == 1.0 and not options.get("cast_lm_head_to_fp32", False):
            _patch(model, tuple(options.get("outputs", ("log_probs",))))

    with attribute(dpo_trainer, "add_fused_lm_head", add_heads):
        yield


def _fits(model: Any) -> bool:
    config = model.config
    return (config.get_text_config() is config
            and all(getattr(config, name, None) is None for name in _SCALING_ATTRIBUTES)
            and not getattr(config, "output_router_logits", False)
            and getattr(model, "base_model", None) is not None
            and model.get_output_embeddings() is not None)


def _patch(model: Any, outputs: tuple[str, ...]) -> bool:
    if not _fits(model):
        return False
    tiled_forward = model.forward  # TRL's patch: keeps every other call (generation, a plain forward, shift_labels)

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        head = self.get_output_embeddings()
        if (not fused_lm_head or shift_labels is not None or labels is None
                or int((labels[:, 1:] != -100).sum()) * head.weight.shape[0] > MAX_LOGITS):
            return tiled_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        return plain_head_output(head, hidden, labels[:, 1:], outputs, num_items_in_batch)

    model.forward = types.MethodType(forward, model)
    return True


def plain_head_output(head: Any, hidden: Any, labels: Any, outputs: tuple[str, ...],
                      num_items_in_batch: Any = None) -> Any:
    """TRL's FusedCausalLMOutput for `hidden` [batch, seq, dim] and next-token `labels` [batch, seq] (-100: none).

    `outputs` names the figures beside `log_probs` to compute, as TRL's head takes them (the others are None).
    """
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    mask = labels != -100
    targets = labels[mask]
    logits = head(hidden[mask]).float()  # [labelled tokens, vocab]
    log_softmax = logits.log_softmax(dim=-1)
    log_probs = log_softmax.gather(1, targets.unsqueeze(1)).squeeze(1)

    def per_position(values):
        # masked_scatter keeps the output connected to the model even when no position has a label
        return None if values is None else values.new_zeros(mask.shape).masked_scatter(mask, values)

    # TRL's entropy is differentiable, the other three are not
    entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1) if "entropy" in outputs else None
    with torch.no_grad():
        mean_logits = logits.mean(dim=-1) if "mean_logits" in outputs else None
        # argmax takes the first of equal maxima, as TRL's kernel does
        is_top1 = logits.argmax(dim=-1) == targets if "is_top1" in outputs else None
        log_sum_sq_probs = torch.logsumexp(2 * log_softmax, dim=-1) if "log_sum_sq_probs" in outputs else None

    log_probs = per_position(log_probs)
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(
        loss=loss, log_probs=log_probs, entropy=per_position(entropy), log_sum_sq_probs=per_position(log_sum_sq_probs),
        mean_logits=per_position(mean_logits), is_top1=per_position(is_top1), label_mask=mask, aux_loss=None,
    )
