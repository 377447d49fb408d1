"""A training run in other processes, under the launcher the profile names (`train.launcher`, `sft.launcher`).

With `inprocess` (the cpu-demo default) `tsr` trains in its own process. With a launcher command, for instance
`torchrun --nproc_per_node 8` or `accelerate launch --config_file {accelerate_configs}/zero3.yaml`, the command
that trains (`tsr pairs`, `tsr train`, `tsr sft`) keeps the store's write lock and its bookkeeping, and runs

    <launcher> -m train.dpo --fit-into <store>/_tmp/model-<id>

The request beside that folder names the data and the settings; every rank reads the store (never writes it), the
main rank saves the gathered weights into the folder and the metrics beside it; `tsr` then registers the snapshot
and writes the run row exactly as an in-process run does. The launcher's output goes to `<store>/logs/<run>.log`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.errors import TsrError
from builder.programs import find_program
from builder.store import Store, now_utc
from train.distributed import (
    PARENT_ENV,
    World,
    batch_split,
    check_same_store,
    ensure_store_id,
    parent_marker,
    watch_parent,
)

INPROCESS = "inprocess"
CONFIGS_PLACEHOLDER = "{accelerate_configs}"
ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate"  # ddp.yaml, fsdp.yaml, zero3.yaml
STOP_GRACE_SECONDS = 30


def launcher_command(launcher: str, where: str = "train.launcher") -> list[str]:
    """The launcher's words, `{accelerate_configs}` expanded and the program found (next to this Python first,
    so a virtual environment's torchrun is the one that runs); a one-line error when it cannot run."""
    try:
        words = shlex.split(launcher.replace(CONFIGS_PLACEHOLDER, str(ACCELERATE_CONFIGS)))
    except ValueError as exc:
        raise TsrError(f"{where}: unreadable command {launcher!r} ({exc})") from None
    if not words:
        raise TsrError(f"{where} is empty: give {INPROCESS!r} or a launcher command such as 'torchrun "
                       "--nproc_per_node 8'")
    program = find_program(words[0], where)
    for flag, value in itertools.pairwise(words):
        if flag == "--config_file" and not Path(value).is_file():
            raise TsrError(f"{where}: accelerate config {value} not found")
    return [program, *words[1:]]


def launcher_processes(words: list[str]) -> int | None:
    """The total number of processes a launcher command starts, when its words (or its accelerate config) say."""
    values = dict(itertools.pairwise(words))
    if values.get("--num_processes", "").isdigit():
        return int(values["--num_processes"])
    per_node = values.get("--nproc_per_node") or values.get("--nproc-per-node")
    if per_node and per_node.isdigit():
        nodes = values.get("--nnodes", "1")
        return int(per_node) * (int(nodes) if nodes.isdigit() else 1)
    if "--config_file" in values:
        import yaml

        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
            processes = (yaml.safe_load(Path(values["--config_file"]).read_text("utf-8")) or {}).get("num_processes")
            return processes if isinstance(processes, int) else None
    return None


def check_launcher(cfg: Any, section: str) -> None:
    """Checked before the store is touched: a launcher that cannot start, or a global batch that does not split
    over its processes, fails the command at once (not after the loop has generated and judged)."""
    if cfg.launcher == INPROCESS:
        return
    processes = launcher_processes(launcher_command(cfg.launcher, f"{section}.launcher"))
    if processes:
        try:
            batch_split(cfg.global_batch, cfg.per_device_batch, processes)
        except TsrError as exc:
            raise TsrError(f"{section}.launcher {cfg.launcher!r}: {exc}") from None


def launched(cfg: Any) -> bool:
    return cfg.launcher != INPROCESS


def request_path(staged: Path) -> Path:
    return staged.with_name(staged.name + ".request.json")


def result_path(staged: Path) -> Path:
    return staged.with_name(staged.name + ".fit.json")


def log_path(store: Store, run_id: str) -> Path:
    return store.root / "logs" / f"{run_id}.log"


def run_launched(store: Store, staged: Path, *, module: str, cfg: Any, request: dict, run_id: str,
                 label: str) -> dict:
    """Train in the launcher's processes into `staged` and return the main rank's metrics.

    A failure is one line naming the launcher's exit status, the last error the ranks printed, and the log.
    """
    command = launcher_command(cfg.launcher)
    request = {**request, "data": str(store.root.resolve()), "store_id": ensure_store_id(store),
               "config": dataclasses.asdict(dataclasses.replace(cfg, launcher=INPROCESS))}
    request_path(staged).write_text(json.dumps(request, indent=2), "utf-8")
    log = log_path(store, run_id)
    log.parent.mkdir(exist_ok=True)
    _release_memory()  # the models the loop generated with stay out of the launched ranks' way
    argv = [*command, "-m", module, "--fit-into", str(staged.resolve())]
    print(f"train: {label} through {shlex.join([Path(command[0]).name, *command[1:]])} (log: {log})",
          file=sys.stderr, flush=True)
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"==> {now_utc()}  {shlex.join(argv)}\n")
        sink.flush()
        status = _wait(subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, PARENT_ENV: parent_marker()}, start_new_session=True))
    if status != 0:
        raise TsrError(f"training {label} failed ({Path(command[0]).name} exited with {status}): "
                       f"{_last_error(log)} (log: {log})")
    try:
        metrics = json.loads(result_path(staged).read_text("utf-8"))["metrics"]
    except (OSError, ValueError, KeyError):
        raise TsrError(f"training {label}: the launcher exited 0 but the main rank wrote no result (log: {log})"
                       ) from None
    request_path(staged).unlink()
    result_path(staged).unlink()
    return metrics


def _release_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _wait(process: subprocess.Popen) -> int:
    """The launcher's exit status; if this process is interrupted, the launcher and its ranks stop too."""
    try:
        return process.wait()
    except BaseException:
        with_group = getattr(os, "killpg", None)
        if with_group is not None:
            with_group(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with_group(process.pid, signal.SIGKILL)
                process.wait()
        raise


def _last_error(log: Path) -> str:
    """What went wrong, as the ranks said it: our one-line error, else an argument or Python error, else the last
    line (the launcher's own failure summary names only the rank that failed first)."""
    lines = [line.strip() for line in log.read_text("utf-8", errors="replace").splitlines() if line.strip()]
    for pattern in (r"^Error: (.*)", r"^[^:]*: (error: .*)", r"^((?:\w+\.)*\w*(?:Error|Exception): .*)"):
        found = [m.group(1) for m in map(re.compile(pattern).match, lines)
                 if m and "ChildFailedError" not in m.group(1)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "no output"


# ---- the launched side ------------------------------------------------------------------------------------------


FitFunction = Callable[[Store, dict, Path, World], dict]


def this_rank() -> World:
    """This process's place in the world; a rank started by a launcher exits when its launcher dies."""
    world = World.from_environment()
    if world.launched:
        watch_parent()
    return world


def fit_request(staged: Path, fit: FitFunction) -> None:
    """One rank of a launched training: read the request, train, and (main rank) write the metrics."""
    world = this_rank()
    try:
        request = json.loads(request_path(staged).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise TsrError(f"--fit-into {staged}: no readable training request beside it ({exc})") from None
    store = Store.open(request["data"])
    if staged.resolve().parent != (store.root / "_tmp").resolve() or not staged.is_dir():
        raise TsrError(f"--fit-into {staged}: not a model folder tsr staged under {store.root / '_tmp'}")
    check_same_store(store, request["store_id"], world)
    world.start()
    metrics = fit(store, request, staged, world)
    if world.is_main:
        partial = result_path(staged).with_suffix(".partial")
        partial.write_text(json.dumps({"metrics": metrics}), "utf-8")
        os.replace(partial, result_path(staged))
