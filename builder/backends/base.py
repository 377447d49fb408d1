"""Backend-neutral generation types, the scripted fake, and the backend registry.

A backend turns chat requests into text (`generate`) and reads the judge's next-token digit distribution
(`digit_probs`). Everything model-specific (torch, transformers, vllm) lives in its own module and is imported only
when that backend is asked for, so the rest of the project (and its tests) never needs a model library.
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from builder.errors import TsrError
from builder.fingerprint import content_hash

FinishReason = Literal["stop", "length"]

# The judge's score line. Callers of `digit_probs` end their text with SCORE_PREFIX (no trailing space); the
# backend appends whatever tokens its tokenizer puts between ":" and the digit (see `score_tokens`).
SCORE_PREFIX = "Score:"
SCORE_DIGITS = tuple(range(6))  # the additive rubric's 0..5 points


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float  # 0 means greedy
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class GenRequest:
    key: str  # the caller's id for the row; results come back under it
    messages: list[dict]  # chat messages: [{"role": "user", "content": "..."}]
    seed: int  # per-sample seed: the same (messages, seed, settings) always gives the same text


@dataclass
class GenResult:
    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-sequence token included, padding excluded
    finish_reason: FinishReason  # "stop": an end-of-sequence token ended it; "length": max_new_tokens did


class Generator(Protocol):
    """What the stages and the judge need from a model backend."""

    name: str  # recorded in each row's `backend` column: "hf", "vllm", "fake"

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingSettings) -> Iterator[list[GenResult]]:
        """Yield the results of each finished batch (the caller checkpoints them), in any order of keys."""
        ...

    def digit_probs(self, texts: Sequence[str]) -> list[list[float]]:
        """P(next token is the score digit d) for d in 0..5, renormalized over those six, for each rendered
        text ending with SCORE_PREFIX."""
        ...

    def render(self, messages: list[dict], continuation: str = "") -> str:
        """The prompt text: chat template with the generation prompt, then `continuation` as the assistant's."""
        ...


class BackendMissing(TsrError):
    """A backend's optional dependency is not installed; the message names the pip extra to install."""


# ---------------------------------------------------------------------------------------------------------------
# Score-digit tokens, shared by the real backends


@dataclass(frozen=True)
class ScoreTokens:
    bridge: tuple[int, ...]  # tokens between "Score:" and the digit, e.g. a lone " " token (SmolLM2); often none
    digits: tuple[int, ...]  # the token id of each digit 0..5 in that position, e.g. " 3" or "3"


def score_tokens(encode: Callable[[str], list[int]]) -> ScoreTokens:
    """Find how this tokenizer writes "Score: N", so forced scoring reads the digit where the model would write it.

    Tokenizers differ: GPT-2 style BPEs often have " 3" as one token (bridge empty, digit " 3"), while tokenizers
    that split digits (SmolLM2, Llama 3, Qwen) write "Score: 3" as "Score" ":" " " "3" (bridge " ", digit "3").
    Reading P("3") right after ":" in the second case would ask the model for the unnatural "Score:3". So for each
    digit we encode "Score: N", strip the tokens of "Score:", and take what is left: the last token is the digit
    and the tokens before it (the same for all six digits) are appended to every text before reading logits.
    `encode` must not add special tokens.
    """
    prefix = encode(SCORE_PREFIX)
    bridge: tuple[int, ...] | None = None
    digits = []
    for digit in SCORE_DIGITS:
        ids = encode(f"{SCORE_PREFIX} {digit}")
        if ids[: len(prefix)] != prefix or len(ids) == len(prefix):
            raise ValueError(f"tokenizer writes {SCORE_PREFIX!r} differently inside {SCORE_PREFIX + ' ' + str(digit)!r}"
                             f" ({prefix} vs {ids}); forced scoring cannot read a digit token")
        rest = ids[len(prefix):]
        if bridge is None:
            bridge = tuple(rest[:-1])
        elif tuple(rest[:-1]) != bridge:
            raise ValueError(f"tokenizer puts different tokens before different digits ({bridge} vs {rest[:-1]})")
        digits.append(rest[-1])
    if len(set(digits)) != len(digits):
        raise ValueError(f"score digits 0..5 do not map to distinct tokens: {digits}")
    return ScoreTokens(bridge=bridge or (), digits=tuple(digits))


def render_chat(tokenizer: Any, messages: list[dict], continuation: str = "") -> str:
    """Apply a Hugging Face tokenizer's chat template with the generation prompt, then append `continuation`."""
    if not getattr(tokenizer, "chat_template", None):
        raise TsrError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                       "use an instruct model or add a chat_template to its tokenizer_config.json")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + continuation


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    if top == -math.inf:
        raise ValueError("softmax of all -inf")
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


# ---------------------------------------------------------------------------------------------------------------
# The scripted fake


ReplySource = Callable[[GenRequest], str] | Iterable[str] | None
ProbSource = Callable[[str], Sequence[float]] | Mapping[str, Sequence[float]] | Sequence[float] | None


class ScriptedGenerator:
    """A deterministic stand-in model for tests: no torch, one "token" per whitespace-separated word.

    replies: a function of the request, or a queue of texts handed out in request order (`enqueue` adds more),
        or None for a text derived from the request's messages and seed.
    probs: the digit distribution `digit_probs` returns: a function of the text; a table {substring: weights}
        (the first key found in the text wins, others fall back to the default); one list for every text; or None
        for a distribution derived from a hash of the text. Weights are renormalized.
    Every request and every `digit_probs` text is recorded (`requests`, `prob_texts`) for assertions.
    """

    name = "fake"

    def __init__(self, replies: ReplySource = None, *, probs: ProbSource = None, batch_size: int = 4) -> None:
        self._reply_fn: Callable[[GenRequest], str] | None = None
        self._queue: deque[str] = deque()
        if callable(replies):
            self._reply_fn = replies
        elif replies is not None:
            self._queue.extend(replies)
        else:
            self._reply_fn = _default_reply
        self._probs = probs
        self.batch_size = batch_size
        self.requests: list[GenRequest] = []
        self.prob_texts: list[str] = []

    def enqueue(self, *texts: str) -> None:
        self._queue.extend(texts)

    def render(self, messages: list[dict], continuation: str = "") -> str:
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return f"{turns}<|assistant|>\n{continuation}"

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingSettings) -> Iterator[list[GenResult]]:
        for start in range(0, len(requests), self.batch_size):
            batch = []
            for request in requests[start : start + self.batch_size]:
                self.requests.append(request)
                text = self._next_reply(request)
                finish: FinishReason = "stop"
                if len(text.split()) > sampling.max_new_tokens:
                    text, finish = " ".join(text.split()[: sampling.max_new_tokens]), "length"
                batch.append(GenResult(request.key, text, len(self.render(request.messages).split()),
                                       len(text.split()), finish))
            yield batch

    def digit_probs(self, texts: Sequence[str]) -> list[list[float]]:
        self.prob_texts.extend(texts)
        return [self._probs_for(text) for text in texts]

    def _next_reply(self, request: GenRequest) -> str:
        if self._reply_fn is not None:
            return self._reply_fn(request)
        if not self._queue:
            raise IndexError(f"ScriptedGenerator has no reply queued for request {request.key!r}")
        return self._queue.popleft()

    def _probs_for(self, text: str) -> list[float]:
        source = self._probs
        weights: Sequence[float] | None = None
        if callable(source):
            weights = source(text)
        elif isinstance(source, Mapping):
            weights = next((w for key, w in source.items() if key in text), None)
        elif source is not None:
            weights = source
        if weights is None:
            digest = content_hash(["digit_probs", text])
            weights = [1 + int(digest[2 * i : 2 * i + 2], 16) for i in SCORE_DIGITS]
        if len(weights) != len(SCORE_DIGITS) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"scripted digit weights must be six non-negative numbers, got {list(weights)}")
        total = float(sum(weights))
        return [w / total for w in weights]


def _default_reply(request: GenRequest) -> str:
    return f"Scripted reply {content_hash([request.messages, request.seed])[:8]}."


# ---------------------------------------------------------------------------------------------------------------
# Registry

# name -> "module:attribute", imported only when asked for, so `import builder.backends.base` stays light.
BACKENDS: dict[str, str] = {
    "hf": "builder.backends.hf:HFGenerator",
    "vllm": "builder.backends.vllm:VLLMGenerator",
    "openai": "builder.backends.served:ServedGenerator",
}


def get_generator(
    backend: str,
    model_path: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    **options: Any,
) -> Generator:
    """Load `model_path` (a local model folder) with the named backend.

    "fake" returns a ScriptedGenerator with default replies (the model path is ignored). vLLM schedules its own
    batches, so `batch_size` and `device` only apply to "hf"; backend-specific `options` (e.g. the vllm backend's
    tensor_parallel_size) go to the backend's constructor.
    """
    if backend == "fake":
        return ScriptedGenerator(batch_size=batch_size)
    if backend not in BACKENDS:
        raise TsrError(f"unknown backend {backend!r}; known: fake, {', '.join(sorted(BACKENDS))}")
    module_name, attribute = BACKENDS[backend].split(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    if backend == "hf":
        return factory(model_path, device=device, dtype=dtype, batch_size=batch_size,
                       trust_remote_code=trust_remote_code, **options)
    if backend == "openai":
        # The server holds the weights; the local folder (none for a served snapshot) gives the model's name, its
        # tokenizer (forced mode, served_api completions) and what a serve_command serves.
        return factory(options.pop("base_url", None), options.pop("served_model", None) or model_path,
                       batch_size=batch_size, tokenizer_folder=model_path or None, **options)
    return factory(model_path, dtype=dtype, trust_remote_code=trust_remote_code, **options)
