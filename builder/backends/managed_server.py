"""A serving engine tsr starts on one of the loop's own snapshots (`generate.serve_command`), and stops after.

The template names the engine, e.g. `vllm serve {model} --port {port} --tensor-parallel-size 4` on GPUs or
`transformers serve {model} --port {port}` on a CPU; `{model}` becomes the snapshot's folder and `{port}` a free
local port. tsr waits until the server lists its model, sends the stage's requests to it, and stops it when the
model is released (the next snapshot is loaded, training starts, or tsr exits).

The server runs in its own process group, so stopping it stops the workers it spawned (vLLM's engine core, its
tensor-parallel ranks). On Linux it is also told to die with tsr (PR_SET_PDEATHSIG), so a tsr killed with
SIGKILL does not leave an engine holding the GPUs. Its output goes to a log file in the store's `_logs/`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
import weakref
from pathlib import Path

from builder.errors import TsrError
from builder.programs import find_program

PLACEHOLDERS = ("model", "port")
HOST = "127.0.0.1"


def check_template(template: str) -> list[str]:
    """The template split into arguments; a one-line error for a bad one (checked when the profile loads)."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise TsrError(f"generate.serve_command {template!r}: {exc}") from None
    if not argv:
        raise TsrError("generate.serve_command is empty")
    fields = set()
    for arg in argv:
        try:
            fields |= {name for _, name, _, _ in string.Formatter().parse(arg) if name is not None}
        except ValueError as exc:
            raise TsrError(f"generate.serve_command {template!r}: {exc}") from None
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise TsrError(f"generate.serve_command: unknown placeholder {{{unknown[0]}}}; known: {{model}}, {{port}}")
    missing = [f"{{{name}}}" for name in PLACEHOLDERS if name not in fields]
    if missing:
        raise TsrError(f"generate.serve_command must contain {' and '.join(missing)} (the snapshot folder and the "
                       "port tsr picks)")
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ManagedServer:
    """One engine process serving one snapshot folder on 127.0.0.1."""

    def __init__(self, template: str, folder: str, log_dir: str | None, *, ready_timeout: float = 1800.0) -> None:
        self.port = free_port()
        words = [arg.format(model=folder, port=self.port) for arg in check_template(template)]
        # Found where it runs (on a cluster, in the Ray actor's node), not when the profile loads.
        self.argv = [find_program(words[0], "generate.serve_command"), *words[1:]]
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self.ready_timeout = ready_timeout
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.log_path = (Path(log_dir) / f"serve-{Path(folder).name}-{stamp}-{self.port}.log" if log_dir
                         else Path(os.devnull))
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def start(self) -> str:
        """Start the engine and wait until it serves; return its API root."""
        if self.log_path != Path(os.devnull):
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        failure = None
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True,
                                                preexec_fn=_die_with_parent)  # noqa: PLW1509 (see below)
            except OSError as exc:
                failure = exc.strerror
        if failure is not None:
            if self.log_path != Path(os.devnull):
                self.log_path.unlink(missing_ok=True)  # ours, and empty: nothing ran to write to it
            raise TsrError(f"generate.serve_command: cannot start {self.argv[0]!r} ({failure})")
        # Stop it when this object goes away or tsr exits, whichever comes first.
        self._finalizer = weakref.finalize(self, _stop, self.process)
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        from builder.backends.endpoints import get_json

        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise TsrError(f"generate.serve_command: {shlex.join(self.argv[:2])} exited with {code} before it "
                               f"served; see {self.log_path}{_last_line(self.log_path)}")
            try:
                get_json(f"{self.base_url}/models", timeout=5.0)  # vLLM answers it once the engine is up
                return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TsrError(f"generate.serve_command: {shlex.join(self.argv[:2])} did not serve within "
                       f"{self.ready_timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _stop once


def _stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the engine's process group, SIGKILL what is left after `grace` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text("utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1].strip()[:200]})" if lines else ""


# Resolved before any fork, so between fork and exec the child makes one prctl call and takes no lock another
# thread could hold (the reason preexec_fn is unsafe with threads in general).
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
