"""The openai backend against a real server: `transformers serve` on 127.0.0.1 with the embedded model.

transformers serve samples only when the model folder's generation_config.json says do_sample (then it honours
each request's seed), ignores `n` and returns no log-probabilities: generate mode judges, forced mode is refused
in one line. Killing the server mid-stage is a one-line error that keeps the finished batches; a rerun against a
restarted server completes with no duplicate row.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from builder.backends.managed_server import free_port
from builder.store import Store
from tests.conftest import tsr_env

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow
SERVE = Path(sys.executable).parent / "transformers"


class Server:
    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.process = subprocess.Popen([str(SERVE), "serve", str(self.folder), "--host", "127.0.0.1", "--port",
                                         str(self.port)], env=dict(os.environ, OMP_NUM_THREADS="1"),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("transformers serve did not come up")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The embedded model's bf16 folder, set to sample, behind a running `transformers serve`."""
    root = tmp_path_factory.mktemp("served")
    subprocess.run([sys.executable, "-m", "builder", "--data", str(root / "source"), "models", "add", "--default"],
                   env=tsr_env(root / "source"), check=True, capture_output=True)
    (folder,) = (root / "source" / "snapshots").iterdir()
    model = root / "model"
    shutil.copytree(folder, model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "do_sample": True}))
    server = Server(model)
    server.start()
    yield server
    server.stop()


def profile(tmp_path: Path, server: Server, prompts: int = 2) -> Path:
    path = tmp_path / "served.yaml"
    path.write_text(f'generate: {{k: 2, max_new_tokens: 12, backend: openai, base_url: "{server.url}", '
                    f'served_model: "{server.folder}", max_in_flight: 2, batch_size: 2}}\n'
                    f"judge: {{mode: generate, max_new_tokens: 12, batch_size: 2}}\n"
                    f"loop: {{prompts_per_iteration: {prompts}}}\n")
    return path


def run(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", "--data", str(data), *args], env=tsr_env(data),
                          capture_output=True, text=True, timeout=600, check=False)


def test_generate_and_judge_through_transformers_serve(served, tmp_path):
    data = tmp_path / "store"
    assert run(data, "models", "add", str(served.folder), "--name", "smol", "--role", "m0").returncode == 0
    result = run(data, "judge", "--snapshot", "smol", "--profile", str(profile(tmp_path, served)))
    assert result.returncode == 0, result.stderr[-2000:]
    store = Store.open(data)
    generations = pl.from_arrow(store.read("generations"))
    assert generations.height == 4 and set(generations["backend"]) == {"openai"}
    for _, group in generations.group_by("prompt_id"):
        assert group["text"].n_unique() == 2  # the server sampled: each seed its own text
    judgments = pl.from_arrow(store.read("judgments"))
    assert judgments.height == 4 and set(judgments["mode"]) == {"generate"}
    assert "match their manifests" in run(data, "versions", "verify").stdout

    forced = run(data, "judge", "--snapshot", "smol", "--profile", str(profile(tmp_path, served)), "--mode", "forced")
    assert forced.returncode == 1
    assert forced.stderr.strip().splitlines()[-1] == (
        f"Error: server {served.url} returned no log-probabilities: forced mode needs them; use --mode generate")


def test_a_server_killed_mid_stage_then_restarted(served, tmp_path):
    data = tmp_path / "store"
    assert run(data, "models", "add", str(served.folder), "--name", "smol", "--role", "m0").returncode == 0
    settings = profile(tmp_path, served, prompts=6)
    command = [sys.executable, "-m", "builder", "--data", str(data), "generate", "--snapshot", "smol",
               "--profile", str(settings)]
    process = subprocess.Popen(command, env=tsr_env(data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(data.glob("_staging/*/batch-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    served.stop()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: server {served.url} ") and "unreachable" in error
    staged = list(data.glob("_staging/*/batch-*.parquet"))
    assert staged and not Store.open(data).manifests(table="generations")

    served.start()
    resumed = run(data, "generate", "--snapshot", "smol", "--profile", str(settings))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    generations = pl.from_arrow(Store.open(data).read("generations"))
    assert generations.height == 12 and generations["generation_id"].n_unique() == 12


def test_tsr_starts_and_stops_transformers_serve_itself(served, tmp_path):
    """generate.serve_command: tsr serves the snapshot's own folder, waits for it, and stops it when done."""
    data = tmp_path / "store"
    assert run(data, "models", "add", str(served.folder), "--name", "smol", "--role", "m0").returncode == 0
    command = f"env OMP_NUM_THREADS=1 {SERVE} serve {{model}} --host 127.0.0.1 --port {{port}}"
    settings = tmp_path / "managed.yaml"
    settings.write_text(f'generate: {{k: 2, max_new_tokens: 12, backend: openai, serve_command: "{command}", '
                        f"max_in_flight: 2, batch_size: 2}}\n"
                        f"judge: {{mode: generate, max_new_tokens: 12, batch_size: 2}}\n"
                        f"loop: {{prompts_per_iteration: 2}}\n")
    result = run(data, "judge", "--snapshot", "smol", "--profile", str(settings))
    assert result.returncode == 0, result.stderr[-2000:]
    store = Store.open(data)
    generations = pl.from_arrow(store.read("generations"))
    assert generations.height == 4 and set(generations["backend"]) == {"openai"}
    assert pl.from_arrow(store.read("judgments")).height == 4
    logs = sorted((data / "_logs").glob("serve-*.log"))
    assert logs
    for log in logs:  # every engine tsr started is gone
        port = int(log.stem.rsplit("-", 1)[1])
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_served_judge_behind_transformers_serve(served, tmp_path):
    """tsr models add --served against the real server's /v1/models, then judging with it (generate mode)."""
    data = tmp_path / "store"
    added = run(data, "models", "add", "--served", served.url, "--model", str(served.folder), "--name", "judge")
    assert added.returncode == 0, added.stderr[-2000:]
    assert run(data, "models", "add", str(served.folder), "--name", "smol", "--role", "m0").returncode == 0
    result = run(data, "judge", "--snapshot", "smol", "--judge", "judge", "--profile", str(profile(tmp_path, served)))
    assert result.returncode == 0, result.stderr[-2000:]
    judgments = pl.from_arrow(Store.open(data).read("judgments"))
    assert judgments.height == 4 and set(judgments["mode"]) == {"generate"}
