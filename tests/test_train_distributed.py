"""Training on several processes for real: torchrun with two gloo ranks on the CPU, a tiny model, the real store.

Every case checks what the issue promises: every rank exits 0, the store gains exactly one snapshot and one run row
per training, the weights changed, `tsr versions verify` passes; and after a SIGKILL of one rank or of the launcher
(or of the `tsr` command that launched it), no rank lives on and a rerun ends with one snapshot and one run row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from builder.snapshot import list_snapshots
from builder.store import Store
from tests.conftest import tsr_env
from tests.test_loop import TINY_PROFILE
from tests.test_sft import TINY_SFT_PROFILE, _sft_inputs
from tests.tiny_model import make_tiny_model

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
LAUNCHER = "torchrun --nproc_per_node 2"
TIMEOUT = 600


@pytest.fixture
def pair_store(tsr, tmp_path, data_root):
    """A store with M0 and one pair version (iteration 1 of tsr-past), built in this process."""
    make_tiny_model(tmp_path / "tiny")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    tsr("models", "add", str(tmp_path / "tiny"), "--name", "tiny", "--role", "m0")
    tsr("pairs", "--iter", "1", "--method", "tsr-past", "--m0", "tiny", "--profile", str(profile))
    (pairs,) = Store.open(data_root).manifests(table="pairs")
    return pairs.version, profile


def launched_profile(tmp_path: Path, text: str = TINY_PROFILE) -> Path:
    """The tiny profile with every trainer under `torchrun --nproc_per_node 2`."""
    path = tmp_path / "launched.yaml"
    path.write_text(text.replace('bf16: "false"}', f'bf16: "false", launcher: "{LAUNCHER}"}}'))
    assert path.read_text().count("launcher") == text.count('bf16: "false"}') >= 1
    return path


def launched_loop(tsr, tmp_path: Path) -> list[str]:
    """`tsr pairs` for iteration 1 of tsr on a registered tiny M0, training under the 2-rank launcher."""
    make_tiny_model(tmp_path / "tiny")
    tsr("models", "add", str(tmp_path / "tiny"), "--name", "tiny", "--role", "m0")
    return [sys.executable, "-m", "builder", "pairs", "--iter", "1", "--method", "tsr", "--m0", "tiny",
            "--profile", str(launched_profile(tmp_path))]


def torchrun_dpo(data_root: Path, version: str, profile: Path, **env: str) -> list[str]:
    return [TORCHRUN, "--nproc_per_node", "2", "-m", "train.dpo", "--data", str(data_root), "--pairs", version,
            "--profile", str(profile)]


def run(command: list[str], data_root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=tsr_env(data_root, OMP_NUM_THREADS="1", **env), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)


def trained(store: Store) -> list:
    return [s for s in list_snapshots(store) if s.run_id is not None]


def assert_one_training(data_root: Path, tsr) -> None:
    """One trained snapshot, its run row, changed weights, a clean verify, no leftovers in the scratch folder."""
    store = Store.open(data_root)
    (snapshot,) = trained(store)
    (run_row,) = store.read("runs").to_pylist()
    assert run_row["run_id"] == snapshot.run_id and run_row["output_snapshot_id"] == snapshot.snapshot_id
    before = load_file(str(data_root / "snapshots" / snapshot.parent_snapshot_id / "model.safetensors"))
    after = load_file(str(data_root / snapshot.path / "model.safetensors"))
    assert before.keys() == after.keys() and all((before[k] != after[k]).any() for k in before)
    registered = {s.snapshot_id for s in list_snapshots(store)}
    assert {p.name for p in (data_root / "snapshots").iterdir()} == registered  # no orphaned model folder
    assert "match their manifests" in tsr("versions", "verify").output


def ranks_alive(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the store path a rank was started on)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(marker.encode() in w for w in words) and any(b"train." in w for w in words):
                alive.append(int(entry.name))
    return alive


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_torchrun_two_ranks_train_once_and_a_rerun_is_a_noop(pair_store, data_root, tsr):
    version, profile = pair_store
    first = run(torchrun_dpo(data_root, version, profile), data_root)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count('"snapshot"') == 1  # the main rank alone reports (and writes)
    assert '"processes": 2' in first.stdout
    assert_one_training(data_root, tsr)
    (snapshot,) = trained(Store.open(data_root))
    again = run(torchrun_dpo(data_root, version, profile), data_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshot.snapshot_id in again.stdout
    assert_one_training(data_root, tsr)


def test_the_shipped_ddp_config_runs_two_ranks_under_accelerate_launch(pair_store, data_root, tsr):
    # accelerate's --cpu flag starts one process; the shipped MULTI_GPU config goes through torchrun and, on a
    # machine without GPUs, gives two gloo ranks (the trainer passes use_cpu), which is the DDP path on 8 GPUs.
    version, profile = pair_store
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                  str(Path("train/accelerate/ddp.yaml").resolve()), "--num_processes", "2", "--mixed_precision", "no"]
    result = run([*accelerate, "-m", "train.dpo", "--data", str(data_root), "--pairs", version,
                  "--profile", str(profile)], data_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"snapshot"') == 1 and '"processes": 2' in result.stdout
    assert_one_training(data_root, tsr)


def test_the_loop_launches_its_training_and_logs_it(tsr, tmp_path, data_root):
    make_tiny_model(tmp_path / "tiny")
    tsr("models", "add", str(tmp_path / "tiny"), "--name", "tiny", "--role", "m0")
    result = tsr("pairs", "--iter", "1", "--method", "tsr", "--m0", "tiny", "--profile",
                 str(launched_profile(tmp_path)))
    assert "iteration 1 (tsr): final pairs" in result.output and "1 trained models" in result.output
    assert_one_training(data_root, tsr)
    (future,) = trained(Store.open(data_root))
    assert future.role == "future" and future.temporary
    log = data_root / "logs" / f"{future.run_id}.log"
    assert f"--nproc_per_node 2 -m train.dpo --fit-into {data_root.resolve()}/_tmp/model-" in log.read_text()
    assert not (data_root / "_tmp").exists() or not any((data_root / "_tmp").iterdir())

    # `tsr train` launches too: M_1 from iteration 1's final pairs, one more snapshot and run row, its own log.
    result = tsr("train", "--iter", "1", "--method", "tsr", "--m0", "tiny", "--profile",
                 str(launched_profile(tmp_path)))
    store = Store.open(data_root)
    (m1,) = [s for s in trained(store) if s.snapshot_id != future.snapshot_id]
    assert m1.role == "iteration" and len(store.read("runs").to_pylist()) == 2
    assert "--nproc_per_node 2 -m train.dpo" in (data_root / "logs" / f"{m1.run_id}.log").read_text()
    assert "match their manifests" in tsr("versions", "verify").output


def test_sft_runs_under_the_launcher(tsr, tmp_path, data_root):
    args = _sft_inputs(tsr, tmp_path, words=("hi", "yes", "no"))
    profile = launched_profile(tmp_path, TINY_SFT_PROFILE)
    args[args.index("--profile") + 1] = str(profile)
    assert "trained by run" in tsr(*args).output
    assert_one_training(data_root, tsr)
    assert "already trained (no-op)" in tsr(*args).output


def test_one_rank_killed_then_a_rerun_trains_once(pair_store, data_root, tsr):
    version, profile = pair_store
    killed = run(torchrun_dpo(data_root, version, profile), data_root, TSR_CRASH_AT="train.step@1")
    assert killed.returncode != 0 and "Signal 9 (SIGKILL) received" in killed.stderr, killed.stderr[-3000:]
    assert trained(Store.open(data_root)) == []
    wait_for(lambda: not ranks_alive(str(data_root)), "the other rank to stop")
    resumed = run(torchrun_dpo(data_root, version, profile), data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_one_training(data_root, tsr)


def staged_model(data_root) -> bool:
    try:
        return any((data_root / "_tmp").glob("model-*"))
    except FileNotFoundError:  # the writer's start-up cleanup removed _tmp/ while the glob read it
        return False


def test_the_launcher_killed_leaves_no_rank_behind_and_a_rerun_trains_once(pair_store, data_root, tsr):
    version, profile = pair_store
    launcher = subprocess.Popen(torchrun_dpo(data_root, version, profile),
                                env=tsr_env(data_root, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:  # kill it once the main rank has staged the model folder: training is under way
        wait_for(lambda: staged_model(data_root), "the main rank to stage its model folder")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    wait_for(lambda: not ranks_alive(str(data_root)), "the orphaned ranks to exit", seconds=30)
    assert trained(Store.open(data_root)) == []
    resumed = run(torchrun_dpo(data_root, version, profile), data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_one_training(data_root, tsr)


def test_a_rank_killed_under_the_loop_is_one_line_then_a_rerun_finishes(tsr, tmp_path, data_root):
    command = launched_loop(tsr, tmp_path)
    failed = run(command, data_root, TSR_CRASH_AT="train.step@1")
    assert failed.returncode == 1, failed.stderr[-3000:]
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: training Mf1-tsr failed (torchrun exited with 1): ") and "(log: " in error
    assert trained(Store.open(data_root)) == []
    resumed = run(command, data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_one_training(data_root, tsr)


def test_tsr_killed_while_its_launcher_trains_leaves_no_rank_behind(tsr, tmp_path, data_root):
    command = launched_loop(tsr, tmp_path)
    parent = subprocess.Popen(command, env=tsr_env(data_root, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ranks_alive("--fit-into"), "the launched ranks to start")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    wait_for(lambda: not ranks_alive(str(data_root.resolve())), "the launched ranks to exit", seconds=30)
    assert trained(Store.open(data_root)) == []
    resumed = run(command, data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_one_training(data_root, tsr)
