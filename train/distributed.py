"""The processes of one training run: which rank this is, how the global batch splits, and who writes the store.

Under `torchrun` or `accelerate launch` every rank runs the same entry point (`python -m train.dpo`). Every rank
reads the store and trains; only the main process holds the write lock, saves the gathered weights, registers the
snapshot and writes the run row. The main process decides what the run does (train, or nothing because it is done)
and shares that decision, so the ranks can never disagree and wait on each other forever.

A launcher kills every rank when one fails; when the launcher itself is killed, the ranks notice that their parent
is gone and exit (`watch_parent`), so no orphan keeps training into the store's scratch folder.

torch and accelerate are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from builder.errors import TsrError
from builder.store import Store

# Collectives wait at most this long: the main process may hash a large store before the ranks start, and a 70B
# model takes minutes to gather and save. The launcher still stops every rank as soon as one fails.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
PARENT_ENV = "TSR_PARENT"  # "host:pid" of the `tsr` that launched a training: its ranks on that host exit if it dies


@dataclass(frozen=True)
class World:
    """This process's place among the ranks, as the launcher's environment says (RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> World:
        try:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError as exc:
            raise TsrError(f"unreadable launcher environment (RANK, WORLD_SIZE, LOCAL_RANK): {exc}") from None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        return "LOCAL_RANK" in os.environ  # set by torchrun and accelerate launch, never by a plain `python -m`

    def start(self) -> None:
        """Join the process group (gloo on CPUs, the accelerator's backend elsewhere); a no-op for one process."""
        if self.size == 1:
            return
        import torch
        from accelerate import PartialState

        # The Trainer builds the same process-wide state later; the first call's settings are the ones that hold.
        PartialState(cpu=not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)

    def share(self, value: Any) -> Any:
        """The main process's `value`, on every rank (a collective: every rank must call it)."""
        if self.size == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]


SINGLE = World()


def batch_split(global_batch: int, per_device_batch: int, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) that make exactly `global_batch` examples per step.

    The global batch is a result setting and the world size a throughput one: the same run on 1 or 8 processes
    takes the same optimizer steps over the same number of examples, so its run id does not name the world size.
    The per-device batch is lowered to the largest divisor of the per-rank share that fits.
    """
    if global_batch % world_size:
        raise TsrError(f"global_batch {global_batch} does not split evenly over {world_size} processes: make it a "
                       "multiple of the number of processes")
    per_rank = global_batch // world_size
    per_device = max(d for d in range(1, min(per_device_batch, per_rank) + 1) if per_rank % d == 0)
    return per_device, per_rank // per_device


# ---- one store for every rank -----------------------------------------------------------------------------------


def store_id(store: Store) -> str | None:
    try:
        return json.loads((store.root / "store.json").read_text("utf-8")).get("store_id")
    except (OSError, ValueError):
        return None


def ensure_store_id(store: Store) -> str:
    """The store's id, given to a store made before ids existed (under the write lock)."""
    found = store_id(store)
    if found:
        return found
    marker = store.root / "store.json"
    meta = json.loads(marker.read_text("utf-8"))
    meta["store_id"] = uuid.uuid4().hex
    store.replace_marker(meta)
    return meta["store_id"]


def check_same_store(store: Store, expected: str | None, world: World) -> None:
    """Stop a rank that reads another store than the main process (a data root not on a shared filesystem)."""
    seen = store_id(store)
    if seen != expected:
        raise TsrError(f"rank {world.rank} sees another store at {store.root} (id {seen}) than the main process "
                       f"(id {expected}): put the data root on a filesystem every node shares")


@contextlib.contextmanager
def main_process_writes(store: Store, world: World) -> Iterator[None]:
    """The main process holds the write lock (and has cleared killed writers' leftovers) before any rank reads."""
    if world.size == 1:
        with store.writing():
            yield
        return
    world.start()
    if world.is_main:
        with store.writing():
            world.share(ensure_store_id(store))
            yield
    else:
        check_same_store(store, world.share(None), world)
        yield


# ---- no orphans -------------------------------------------------------------------------------------------------


def parent_marker() -> str:
    """The value of PARENT_ENV for the processes this one launches."""
    return f"{socket.gethostname()}:{os.getpid()}"


def launching_process(marker: str) -> int:
    """The pid of the `tsr` that launched this rank, or 0 when none did or it runs on another host.

    A launcher that starts ranks on other nodes passes the environment on; a pid only means something on its host.
    """
    host, _, pid = marker.rpartition(":")
    return int(pid) if pid.isdigit() and host == socket.gethostname() else 0


def watch_parent(poll_seconds: float = 1.0) -> None:
    """Exit at once when the launcher that started this rank (or the `tsr` command behind it) has died.

    A SIGKILLed launcher cannot stop its ranks; without this they would train on and write into the store's
    scratch folder after the next writer has cleared it.
    """
    parent = os.getppid()
    owner = launching_process(os.environ.get(PARENT_ENV, ""))

    def gone() -> bool:
        if os.getppid() != parent:
            return True
        if owner:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def watch() -> None:
        while not gone():
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="tsr-watch-parent", daemon=True).start()
