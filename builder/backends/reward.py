"""A reward model as the judge: a sequence classifier that scores (prompt, response) with one logit.

The paper's ablation compares self-judging with external judges; a reward model is the cheapest one. Its score is
the raw logit (not the 0..5 rubric scale): the pair rules only compare scores within one judge, so any monotone
scale works, and the judgments table records `mode = "reward"` so the scale is never mistaken for the rubric's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from builder.backends.base import BackendMissing


class RewardScorer:
    name = "reward"

    def __init__(self, model_path: str, *, device: str | None = None, batch_size: int = 8,
                 trust_remote_code: bool = False) -> None:
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise BackendMissing(f"a reward judge needs torch and transformers ({exc.name} is missing): "
                                 "pip install 'temporal-sr[train]'") from None
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path, use_safetensors=True, trust_remote_code=trust_remote_code).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_path}: a reward model has one output label, this one has "
                             f"{self.model.config.num_labels}")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response), computed over the chat-formatted conversation."""
        import torch

        texts = [self._conversation(p, r) for p, r in zip(prompts, responses)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits
            scores.extend(float(v) for v in logits[:, 0].float().tolist())
        return scores

    def _conversation(self, prompt: str, response: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": response}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"User: {prompt}\nAssistant: {response}"  # classifiers trained without a chat template
