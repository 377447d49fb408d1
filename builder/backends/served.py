"""The served backend: generation and judging through any OpenAI-compatible server (vLLM, SGLang, TGI,
`transformers serve`, hosted APIs), with the `openai` client's retries and backoff on 429, 5xx and dropped
connections, and a bounded number of requests in flight.

One request per sample, each with the row's own seed: servers differ on `n` (transformers serve ignores it), and a
per-sample request keeps every row's seed what it records. Chat prompts go through the server's chat template
(`/v1/chat/completions`), or, with `served_api: completions`, are rendered here with the snapshot's own template and
sent as text (`/v1/completions`): for a server whose chat template is not the snapshot's. Forced-mode judging needs next-token log-probabilities: the rendered prompt (the
snapshot's own chat template, from its local tokenizer) goes to `/v1/completions` with `logprobs`; a server that
returns none is a one-line error that suggests generate mode.

What the server did is checked, not what was asked: K samples of one prompt that come back identical under a
temperature above 0 mean the server decoded greedily (transformers serve does unless the model folder's
generation_config.json sets do_sample), and are refused with a one-line error naming the server.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from builder.backends.base import BackendMissing, GenRequest, GenResult, SamplingSettings, render_chat
from builder.errors import TsrError

_INSTALL = "pip install 'temporal-sr[served]'"
LOGPROBS = 20  # top next tokens asked for; the six score digits are nearly always among them


class ServedGenerator:
    name = "openai"

    def __init__(self, base_url: str | None, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 max_in_flight: int = 8, batch_size: int = 8, timeout: float = 600.0, max_retries: int = 3,
                 tokenizer_folder: str | None = None, served_api: str = "chat", serve_command: str | None = None,
                 log_dir: str | None = None) -> None:
        try:
            import openai
        except ImportError:
            raise BackendMissing(f"the openai backend needs the openai client: {_INSTALL}") from None
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if served_api not in ("chat", "completions"):
            raise ValueError(f"served_api must be chat or completions, got {served_api!r}")
        self.served_api = served_api
        self._tokenizer_folder = tokenizer_folder
        self._tokenizer = None
        self._server = None
        if serve_command:
            from builder.backends.managed_server import ManagedServer

            if not tokenizer_folder:
                raise TsrError("generate.serve_command starts an engine on a snapshot folder; this model has none")
            self._server = ManagedServer(serve_command, tokenizer_folder, log_dir)
            base_url = self._server.start()
        if not base_url:
            raise TsrError("the openai backend needs a server: generate.base_url or generate.serve_command")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.batch_size, self.max_in_flight = batch_size, max_in_flight
        # The key is read from the environment when the backend is made and held only in memory.
        self._client_args = {"base_url": self.base_url, "api_key": os.environ.get(api_key_env) or "none",
                             "timeout": timeout, "max_retries": max_retries}
        self._openai = openai
        self._loop: asyncio.AbstractEventLoop | None = None  # started on the first call (see _run)
        self._client: Any = None
        self._limit: asyncio.Semaphore | None = None

    def close(self) -> None:
        """Stop the event loop's thread, and the engine if tsr started one (its memory is free after this)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    # ---- generation -----------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest], sampling: SamplingSettings) -> Iterator[list[GenResult]]:
        call = self._chat_call if self.served_api == "chat" else self._text_call
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start : start + self.batch_size])
            results = self._run([call(r, sampling) for r in batch])
            out = [self._result(r, response) for r, response in zip(batch, results)]
            self._check_sampled(batch, out, sampling)
            yield out

    def _chat_call(self, request: GenRequest, sampling: SamplingSettings):
        async def call(client):
            return await client.chat.completions.create(
                model=self.model, messages=request.messages, temperature=sampling.temperature,
                top_p=sampling.top_p, max_tokens=sampling.max_new_tokens, seed=request.seed, n=1)

        return call

    def _text_call(self, request: GenRequest, sampling: SamplingSettings):
        """`/v1/completions` with the prompt rendered by the snapshot's own chat template, here."""
        prompt = self.server_text(self.render(request.messages))

        async def call(client):
            return await client.completions.create(
                model=self.model, prompt=prompt, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens, seed=request.seed, n=1)

        return call

    def server_text(self, rendered: str) -> str:
        """The rendered text as a server should receive it: a server tokenizes a completion prompt with the
        tokenizer's special tokens (vLLM does), so a beginning-of-sequence token the tokenizer adds itself is
        dropped here rather than sent twice."""
        if not self._tokenizer_folder:
            return rendered  # rendered elsewhere (a caller with its own template): sent as given
        bos = self._added_bos
        return rendered[len(bos):] if bos and rendered.startswith(bos) else rendered

    @functools.cached_property
    def _added_bos(self) -> str | None:
        """The beginning-of-sequence token the tokenizer puts in front of any text itself, if it does."""
        bos = self.tokenizer.bos_token
        ids = self.tokenizer("x").input_ids if bos else []
        return bos if ids and ids[0] == self.tokenizer.bos_token_id else None

    def _result(self, request: GenRequest, response: Any) -> GenResult:
        try:
            choice = response.choices[0]
            text = (choice.message.content if self.served_api == "chat" else choice.text) or ""
            usage = response.usage
            return GenResult(request.key, text, int(usage.prompt_tokens) if usage else 0,
                             int(usage.completion_tokens) if usage else 0,
                             "length" if choice.finish_reason == "length" else "stop")
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise TsrError(f"server {self.base_url}: malformed {self.served_api} completion ({exc})") from None

    def _check_sampled(self, batch: list[GenRequest], results: list[GenResult], sampling: SamplingSettings) -> None:
        if sampling.temperature <= 0:
            return
        texts: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for request, result in zip(batch, results):
            prompt = repr(request.messages)
            texts[prompt].add(result.text)
            counts[prompt] += 1
        if any(counts[p] > 1 and len(texts[p]) == 1 for p in counts):
            raise TsrError(f"server {self.base_url} returned identical samples of one prompt at temperature "
                           f"{sampling.temperature}: it decodes greedily (for transformers serve, set do_sample: "
                           "true in the model folder's generation_config.json)")

    # ---- forced-mode judging ----------------------------------------------------------------------------------

    def render(self, messages: list[dict], continuation: str = "") -> str:
        return render_chat(self.tokenizer, messages, continuation)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if not self._tokenizer_folder:
                raise TsrError(f"server {self.base_url}: forced mode renders the snapshot's chat template and this "
                               "served model has no local tokenizer; use --mode generate")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_folder)
        return self._tokenizer

    def digit_probs(self, texts: Sequence[str]) -> list[list[float]]:
        def call_for(text: str):
            async def call(client):
                return await client.completions.create(model=self.model, prompt=self.server_text(text), max_tokens=1,
                                                       temperature=0.0, logprobs=LOGPROBS)

            return call

        out = []
        for start in range(0, len(texts), self.batch_size):
            responses = self._run([call_for(text) for text in texts[start : start + self.batch_size]])
            out.extend(self._digits(response) for response in responses)
        return out

    def _digits(self, response: Any) -> list[float]:
        try:
            logprobs = response.choices[0].logprobs
            top = logprobs.top_logprobs[0] if logprobs and logprobs.top_logprobs else None
        except (AttributeError, IndexError, TypeError) as exc:
            raise TsrError(f"server {self.base_url}: malformed completion ({exc})") from None
        if not top:
            raise TsrError(f"server {self.base_url} returned no log-probabilities: forced mode needs them; "
                           "use --mode generate")
        return digit_distribution(top)

    # ---- transport --------------------------------------------------------------------------------------------

    def _run(self, calls: list) -> list:
        """Run the calls concurrently, at most max_in_flight at a time; results in call order.

        One event loop in a daemon thread and one client on it serve every batch, so connections are kept alive
        from batch to batch instead of opened again for each.
        """
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="tsr-served", daemon=True).start()
            self._client = self._openai.AsyncOpenAI(**self._client_args)
            self._limit = asyncio.Semaphore(self.max_in_flight)

        async def bounded(call):
            async with self._limit:
                return await call(self._client)

        async def main():
            return await asyncio.gather(*(bounded(call) for call in calls))

        try:
            return asyncio.run_coroutine_threadsafe(main(), self._loop).result()
        except self._openai.APIStatusError as exc:
            raise TsrError(f"server {self.base_url} answered {exc.status_code}: {_first_line(exc)}") from None
        except self._openai.APIConnectionError as exc:
            raise TsrError(f"server {self.base_url} is unreachable ({_first_line(exc)})") from None
        except (self._openai.APIResponseValidationError, ValueError) as exc:  # ValueError: a body that is not JSON
            raise TsrError(f"server {self.base_url}: malformed response ({_first_line(exc)})") from None


def digit_distribution(top_logprobs: dict[str, float]) -> list[float]:
    """P(digit d), d = 0..5, from a {token text: log-probability} map, renormalized over the six digits.

    A digit's token may come with a leading space (" 3"); both spellings count. A digit outside the top tokens
    gets probability 0; if none is there, the reply is uniform (no preference), as the hf backend's would be for
    a model with no opinion.
    """
    mass = [0.0] * 6
    for token, logprob in top_logprobs.items():
        stripped = token.strip()
        if len(stripped) == 1 and stripped in "012345":
            mass[int(stripped)] += math.exp(logprob)
    total = sum(mass)
    return [m / total for m in mass] if total > 0 else [1 / 6] * 6


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
