"""Talking to the Hub: the client, retries of transient failures, and errors as one scrubbed line.

Why a retry wrapper of our own, beside huggingface_hub's `http_backoff`: `http_backoff` retries one raw HTTP request,
and huggingface_hub already uses it inside its own methods wherever a repeat is harmless (the download's metadata
request, `preupload`). What tsr retries are whole `HfApi` calls (`create_repo`, `repo_info`, `hf_hub_download`,
`create_commit`, `create_tag`, ...), each one or more requests that `HfApi` builds, so `http_backoff` cannot wrap
them. And a commit must not be repeated blindly: huggingface_hub leaves the commit POST out of its retries because a
lost answer would commit twice; tsr checks, before it commits again, whether the lost one landed (push.py). The
wrapper keeps `http_backoff`'s policy (the same transient statuses, a doubling wait with a cap) and adds what the CLI
promises: one warning per failing call, and the number of attempts in the final error.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal
from urllib.parse import urlsplit

from builder.errors import TsrError

Warn = Callable[[str], None]

# The statuses that say "try again", as http_backoff has them: timeout, rate limit, server errors.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def make_api(token: str | None):
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read here as well as when huggingface_hub is imported, so one process can change it.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token, library_name="temporal-sr")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise TsrError(f"bad repo id {repo_id!r}: expected NAMESPACE/NAME (e.g. your-name/tsr-pairs)")


class Retry:
    """Call a Hub function, retrying transient failures with exponential backoff."""

    def __init__(self, where: str, warn: Warn, secrets: Sequence[str] = ()):
        self.where, self.warn, self.secrets = where, warn, list(secrets)

    def __call__(self, function: Callable, *args, **kwargs):
        import builder.hub as settings  # read per call: the knobs live on the package, where callers tune them

        attempts, delay = settings.RETRY_ATTEMPTS, settings.BACKOFF_SECONDS
        for attempt in range(1, attempts + 1):
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                if attempt == attempts or not transient(exc):
                    if attempt > 1:
                        exc.add_note(f"after {attempt} attempts")
                    raise
                # One warning per failing call, not one per attempt: a failure that persists then reads as two
                # lines (this warning and the error), however many attempts it took.
                if attempt == 1:
                    self.warn(f"{self.where}: {describe(exc, self.secrets)}; retrying up to "
                              f"{attempts - 1} times with backoff from {delay:g}s")
                time.sleep(delay)
                delay = min(delay * 2, settings.BACKOFF_MAX_SECONDS)
        raise AssertionError("unreachable")


def status(exc: BaseException) -> int | None:
    """The HTTP status of a Hub answer carried by `exc`, if any."""
    try:
        return exc.response.status_code  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return None


def transient(exc: BaseException) -> bool:
    """A connection error, a timeout, or an answer that says "try again" (408, 429, 5xx), also as a cause."""
    network: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    with contextlib.suppress(ImportError):  # huggingface_hub 2.x's HTTP client
        from httpx2 import TransportError

        network += (TransportError,)
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, TsrError):
            return False
        if status(seen) in TRANSIENT_STATUS or isinstance(seen, network):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_SECRETS = [
    re.compile(r"hf_[A-Za-z0-9]{6,}"),
    re.compile(r"(?i)\b(authorization|bearer)\b[\s:=]+\S+"),
    re.compile(r"(?i)\b(token|access_token|api_key|password)=[^&\s]+"),
    re.compile(r"://[^/\s@]+@"),
]


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` without tokens: the known ones, anything shaped like a Hub token, auth headers, URL credentials."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: "://***@" if m.group(0).startswith("://") else "***", text)
    return text


def describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """One line: the HTTP status, request and server message of a Hub answer, or the network error."""
    code = status(exc)
    try:
        request = exc.response.request if code is not None else None  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for a response without a request
        request = None
    if code is not None and request is not None:
        path = urlsplit(str(request.url)).path
        server = " ".join(str(getattr(exc, "server_message", None) or "").split())
        text = f"HTTP {code} for {request.method} {path}" + (f": {server}" if server else "")
    else:
        text = f"{type(exc).__name__}: " + " ".join(str(exc).split())
    return scrub(text[:400], secrets)


@contextlib.contextmanager
def hub_errors(where: str, api, access: Literal["read", "write"]) -> Iterator[None]:
    """Turn Hub and network errors into one scrubbed TsrError line; `access` is what the token needs (a pull
    reads, a push writes), named when the Hub refuses it."""
    try:
        yield
    except TsrError as exc:
        raise TsrError(scrub(str(exc), known_tokens(api))) from None
    except Exception as exc:  # noqa: BLE001 - any Hub or network failure becomes one scrubbed line
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(exc, RevisionNotFoundError):
            raise TsrError(f"{where} failed: no such revision") from None
        if isinstance(exc, RepositoryNotFoundError):
            # The Hub answers 401 for a private repo it will not show as well as for a missing one.
            raise TsrError(f"{where} failed: no such dataset repo, or no {access} access to it (check your token: "
                           "hf auth login or HF_TOKEN)") from None
        if status(exc) in (401, 403):
            raise TsrError(f"{where} failed: not authorized (HTTP {status(exc)}); check your token "
                           f"(hf auth login or HF_TOKEN) and its {access} access") from None
        attempts = next((n for n in getattr(exc, "__notes__", []) if n.startswith("after ")), None)
        suffix = f" ({attempts})" if attempts else ""
        raise TsrError(f"{where} failed: {describe(exc, known_tokens(api))}{suffix}") from None


def known_tokens(api) -> list[str]:
    """The tokens this process could send: scrubbed from every message by value, whatever their shape."""
    tokens = [getattr(api, "token", None)]
    with contextlib.suppress(Exception):
        from huggingface_hub import get_token

        tokens.append(get_token())
    return [t for t in tokens if isinstance(t, str) and t]
