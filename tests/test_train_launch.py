"""The launcher settings and the rank bookkeeping, without starting a launcher (tests/test_train_distributed.py
starts real ones)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from builder.config import TrainConfig, load_profile, result_fields
from builder.errors import TsrError
from builder.store import Store
from train.distributed import (
    World,
    batch_split,
    check_same_store,
    ensure_store_id,
    launching_process,
    parent_marker,
    store_id,
)
from train.launch import _last_error, launcher_command


@pytest.mark.parametrize(("global_batch", "per_device", "world", "expected"), [
    (2, 2, 1, (2, 1)),   # cpu-demo in one process: as before
    (2, 2, 2, (1, 1)),   # cpu-demo on two ranks: one pair each, still 2 per step
    (32, 1, 8, (1, 4)),  # the paper: 8 GPUs, accumulation 4
    (32, 4, 8, (4, 1)),
    (32, 3, 8, (2, 2)),  # 3 does not divide the 4 per rank: the largest divisor that fits
    (12, 8, 2, (6, 1)),
])
def test_the_global_batch_is_the_same_whatever_the_world_size(global_batch, per_device, world, expected):
    split = batch_split(global_batch, per_device, world)
    assert split == expected
    assert split[0] * split[1] * world == global_batch


def test_a_global_batch_that_does_not_split_is_one_clear_error():
    with pytest.raises(TsrError, match="global_batch 6 does not split evenly over 4 processes"):
        batch_split(6, 1, 4)


def test_launcher_and_world_size_stay_out_of_run_ids():
    plain = TrainConfig()
    launched = dataclasses.replace(plain, launcher="torchrun --nproc_per_node 8", per_device_batch=4)
    assert result_fields(plain) == result_fields(launched)
    assert "launcher" not in result_fields(plain)


def test_the_paper_profile_trains_under_zero3_and_cpu_demo_in_process():
    paper, demo = load_profile("paper"), load_profile("cpu-demo")
    assert paper.train.launcher == paper.sft.launcher == "accelerate launch --config_file " \
        "{accelerate_configs}/zero3.yaml"
    assert demo.train.launcher == demo.sft.launcher == "inprocess"
    command = launcher_command(paper.train.launcher)
    config = Path(command[command.index("--config_file") + 1])
    assert config.is_file() and config.parent.name == "accelerate" and Path(command[0]).name == "accelerate"


def test_the_launcher_is_found_next_to_this_python():
    assert launcher_command("torchrun --nproc_per_node 2")[0] == str(Path(sys.executable).parent / "torchrun")


@pytest.mark.parametrize(("launcher", "message"), [
    ("no-such-launcher-xyz --n 2", "train.launcher: 'no-such-launcher-xyz' not found"),
    ("accelerate launch --config_file /nowhere/zero3.yaml", "accelerate config /nowhere/zero3.yaml not found"),
    ("torchrun 'unclosed", "unreadable command"),
])
def test_a_launcher_that_cannot_start_is_refused(launcher, message):
    with pytest.raises(TsrError, match=message):
        launcher_command(launcher)


def test_a_bad_launcher_fails_the_command_before_the_store_is_made(tsr, tmp_path, data_root):
    profile = tmp_path / "p.yaml"
    profile.write_text('train: {launcher: "no-such-launcher-xyz --nproc_per_node 2"}\n')
    result = tsr("pairs", "--iter", "1", "--profile", str(profile), expect=1)
    assert result.output.strip().splitlines() == [
        ("Error: train.launcher: 'no-such-launcher-xyz' not found (next to "
         f"{sys.executable} or on PATH)")]
    assert not data_root.exists()
    profile.write_text('train: {launcher: ""}\n')
    assert "train.launcher must be 'inprocess' or a launcher command" in tsr(
        "train", "--iter", "1", "--profile", str(profile), expect=1).output


def test_the_error_the_ranks_printed_is_the_one_reported(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("W1203 some warning\nError: [rank 1] global_batch 3 does not split evenly over 2 processes\n"
                   "Traceback (most recent call last):\n  File x\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n====\n")
    assert _last_error(log) == "[rank 1] global_batch 3 does not split evenly over 2 processes"
    log.write_text("usage: python -m train.dpo\npython -m train.dpo: error: unrecognized arguments: --x\n===\n")
    assert _last_error(log) == "error: unrecognized arguments: --x"
    log.write_text("Traceback (most recent call last):\n  File y\nRuntimeError: CUDA out of memory\n====\n")
    assert _last_error(log) == "RuntimeError: CUDA out of memory"


def test_new_stores_have_an_id_and_old_ones_get_one_from_a_writer(data_root):
    store = Store.init(data_root)
    first = store_id(store)
    assert first and len(first) == 32
    marker = data_root / "store.json"
    meta = json.loads(marker.read_text())
    del meta["store_id"]
    marker.write_text(json.dumps(meta))
    assert store_id(Store.open(data_root)) is None
    with pytest.raises(RuntimeError):
        ensure_store_id(Store.open(data_root))  # store.json changes only under the write lock
    with Store.open(data_root).writing() as writer:
        given = ensure_store_id(writer)
        assert ensure_store_id(writer) == given != first


def test_a_rank_that_sees_another_store_stops(tmp_path):
    mine = Store.init(tmp_path / "a")
    other = Store.init(tmp_path / "b")
    check_same_store(mine, store_id(mine), World(rank=1, size=2))
    with pytest.raises(TsrError, match=r"rank 1 sees another store at .*a \(id \w+\) than the main process "
                                       r"\(id \w+\): put the data root on a filesystem every node shares"):
        check_same_store(mine, store_id(other), World(rank=1, size=2))


def test_world_comes_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_environment() == World(0, 1, 0) and not World.from_environment().launched
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    world = World.from_environment()
    assert (world.rank, world.size, world.is_main, world.launched) == (3, 8, False, True)
    monkeypatch.setenv("WORLD_SIZE", "eight")
    with pytest.raises(TsrError, match="unreadable launcher environment"):
        World.from_environment()


def test_a_rank_watches_the_launching_tsr_only_on_its_own_host():
    import os
    import socket

    assert launching_process(parent_marker()) == os.getpid()
    # A launcher that starts ranks on other nodes passes the environment on; that pid means nothing there.
    assert launching_process(f"not-{socket.gethostname()}:{os.getpid()}") == 0
    assert launching_process("") == 0
    assert launching_process(f"{socket.gethostname()}:garbage") == 0


@pytest.mark.parametrize(("launcher", "processes"), [
    ("torchrun --nproc_per_node 2", 2),
    ("torchrun --nnodes 2 --nproc-per-node 4", 8),
    ("accelerate launch --config_file {accelerate_configs}/zero3.yaml", 8),
    ("accelerate launch --config_file {accelerate_configs}/ddp.yaml --num_processes 2", 2),
    ("torchrun --standalone", None),
])
def test_the_launchers_process_count_is_read_from_its_words_or_config(launcher, processes):
    from train.launch import launcher_processes

    assert launcher_processes(launcher_command(launcher)) == processes


def test_a_global_batch_that_does_not_split_over_the_launcher_fails_before_the_store(tsr, tmp_path, data_root):
    profile = tmp_path / "p.yaml"
    profile.write_text('train: {launcher: "torchrun --nproc_per_node 2", global_batch: 3}\n')
    result = tsr("pairs", "--iter", "2", "--profile", str(profile), expect=1)
    assert result.output.strip().splitlines() == [
        ("Error: train.launcher 'torchrun --nproc_per_node 2': global_batch 3 does not split evenly over 2 "
        "processes: make it a multiple of the number of processes")]
    assert not data_root.exists()
