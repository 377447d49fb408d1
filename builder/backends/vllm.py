"""The vLLM backend, on vLLM's offline API (`vllm.LLM`, `vllm.SamplingParams`); vllm is imported lazily.

The translation between this project's requests and vLLM's is kept in pure functions (`group_requests`,
`results_from_output`, `digit_params`, `probs_from_logprobs`) that tests run without vLLM.

Seeds. Requests for the same prompt become one vLLM request with n samples, so the prompt is prefilled once. vLLM
(V1, `ParentRequest._get_child_sampling_params`) seeds the i-th of n samples with `seed + i`. A group is therefore
a run of consecutive request seeds s, s+1, ..., s+n-1 sent as (n, seed=s): every sample is drawn with exactly the
seed its row records. Requests whose seeds are not consecutive go out as separate requests (prefix caching still
shares their prompt's KV cache). With temperature 0 seeds do not matter: one greedy sample serves every request
of the prompt. vLLM's own reproducibility for a given seed holds on the same hardware, version and batch shapes
(see vLLM's docs on batch invariance); it is weaker than the hf backend's.

Prompts go to vLLM as token ids, encoded from the chat-templated text without added special tokens, the same ids
the hf backend feeds its model (a text prompt would get a second BOS on templates that write their own).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from builder.backends.base import (
    BackendMissing,
    FinishReason,
    GenRequest,
    GenResult,
    SamplingSettings,
    ScoreTokens,
    render_chat,
    score_tokens,
    softmax,
)

_INSTALL = "pip install 'temporal-sr[vllm]'"
_RAW_TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise BackendMissing(f"the vllm backend needs vLLM, which is not installed: {_INSTALL} "
                             "(CUDA machines; or use the hf backend)") from None
    return vllm


@dataclass(frozen=True)
class VLLMGroup:
    """One vLLM request: a prompt, its SamplingParams keyword arguments, and the keys each sample answers."""

    prompt: str
    params: dict[str, Any]  # SamplingParams(**params); params["n"] samples
    keys: tuple[tuple[str, ...], ...]  # keys[i]: the requests sample i answers (several when seeds coincide)

    @property
    def n(self) -> int:
        return self.params["n"]


def group_requests(
    requests: Sequence[GenRequest], sampling: SamplingSettings, render: Callable[[list[dict]], str]
) -> list[VLLMGroup]:
    """Requests -> vLLM requests: same prompt and consecutive seeds -> one request with n samples (module doc)."""
    by_prompt: dict[str, list[GenRequest]] = {}
    for request in requests:
        by_prompt.setdefault(render(request.messages), []).append(request)
    base = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens}
    groups = []
    for prompt, members in by_prompt.items():
        if sampling.temperature == 0:
            groups.append(VLLMGroup(prompt, {**base, "n": 1, "seed": None}, (tuple(r.key for r in members),)))
            continue
        by_seed: dict[int, list[str]] = {}
        for request in members:
            by_seed.setdefault(request.seed, []).append(request.key)
        runs: list[list[int]] = []
        for seed in sorted(by_seed):
            if runs and seed == runs[-1][-1] + 1:
                runs[-1].append(seed)
            else:
                runs.append([seed])
        for run in runs:
            keys = tuple(tuple(by_seed[seed]) for seed in run)
            groups.append(VLLMGroup(prompt, {**base, "n": len(run), "seed": run[0]}, keys))
    return groups


def finish_reason(reason: str | None) -> FinishReason:
    """vLLM's CompletionOutput.finish_reason -> ours. "stop" covers eos (we set no stop strings)."""
    if reason in ("stop", "length"):
        return reason  # type: ignore[return-value]
    raise RuntimeError(f"vLLM returned an unfinished or aborted sample (finish_reason={reason!r})")


def results_from_output(group: VLLMGroup, output: Any) -> list[GenResult]:
    """A RequestOutput (prompt_token_ids, outputs[i].index/.text/.token_ids/.finish_reason) -> GenResult rows."""
    if len(output.outputs) != group.n:
        raise RuntimeError(f"vLLM returned {len(output.outputs)} samples for a request of n={group.n}")
    prompt_tokens = len(output.prompt_token_ids)
    rows = []
    for position, completion in enumerate(output.outputs):
        index = getattr(completion, "index", position)
        for key in group.keys[index]:
            rows.append(GenResult(key, completion.text, prompt_tokens, len(completion.token_ids),
                                  finish_reason(completion.finish_reason)))
    return rows


def digit_params(tokens: ScoreTokens, processed_logprobs: bool) -> dict[str, Any]:
    """SamplingParams kwargs that read the score digit's distribution in one step.

    `allowed_token_ids` restricts the step to the six digits. With the engine's logprobs_mode "processed_logprobs"
    the returned logprobs are taken after that mask (temperature 1, no top-p), so the six digits are the top six
    and exact. Older vLLM returns raw logprobs: the top 20 of the whole vocabulary plus the sampled digit, so a
    digit outside the top 20 reads as probability 0 (it is rare next to the ones inside, but not exactly 0).
    """
    return {"n": 1, "max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "seed": 0,
            "allowed_token_ids": list(tokens.digits),
            "logprobs": len(tokens.digits) if processed_logprobs else _RAW_TOP_LOGPROBS}


def probs_from_logprobs(logprobs: Mapping[int, Any], digits: Sequence[int]) -> list[float]:
    """One position's {token_id: Logprob | float} -> P(digit) renormalized over `digits` (missing: probability 0)."""
    values = []
    for token in digits:
        entry = logprobs.get(token)
        value = -math.inf if entry is None else float(getattr(entry, "logprob", entry))
        values.append(value)
    return softmax(values)


class VLLMGenerator:
    """A local model folder served by an in-process vLLM engine.

    chunk_size: requests per yielded batch (each one is checkpointed by the caller); vLLM batches internally.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        chunk_size: int = 1024,
        **engine_options: Any,
    ) -> None:
        vllm = import_vllm()
        from vllm.engine.arg_utils import EngineArgs

        self.chunk_size = chunk_size
        self._processed = "logprobs_mode" in {f.name for f in dataclasses.fields(EngineArgs)}
        options = {"logprobs_mode": "processed_logprobs"} if self._processed else {}
        options.update(engine_options)
        self.llm = vllm.LLM(
            model=model_path, tokenizer=model_path, dtype=dtype or "auto", trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True, load_format="safetensors", seed=0, **options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._sampling_params = vllm.SamplingParams

    def render(self, messages: list[dict], continuation: str = "") -> str:
        return render_chat(self.tokenizer, messages, continuation)

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingSettings) -> Iterator[list[GenResult]]:
        groups = group_requests(requests, sampling, self.render)
        chunk: list[VLLMGroup] = []
        size = 0
        for group in groups:
            chunk.append(group)
            size += sum(len(keys) for keys in group.keys)
            if size >= self.chunk_size:
                yield self._run(chunk)
                chunk, size = [], 0
        if chunk:
            yield self._run(chunk)

    def digit_probs(self, texts: Sequence[str]) -> list[list[float]]:
        tokens = score_tokens(self._encode)
        params = self._sampling_params(**digit_params(tokens, self._processed))
        prompts = [{"prompt_token_ids": self._encode(text) + list(tokens.bridge)} for text in texts]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [probs_from_logprobs(output.outputs[0].logprobs[0], tokens.digits) for output in outputs]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _run(self, groups: list[VLLMGroup]) -> list[GenResult]:
        prompts = [{"prompt_token_ids": self._encode(group.prompt)} for group in groups]
        params = [self._sampling_params(**group.params) for group in groups]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)  # returned in input order
        return [row for group, output in zip(groups, outputs) for row in results_from_output(group, output)]
