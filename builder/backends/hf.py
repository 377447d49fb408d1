"""The transformers backend: batched generation, forced-score digit probabilities and hidden-state means.

torch and transformers are imported inside functions only, so importing this module costs nothing.

Per-sample reproducibility: a resumed run must write the same text for the same (request, seed) whichever other
requests share its batch. `model.generate(do_sample=True)` draws every row from one global RNG, so a row's text
depends on its batch neighbours. Here a logits processor does the sampling itself: temperature, then top-p, then
one draw per row from that row's own torch.Generator seeded with the request's seed; it then masks every other
token to -inf, so `generate(do_sample=False)` takes exactly the drawn token. Temperature 0 is plain greedy decoding.
(Left padding changes the floating-point path only in the last bits; a draw could flip only if it lands on a
boundary of the cumulative distribution to within that error.)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from builder.backends import kv_reuse
from builder.backends.base import (
    BackendMissing,
    GenRequest,
    GenResult,
    SamplingSettings,
    ScoreTokens,
    render_chat,
    score_tokens,
)
from builder.environment import environment
from builder.errors import TsrError

if TYPE_CHECKING:
    import torch

_INSTALL = "pip install 'temporal-sr[train]'"


class HFGenerator:
    """A local model folder (safetensors) loaded with transformers; `.model` and `.tokenizer` are reusable."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        *,
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        reuse_cache: bool = True,
    ) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise BackendMissing(f"the hf backend needs torch and transformers ({exc.name} is missing): {_INSTALL}") \
                from None
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left so new tokens line up
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise TsrError(f"{model_path}: tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=self.dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.eos_token_ids = _eos_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        if not self.eos_token_ids:
            raise TsrError(f"{model_path}: no eos token in generation_config.json or the tokenizer")
        forward_parameters = inspect.signature(self.model.forward).parameters
        self._keeps_logits = "logits_to_keep" in forward_parameters
        # transformers 5 renamed past_key_values to cache
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"
        self._full_attention = kv_reuse.full_attention(self.model.config)
        # Reuse of a shared prefix and of the last generation's rows (builder/backends/kv_reuse.py).
        self.reuse_cache = reuse_cache
        self._prefix = kv_reuse.PrefixCache()
        self._rows = kv_reuse.RowCache()

    # -- Generator protocol -------------------------------------------------------------------------------------

    def render(self, messages: list[dict], continuation: str = "") -> str:
        return render_chat(self.tokenizer, messages, continuation)

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingSettings) -> Iterator[list[GenResult]]:
        self._rows.clear()
        for start in range(0, len(requests), self.batch_size):
            with self._attention():
                batch = self._generate_batch(requests[start : start + self.batch_size], sampling)
            yield batch

    def digit_probs(self, texts: Sequence[str]) -> list[list[float]]:
        import torch

        tokens = self.score_tokens
        digits = torch.tensor(tokens.digits, device=self.device)
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            ids = [self._encode(text) + list(tokens.bridge) for text in texts[start : start + self.batch_size]]
            with torch.inference_mode(), self._attention():
                logits = self._last_logits(ids).float()
            # softmax over the six digit logits == the full softmax renormalized over the six digits
            out.extend(torch.softmax(logits[:, digits], dim=-1).tolist())
        self._rows.clear()
        return out

    # -- extras for the trainer and the stats -------------------------------------------------------------------

    @functools.cached_property
    def score_tokens(self) -> ScoreTokens:
        return score_tokens(self._encode)

    def hidden_state_means(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean of the last layer's hidden states over each text's tokens (texts are encoded as they are).

        An empty text has no tokens and gets a zero vector.
        """
        import torch

        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self._padded([self._encode(text) for text in texts[start : start + self.batch_size]])
            with torch.inference_mode():
                hidden = self.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[-1].float()
            mask = inputs["attention_mask"].unsqueeze(-1)
            # masked_fill, not a product: an all-padding row (empty text) may hold NaNs, and NaN * 0 is NaN
            means = hidden.masked_fill(mask == 0, 0.0).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            out.extend(means.tolist())
        return out

    # -- internals ----------------------------------------------------------------------------------------------

    def _attention(self):
        """On a CPU, transformers' SDPA attention reads grouped key/value heads in place (`enable_gqa`) instead of
        first copying them once per query head (`repeat_kv`): for a 32-row judgment prefill that copy was 40% of
        attention's time. On CUDA transformers keeps its own choice (masked GQA would fall back to a slow kernel)."""
        return environment(TRANSFORMERS_SDPA_FORCE_GQA="1") if self.device.type == "cpu" else contextlib.nullcontext()

    def _encode(self, text: str) -> list[int]:
        # Rendered chat text already holds the template's special tokens (BOS included where the template writes
        # one), as apply_chat_template(tokenize=True) would: add none here.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _padded(self, ids: list[list[int]], shared: int = 0) -> dict[str, torch.Tensor]:
        """Padded input_ids, attention_mask and the position_ids a plain forward needs to skip the padding.

        Rows are left-padded; with `shared`, the first `shared` tokens (the same in every row) stay in front and
        the padding goes between them and each row's own tokens, so a cache of the shared prefix lines up.
        """
        import torch

        width = max(1, max(len(row) - shared for row in ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([row[:shared] + [pad] * (width - len(row) + shared) + row[shared:] for row in ids],
                                 device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(row) + shared) + [1] * (len(row) - shared)
                             for row in ids], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}

    def _last_logits(self, ids: list[list[int]]) -> torch.Tensor:
        """Logits after each row's last token, forwarding only what no kept cache holds."""
        import torch

        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        reused = self._reusable(ids) if self.reuse_cache else None
        if reused is None:
            return self.model(**self._padded(ids), use_cache=False, **extra).logits[:, -1, :]
        layers, cached_mask, held = reused
        new = self._padded([row[n:] for row, n in zip(ids, held)])
        mask = torch.cat([cached_mask.to(new["attention_mask"].dtype), new["attention_mask"]], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cached_mask.shape[1]:]
        output = self.model(input_ids=new["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True,
                            **{self._cache_argument: kv_reuse.make_cache(layers)}, **extra)
        return output.logits[:, -1, :]

    def _reusable(self, ids: list[list[int]]) -> tuple[kv_reuse.Layers, torch.Tensor, list[int]] | None:
        """A kept cache that holds the start of every row: the last generation's rows, else a shared prefix."""
        import torch

        found = self._rows.extend(ids)
        if found is not None:
            return found
        shared, prefix = self._prefix.shared(self.model, ids)
        if prefix is None:
            return None
        mask = torch.ones(len(ids), shared, dtype=torch.long, device=self.device)
        return kv_reuse.expand(prefix, len(ids)), mask, [shared] * len(ids)

    def _generate_batch(self, batch: Sequence[GenRequest], sampling: SamplingSettings) -> list[GenResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        ids = [self._encode(self.render(request.messages)) for request in batch]
        shared, prefix = self._prefix.shared(self.model, ids) if self.reuse_cache else (0, None)
        inputs = self._padded(ids, shared)
        inputs.pop("position_ids")  # generate derives them from the attention mask (the gap included)
        if prefix is not None:
            inputs[self._cache_argument] = kv_reuse.make_cache(kv_reuse.expand(prefix, len(batch)))
        elif self._full_attention:
            inputs[self._cache_argument] = kv_reuse.make_cache()
        # An explicit config, so the folder's generation_config.json (its temperature, repetition penalty, ...)
        # cannot change what the sampling settings mean; only its eos ids are kept.
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=list(self.eos_token_ids), pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,  # the cache comes back for the forced scores (kv_reuse.RowCache)
        )
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            processors.append(seeded_sampler([r.seed for r in batch], sampling.temperature, sampling.top_p))
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=config, logits_processor=processors)
        width = inputs["input_ids"].shape[1]
        new_tokens = output.sequences[:, width:].tolist()
        if self.reuse_cache:
            cache = output.cache if hasattr(output, "cache") else output.past_key_values
            generated = torch.ones(len(batch), len(new_tokens[0]), dtype=inputs["attention_mask"].dtype,
                                   device=self.device)
            self._rows.keep(cache, torch.cat([inputs["attention_mask"], generated], dim=1),
                            [prompt + tokens for prompt, tokens in zip(ids, new_tokens)])
        eos = set(self.eos_token_ids)
        results = []
        for request, prompt, tokens in zip(batch, ids, new_tokens):
            end = next((i for i, token in enumerate(tokens) if token in eos), None)
            if end is None:  # never ended: ran to max_new_tokens (unfinished rows are never padded)
                content, count, finish = tokens, len(tokens), "length"
            else:  # rows that end early are padded after their eos: count up to and including it
                content, count, finish = tokens[:end], end + 1, "stop"
            text = self.tokenizer.decode(content, skip_special_tokens=True)
            results.append(GenResult(request.key, text, len(prompt), count, finish))
        return results


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """None or "auto": bf16 on CUDA (fp16 where the GPU lacks bf16), bf16 on a CPU with native bf16, else fp32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if dtype not in (None, "auto"):
        if dtype not in names:
            raise TsrError(f"unknown dtype {dtype!r}; use auto, {', '.join(names)}")
        return names[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 or AMX on x86, bf16 on Arm); emulated bf16 is slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _eos_ids(*sources: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for source in sources:
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return tuple(ids)


def seeded_sampler(seeds: Sequence[int], temperature: float, top_p: float) -> Any:
    """A LogitsProcessor that samples row i with its own generator seeded by seeds[i] (see the module docstring)."""
    return _sampler_class()(seeds, temperature, top_p)


@functools.cache
def _sampler_class() -> type:
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
            if temperature <= 0:
                raise ValueError(f"SeededSampler needs temperature > 0 (0 is greedy), got {temperature}")
            self.seeds = list(seeds)
            self.temperature = temperature
            self.top_p = top_p
            self.generators: list[torch.Generator] | None = None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.generators is None:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
            logits = scores.float() / self.temperature
            if self.top_p < 1.0:
                # nucleus: drop the low tail whose total mass is at most 1 - top_p, always keeping the top token
                # (the same rule as transformers' TopPLogitsWarper and vLLM)
                sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
                tail = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - self.top_p
                tail[..., -1] = False
                logits = logits.masked_fill(tail.scatter(1, order, tail), float("-inf"))
            # Inverse-CDF sampling: one uniform draw per row from the row's own generator, looked up in the
            # cumulative distribution. torch.multinomial would draw one exponential variate per vocabulary entry
            # (49,152 for SmolLM2), about a tenth of a CPU decode step at batch 16. 1 - rand lies in (0, 1], so a
            # token of probability 0 (cut by top-p) is never picked.
            cdf = logits.softmax(dim=-1).cumsum(dim=-1)
            draws = torch.stack([1 - torch.rand((), generator=generator, device=scores.device)
                                 for generator in self.generators])
            picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1)).clamp_(max=cdf.shape[-1] - 1)
            picks = picks.squeeze(1)
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter_(1, picks.unsqueeze(1), 0.0)

    return SeededSampler
