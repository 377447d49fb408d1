"""The Ray executor for real: a local Ray cluster (2 CPUs, 2 actors), a tiny model, the real store.

Generate and judge through `--executor ray` give the ids, texts and scores of `--executor local`; a Ray actor
SIGKILLed mid-stage is restarted and its batch retried; a SIGKILLed driver loses only batches in flight, and the
rerun completes without a duplicate row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from builder.store import Store
from tests.conftest import tsr_env
from tests.tiny_model import make_tiny_model

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

PROFILE = """
generate: {k: 2, temperature: 1.0, top_p: 1.0, max_new_tokens: 6, backend: hf, batch_size: 2}
judge: {mode: auto, samples: 1, temperature: 1.0, max_new_tokens: 4, batch_size: 2}
loop: {chunks: 5, prompts_per_iteration: 3}
executor: {actors: 2, cpus_per_actor: 1}
"""
TIMEOUT = 300


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    model = make_tiny_model(root / "tiny")
    profile = root / "tiny.yaml"
    profile.write_text(PROFILE)
    return root, model, profile


def tsr_process(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The real `tsr` in its own session; afterwards nothing of its process group (Ray's workers) lives on."""
    command = [sys.executable, "-m", "builder", "--data", str(data), *args]
    process = subprocess.Popen(command, env=tsr_env(data, OMP_NUM_THREADS="1", **env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        # A SIGKILLed driver leaves Ray's local agents behind (Ray does not reap them): clear them here.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def judged_store(setup, name: str, executor: str, **env: str) -> tuple[Path, subprocess.CompletedProcess]:
    root, model, profile = setup
    data = root / name
    added = tsr_process(data, "models", "add", str(model), "--name", "tiny", "--role", "m0")
    assert added.returncode == 0, added.stderr
    return data, tsr_process(data, "judge", "--snapshot", "tiny", "--profile", str(profile), "--executor", executor,
                             **env)


def rows(data: Path) -> dict[str, list]:
    store = Store.open(data)
    generations = pl.from_arrow(store.read("generations")).sort("generation_id")
    judgments = pl.from_arrow(store.read("judgments")).sort("judgment_id")
    return {
        "generations": generations.select("generation_id", "prompt_id", "sample_index", "seed", "text").rows(),
        "judgments": judgments.select("judgment_id", "generation_id", "score", "raw_reply", "scored_by").rows(),
        "versions": sorted((m.table, m.version) for m in store.manifests()),
    }


@pytest.fixture(scope="module")
def local_rows(setup):
    data, result = judged_store(setup, "local", "local")
    assert result.returncode == 0, result.stderr
    return rows(data)


def test_ray_gives_the_rows_of_local_even_when_an_actor_is_killed(setup, local_rows, tmp_path):
    marker = tmp_path / "killed-once"
    data, result = judged_store(setup, "ray", "ray", TSR_CRASH_AT="ray.actor-batch#2", TSR_CRASH_ONCE=str(marker))
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists()  # an actor did die on its second batch; Ray restarted it and retried the batch
    assert rows(data) == local_rows
    assert len(local_rows["generations"]) == 6 and len(local_rows["judgments"]) == 6
    stats = [m.stats for m in Store.open(data).manifests() if m.table in ("generations", "judgments")]
    assert [s["executor"] for s in stats] == ["ray", "ray"]


def test_a_killed_ray_driver_resumes_without_duplicates(setup, local_rows):
    data, killed = judged_store(setup, "ray-killed", "ray", TSR_CRASH_AT="generate.after-batch#2")
    assert killed.returncode == -signal.SIGKILL
    store = Store.open(data)
    assert not store.manifests(table="generations")
    (staging,) = (data / "_staging").iterdir()
    assert len(list(staging.glob("batch-*.parquet"))) == 2  # the two finished batches survived the kill

    profile = setup[2]
    resumed = tsr_process(data, "judge", "--snapshot", "tiny", "--profile", str(profile), "--executor", "ray")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rows(data) == local_rows  # one row per id: the staged batches were not computed again
    (generations,) = Store.open(data).manifests(table="generations")
    assert generations.stats["generated"] == 2 and generations.stats["reused"] == 4
