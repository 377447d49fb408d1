"""Where served snapshots are served: the store's endpoints.json, and the check `tsr models add --served` runs.

A served snapshot's identity (its row in the snapshots table, pushed with the data) is the model name the server
knows and its revision; where it is served is a property of one deployment, not of the data, so the URL and the
name of the environment variable holding its API key live in `<store>/endpoints.json`, which no version lists and
no push sends. Re-adding the same model at another URL keeps the snapshot id and moves the endpoint. A key is never
written anywhere: only the variable's name is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from builder.errors import TsrError

FILE = "endpoints.json"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # the API root, e.g. http://10.0.0.5:8000/v1 or https://api.openai.com/v1
    api_key_env: str = DEFAULT_KEY_ENV


def check_url(url: str) -> str:
    """An http(s) API root without credentials in it (a key belongs in an environment variable)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TsrError(f"--served {url!r}: not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    if parts.username or parts.password:
        raise TsrError("--served: the URL holds credentials; put the API key in an environment variable "
                       "(--api-key-env) instead, so it is never stored")
    return url.strip().rstrip("/")


def get_json(url: str, headers: dict | None = None, timeout: float = 30.0):
    """GET a JSON document with the standard library (these few calls need no HTTP client of their own)."""
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def served_model_info(endpoint: Endpoint, model: str, timeout: float = 30.0) -> dict:
    """The server's /models entry for `model` (a one-line error when the server is down or does not serve it)."""
    import urllib.error

    key = os.environ.get(endpoint.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        listed = {entry["id"]: entry for entry in get_json(f"{endpoint.base_url}/models", headers, timeout)["data"]}
    except urllib.error.HTTPError as exc:
        raise TsrError(f"server {endpoint.base_url} answered {exc.code} to GET /models") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TsrError(f"server {endpoint.base_url} is unreachable ({reason})") from None
    except (ValueError, KeyError, TypeError):
        raise TsrError(f"server {endpoint.base_url}: GET /models is not an OpenAI model list") from None
    if model not in listed:
        shown = ", ".join(sorted(listed)[:5]) or "nothing"
        raise TsrError(f"server {endpoint.base_url} does not serve model {model!r} (it lists: {shown})")
    return listed[model]


def reported_revision(endpoint: Endpoint, entry: dict) -> str | None:
    """The revision the server reports for its model: a `revision` in its /models entry, or TGI's /info
    model_sha. OpenAI's and vLLM's lists carry none; then the caller pins the revision with --revision."""
    if isinstance(entry.get("revision"), str):
        return entry["revision"]
    try:
        info = get_json(f"{endpoint.base_url.removesuffix('/v1')}/info", timeout=10.0)
    except (OSError, ValueError):
        return None
    sha = info.get("model_sha") if isinstance(info, dict) else None
    return sha if isinstance(sha, str) and sha else None


def read_endpoints(root: os.PathLike | str) -> dict[str, Endpoint]:
    path = Path(root) / FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text("utf-8"))
        return {snapshot_id: Endpoint(**value) for snapshot_id, value in raw.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise TsrError(f"{path}: unreadable endpoints file ({exc})") from None


def endpoint_for(root: os.PathLike | str, snapshot_id: str, name: str) -> Endpoint:
    found = read_endpoints(root).get(snapshot_id)
    if found is None:
        raise TsrError(f"snapshot {snapshot_id} ({name}) is served, and this store has no endpoint for it (a pull "
                       f"brings the data, not where it is served): tsr models add --served URL --model MODEL")
    return found


def endpoints_payload(current: dict[str, Endpoint], snapshot_id: str, endpoint: Endpoint) -> bytes:
    """endpoints.json with `snapshot_id` pointing at `endpoint`."""
    merged = {**{k: asdict(v) for k, v in current.items()}, snapshot_id: asdict(endpoint)}
    return (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode("utf-8")
