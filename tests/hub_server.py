"""A minimal Hugging Face Hub on 127.0.0.1 for tests: the endpoints that huggingface_hub 2.4 and datasets 5.2 call.

Start it with `HubServer(folder).start()` and point the client at `server.url` (HF_ENDPOINT, read when
huggingface_hub is imported, or `HfApi(endpoint=...)`). Repos live under `folder`: content-addressed blobs on
disk, commits and refs in memory. Every file is committed "regular" (base64 inside the commit's NDJSON body), so
no LFS or Xet storage is needed; the server answers `preupload` accordingly.

Implemented (REPO is `{type}s/{namespace}/{name}`, `datasets/...` or `models/...`; revisions are branches, tags
or commit ids, URL-quoted as the client sends them):

    GET  /api/whoami-v2                                  a fixed user
    POST /api/repos/create                               {name, organization, type, private|visibility}
    POST /api/validate-yaml                              checks the card's YAML front matter parses
    GET  /api/REPO  and  /api/REPO/revision/{rev}        repo info: sha, private, siblings, cardData
    POST /api/REPO/preupload/{rev}                       uploadMode "regular", the oid of an unchanged file
    POST /api/REPO/commit/{rev}                          NDJSON: header, file (base64), deletedFile, deletedFolder;
                                                         honours parentCommit (412 when the branch moved)
    GET  /api/REPO/tree/{rev}[/{path}]                   ?recursive=; files and folders
    POST /api/REPO/paths-info/{rev}                      form: paths=..., expand=...
    GET  /api/REPO/commits/{rev}                         the commit history, newest first
    GET  /api/REPO/refs                                  branches and tags
    POST /api/REPO/tag/{rev}                             {tag, message}; 409 if it exists
    GET|HEAD /[datasets/]NS/NAME/resolve/{rev}/{path}    ETag, X-Repo-Commit, Content-Length, Range requests

Errors carry the Hub's `X-Error-Code` header (RepoNotFound, RevisionNotFound, EntryNotFound) so the client raises
its usual exceptions. Failure switches for tests: `fail_commits(mode)` fails every commit after its body is read
("500": an error status; "drop": the connection is closed without an answer; "lost": the commit is applied, then
the connection closed) until `fail_commits(None)`; `fail_next(n, status, match, message, code)` answers the next n
requests whose path contains `match` with `status` and, if given, that `X-Error-Code` (the message may echo the
request's `{authorization}` header, like a leaky proxy, to test that clients scrub it).
The server binds 127.0.0.1 only and refuses bodies over MAX_BODY bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAX_BODY = 256 << 20
USER = "tester"
REPO_TYPES = ("datasets", "models", "spaces")


def git_blob_id(content: bytes) -> str:
    """A file's git OID, as the Hub reports it for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str]  # path -> blob id


@dataclass
class Repo:
    repo_type: str  # "datasets", "models", ...
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None:
            for prefix in ("refs/heads/", "refs/tags/"):
                if revision.startswith(prefix):
                    name = revision[len(prefix):]
                    oid = (self.branches if prefix == "refs/heads/" else self.tags).get(name)
        if oid is None and len(revision) >= 7:
            matches = [c for c in self.commits if c.startswith(revision)]
            oid = matches[0] if len(matches) == 1 else None
        return self.commits.get(oid) if oid else None

    def history(self, head: Commit) -> list[Commit]:
        found, commit = [], head
        while commit is not None:
            found.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return found


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubServer:
    """The server and its state. `requests` logs (method, path, had_authorization) of every request."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.blobs = self.folder / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, bool]] = []
        self.authorizations: set[str] = set()
        self._commit_failure: str | None = None
        # (path substring, status, message, X-Error-Code or None), consumed in order
        self._failures: list[tuple[str, int, str, str | None]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.stopped = False

    # ---- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True  # kept-alive connections are closed at their next request
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- failure switches -----------------------------------------------------------------------------------------

    def fail_commits(self, mode: str | None) -> None:
        """Fail every commit after reading its body: "500", "drop" (close the connection without applying it),
        "lost" (apply it, then close the connection: the answer is lost), or None (stop failing)."""
        assert mode in (None, "500", "drop", "lost")
        self._commit_failure = mode

    def fail_next(self, count: int, status: int = 503, match: str = "/api/",
                  message: str = "injected transient failure", code: str | None = None) -> None:
        """Answer the next `count` requests whose path contains `match` with `status` (after reading the body),
        and `code` as the Hub's X-Error-Code (e.g. "RepoNotFound", which the client reads as a missing repo)."""
        with self.lock:
            self._failures.extend([(match, status, message, code)] * count)

    def _take_failure(self, path: str) -> tuple[int, str, str | None] | None:
        with self.lock:
            for i, (match, status, message, code) in enumerate(self._failures):
                if match in path:
                    del self._failures[i]
                    return status, message, code
        return None

    # ---- introspection for tests --------------------------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "datasets") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "datasets") -> Commit:
        repo = self.repo(repo_id, repo_type)
        return repo.commits[repo.branches[branch]]

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "datasets") -> bytes:
        commit = self.repo(repo_id, repo_type).resolve(revision)
        assert commit is not None
        return (self.blobs / commit.files[path]).read_bytes()

    # ---- repo operations ----------------------------------------------------------------------------------------

    def _store_blob(self, content: bytes) -> str:
        oid = git_blob_id(content)
        target = self.blobs / oid
        if not target.exists():
            tmp = self.blobs / f".tmp-{uuid.uuid4().hex}"
            tmp.write_bytes(content)
            tmp.replace(target)
        return oid

    def _new_commit(self, repo: Repo, parent: Commit | None, title: str, message: str,
                    files: dict[str, str]) -> Commit:
        seed = json.dumps([parent.oid if parent else None, title, message, sorted(files.items()), uuid.uuid4().hex])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent.oid if parent else None, title, message,
                        _now(), files)
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                # The Hub's 409 names the existing repo's url (create_repo(exist_ok=True) returns it).
                raise HubError(409, "You already created this repo", extra={"url": self.repo_url(repo_type, repo_id)})
            repo = Repo(repo_type, repo_id, private, _now())
            # Like the Hub: a new repo has one commit with a .gitattributes file.
            attributes = self._store_blob(b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")
            first = self._new_commit(repo, None, "initial commit", "", {".gitattributes": attributes})
            repo.branches["main"] = first.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{'' if repo_type == 'models' else repo_type + '/'}{repo_id}"

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def commit(self, repo: Repo, branch: str, body: bytes) -> Commit:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        changes: list[tuple[str, str, bytes | None]] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"bad path {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "only base64 file contents are supported")
                changes.append(("add", path, base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                changes.append((key, path.rstrip("/"), None))
            else:
                raise HubError(400, f"unsupported commit operation {key!r} (this test Hub stores regular files only)")
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = repo.commits[repo.branches[branch]]
            wanted_parent = header.get("parentCommit")
            if wanted_parent and not parent.oid.startswith(wanted_parent):
                raise HubError(412, f"A commit has happened since {wanted_parent}: the branch is at {parent.oid}")
            files = dict(parent.files)
            for kind, path, content in changes:
                if kind == "add":
                    assert content is not None
                    files[path] = self._store_blob(content)
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    for name in [n for n in files if n.startswith(path + "/")]:
                        del files[name]
            commit = self._new_commit(repo, parent, header.get("summary", ""), header.get("description", ""), files)
            repo.branches[branch] = commit.oid
            return commit

    def create_tag(self, repo: Repo, revision: str, tag: str) -> None:
        with self.lock:
            commit = self.get_commit(repo, revision)
            if not tag or tag in repo.tags or tag in repo.branches:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.oid


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: tests read server.requests instead
        pass

    # ---- plumbing -----------------------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise HubError(411, "chunked bodies are not supported")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, f"body over {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        if self.hub.stopped:
            self.close_connection = True
            return
        url = urlsplit(self.path)
        authorization = self.headers.get("Authorization")
        with self.hub.lock:
            self.hub.requests.append((method, url.path, authorization is not None))
            if authorization:
                self.hub.authorizations.add(authorization)
        try:
            body = self._read_body()
            failure = self.hub._take_failure(url.path)
            if failure is not None:
                status, message, code = failure
                raise HubError(status, message.replace("{authorization}", authorization or ""), code)
            self._route(method, url.path, parse_qs(url.query), body)
        except HubError as exc:
            self._send_json({"error": exc.message, **exc.extra}, exc.status, error_code=exc.code)
        except _Dropped:
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug in this test server: answer 500 rather than hang the client
            self._send_json({"error": f"test hub server error: {type(exc).__name__}: {exc}"}, 500)

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _send_json(self, value, status: int = 200, error_code: str | None = None) -> None:
        headers = {}
        if error_code:
            headers["X-Error-Code"] = error_code
        if status >= 400:
            headers["X-Error-Message"] = str(value.get("error", ""))[:200]
        self._send(status, json.dumps(value).encode(), "application/json", headers, head=self.command == "HEAD")

    # ---- routes -------------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._send_json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            repo = self.hub.get_repo(parts[1], f"{parts[2]}/{parts[3]}")
            return self._repo_api(method, repo, parts[4:], query, body)
        # File downloads: /datasets/NS/NAME/resolve/REV/PATH or /NS/NAME/resolve/REV/PATH (models).
        repo_type, rest = ("models", parts) if parts[0] not in REPO_TYPES else (parts[0], parts[1:])
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self.hub.get_repo(repo_type, f"{rest[0]}/{rest[1]}")
            return self._resolve(method, repo, rest[3], "/".join(rest[4:]))
        raise HubError(404, f"no route for {method} {path}")

    def _create_repo(self, payload: dict) -> None:
        name, organization = payload.get("name"), payload.get("organization") or USER
        repo_type = (payload.get("type") or "model") + "s"
        if not name or repo_type not in REPO_TYPES:
            raise HubError(400, "bad repo name or type")
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = self.hub.create_repo(repo_type, f"{organization}/{name}", private)
        self._send_json({"url": self.hub.repo_url(repo_type, repo.repo_id), "name": repo.repo_id,
                         "id": uuid.uuid4().hex})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                data = yaml.safe_load(front)
            except yaml.YAMLError as exc:
                raise HubError(400, f"invalid YAML: {exc}") from None
            if data is not None and not isinstance(data, dict):
                raise HubError(400, "the YAML front matter must be a mapping")
        self._send_json({"errors": [], "warnings": []})

    def _repo_api(self, method: str, repo: Repo, rest: list[str], query, body: bytes) -> None:
        action = rest[0] if rest else ""
        if method == "GET" and action in ("", "revision"):
            commit = self.hub.get_commit(repo, rest[1] if action == "revision" and len(rest) > 1 else "main")
            return self._send_json(self._info(repo, commit, blobs="blobs" in query))
        if method == "POST" and action == "preupload":
            commit = self.hub.get_commit(repo, rest[1])
            files = json.loads(body)["files"]
            answer = []
            for entry in files:
                existing = commit.files.get(entry["path"])
                answer.append({"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                               "oid": existing})
            return self._send_json({"files": answer, "commitOid": commit.oid})
        if method == "POST" and action == "commit":
            failure = self.hub._commit_failure
            if failure == "drop":
                raise _Dropped()
            if failure == "500":
                raise HubError(500, "injected failure in the middle of a commit")
            if "create_pr" in query:
                raise HubError(400, "pull requests are not supported by this test Hub")
            commit = self.hub.commit(repo, rest[1], body)
            if failure == "lost":
                raise _Dropped()
            return self._send_json({"success": True, "commitOid": commit.oid, "commitMessage": commit.title,
                                    "commitUrl": f"{self.hub.repo_url(repo.repo_type, repo.repo_id)}/commit/{commit.oid}",
                                    "hookOutput": ""})
        if method == "GET" and action == "tree":
            commit = self.hub.get_commit(repo, rest[1])
            folder = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._send_json(self._tree(commit, folder, recursive))
        if method == "POST" and action == "paths-info":
            commit = self.hub.get_commit(repo, rest[1])
            form = parse_qs(body.decode())
            return self._send_json(self._paths_info(commit, form.get("paths", [])))
        if method == "GET" and action == "commits":
            commit = self.hub.get_commit(repo, rest[1] if len(rest) > 1 else "main")
            return self._send_json([
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                 "authors": [{"user": USER}]} for c in repo.history(commit)])
        if method == "GET" and action == "refs":
            ref = [lambda kind, name, oid: {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}][0]
            return self._send_json({
                "branches": [ref("heads", n, o) for n, o in sorted(repo.branches.items())],
                "tags": [ref("tags", n, o) for n, o in sorted(repo.tags.items())],
                "converts": [], "pullRequests": []})
        if method == "POST" and action == "tag":
            payload = json.loads(body or b"{}")
            self.hub.create_tag(repo, rest[1], payload.get("tag", ""))
            return self._send_json({})
        raise HubError(404, f"no route for {method} {'/'.join(rest)}")

    def _info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for path, oid in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=(self.hub.blobs / oid).stat().st_size, blobId=oid)
            siblings.append(sibling)
        card = None
        if "README.md" in commit.files:
            text = (self.hub.blobs / commit.files["README.md"]).read_text("utf-8")
            if text.startswith("---") and text.count("---") >= 2:
                card = yaml.safe_load(text.split("---", 2)[1])
        namespace = repo.repo_id.split("/")[0]
        return {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": namespace, "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
                "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "cardData": card, "siblings": siblings}

    def _entry(self, commit: Commit, path: str) -> dict:
        if path in commit.files:
            oid = commit.files[path]
            return {"type": "file", "oid": oid, "size": (self.hub.blobs / oid).stat().st_size, "path": path}
        listing = sorted((p, o) for p, o in commit.files.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(json.dumps(listing).encode()).hexdigest(), "size": 0,
                "path": path}

    def _tree(self, commit: Commit, folder: str, recursive: bool) -> list[dict]:
        prefix = folder + "/" if folder else ""
        if folder and folder not in commit.files and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{folder} does not exist", "EntryNotFound")
        children: set[str] = set()
        for path in commit.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, depth + 1):
                children.add(prefix + "/".join(parts[:i]))
        return [self._entry(commit, p) for p in sorted(children)]

    def _paths_info(self, commit: Commit, paths: list[str]) -> list[dict]:
        found = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or any(p.startswith(path + "/") for p in commit.files):
                found.append(self._entry(commit, path))
        return found

    def _resolve(self, method: str, repo: Repo, revision: str, path: str) -> None:
        commit = self.hub.get_commit(repo, revision)
        oid = commit.files.get(path)
        if oid is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = (self.hub.blobs / oid).read_bytes()
        headers = {"ETag": f'"{oid}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        status = 200
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            size = len(content)
            start = int(first) if first else max(0, size - int(last))
            end = min(int(last), size - 1) if first and last else size - 1
            if start >= size:
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"}, head=method == "HEAD")
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            content, status = content[start:end + 1], 206
        self._send(status, content, "application/octet-stream", headers, head=method == "HEAD")


class _Dropped(Exception):
    """Close the connection without answering (a failure in the middle of a request)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
