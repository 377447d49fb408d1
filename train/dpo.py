"""The thin DPO trainer: one pair version in, one new snapshot out, with its lineage.

`train_dpo(store, pair_version, start_snapshot, cfg)` trains TRL's DPOTrainer from `start_snapshot` (which is also
the frozen reference), saves the result as safetensors in the store, and records a training run. The run id hashes
the pair version, the start snapshot and the result-changing config, so training the same thing twice is a no-op.

On several GPUs the same entry point runs under a launcher (DeepSpeed ZeRO-3 on 8 GPUs, as in the paper):

    accelerate launch --config_file train/accelerate/zero3.yaml -m train.dpo --data tsr-data --pairs VERSION
    torchrun --nproc_per_node 8 -m train.dpo --data tsr-data --pairs VERSION

Every rank trains; the main rank alone writes the store (train/distributed.py). `tsr pairs` and `tsr train` launch
the same module themselves when the profile names a `train.launcher` (train/launch.py).

torch, transformers and trl are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from builder.config import TrainConfig, load_profile, result_fields
from builder.environment import attribute, environment
from builder.errors import TsrError
from builder.faults import crash_point
from builder.fingerprint import canonical_json, stage_fingerprint
from builder.snapshot import Snapshot, adopt_folder, get_snapshot, register, staging_folder
from builder.store import Store, now_utc
from schemas.tables import RUNS
from train.common import (
    FinishedRun,
    finished_run,
    load_tokenizer,
    lora_config,
    recorded_run,
    rounded,
    run_entry_point,
    train_and_save,
    trainer_arguments,
    write_run_file,
)
from train.distributed import SINGLE, World, main_process_writes
from train.launch import INPROCESS, fit_request, launched, run_launched, this_rank

STAGE = "train.dpo"
CODE_VERSION = 1


@dataclass(frozen=True)
class TrainResult:
    snapshot: Snapshot
    run_id: str
    metrics: dict
    trained: bool  # False when the run existed already (or there was nothing to train on)


def run_id_for(pair_version: str, start_snapshot_id: str, cfg: TrainConfig) -> str:
    return stage_fingerprint(STAGE, CODE_VERSION, result_fields(cfg), [pair_version], start_snapshot_id)


def train_dpo(
    store: Store,
    pair_version: str,
    start: Snapshot,
    cfg: TrainConfig,
    *,
    role: str = "iteration",
    name: str | None = None,
    temporary: bool = False,
    world: World = SINGLE,
) -> TrainResult:
    """Train `start` on a pair version with DPO (reference = `start`), register the result, return it.

    Runs in this process, or under `cfg.launcher`; on the main rank of a launched run, the other ranks follow
    (`_follow`) the decision this function shares with them.
    """
    from train.data import load_pairs

    run_id = run_id_for(pair_version, start.snapshot_id, cfg)
    finished = finished_run(store, run_id)
    twin = same_pairs_run(store, pair_version, start, cfg) if finished is None else None
    dataset = load_pairs(store, pair_version) if finished is None and twin is None else None
    staged = staging_folder(store) if dataset is not None and len(dataset) else None
    world.share(str(staged) if staged else None)  # the other ranks train iff a folder is named
    if finished is not None:
        if not finished.recorded:
            _record_run(store, run_id, pair_version, start, finished.snapshot, cfg, finished.metrics,
                        finished.seconds)
        return TrainResult(finished.snapshot, run_id, finished.metrics, trained=False)
    if twin is not None:
        twin_id, twin_run = twin
        metrics = {**twin_run.metrics, "same_pairs_as_run": twin_id}
        _record_run(store, run_id, pair_version, start, twin_run.snapshot, cfg, metrics, 0.0)
        return TrainResult(twin_run.snapshot, run_id, metrics, trained=False)
    started = time.monotonic()
    if staged is None:
        # Nothing to learn from: the model stays what it was. Recorded, so the loop's lineage stays complete.
        metrics = {"skipped": "no pairs", "pairs": 0}
        _record_run(store, run_id, pair_version, start, start, cfg, metrics, 0.0)
        return TrainResult(start, run_id, metrics, trained=False)

    if launched(cfg) and world.size == 1:
        metrics = run_launched(store, staged, module="train.dpo", cfg=cfg, run_id=run_id, label=name or "DPO",
                               request={"pairs": pair_version, "start": start.snapshot_id})
    else:
        metrics = _fit(start.folder(store), dataset, cfg, staged, world)
    seconds = round(time.monotonic() - started, 3)
    write_run_file(staged, {"run_id": run_id, "pair_version": pair_version, "start_snapshot_id": start.snapshot_id,
                            "config": result_fields(cfg), "metrics": metrics, "seconds": seconds})
    snapshot_id = adopt_folder(store, staged)
    snapshot = register(store, Snapshot(
        snapshot_id, name or f"{start.name}+dpo", role, path=f"snapshots/{snapshot_id}",
        parent_snapshot_id=start.snapshot_id, pair_version=pair_version, run_id=run_id, temporary=temporary,
    ))
    crash_point("train.before-run-record")
    _record_run(store, run_id, pair_version, start, snapshot, cfg, metrics, seconds)
    return TrainResult(snapshot, run_id, metrics, trained=True)


def same_pairs_run(store: Store, pair_version: str, start: Snapshot,
                   cfg: TrainConfig) -> tuple[str, FinishedRun] | None:
    """A finished run (its id and output) of another pair version with the same pairs in the same order, from the
    same start with the same settings: the model this run would train.

    TSR without the future model trains M_1 on iteration 1's D1, the very pairs TSR's M_f of iteration 1 was
    trained on from the same M0; only the versions differ (each names its method). Training them once is what
    `tsr experiment` relies on to share that model.
    """
    candidates = [row for row in store.read("runs").to_pylist()
                  if row["kind"] == "dpo" and row["start_snapshot_id"] == start.snapshot_id
                  and len(row["data_versions"]) == 1 and row["data_versions"][0] != pair_version
                  and row["run_id"] == run_id_for(row["data_versions"][0], start.snapshot_id, cfg)]
    mine = _training_rows(store, pair_version) if candidates else []
    if not mine:  # no candidate, or no pairs (an empty version trains nothing anyway)
        return None
    for row in candidates:
        theirs = row["data_versions"][0]
        if store.manifest(theirs) is not None and _training_rows(store, theirs) == mine:
            return row["run_id"], recorded_run(store, row)
    return None


def _training_rows(store: Store, pair_version: str) -> list[tuple]:
    """What DPO reads of a pair version: the prompt, chosen and rejected generation of each pair (generation ids
    are content keys, so equal ids are equal texts), in the order train.data feeds them (by prompt)."""
    pairs = store.read("pairs", versions=[pair_version])
    return sorted(zip(*(pairs.column(name).to_pylist()
                        for name in ("prompt_id", "chosen_generation_id", "rejected_generation_id"))))


def _record_run(store: Store, run_id: str, pair_version: str, start: Snapshot, output: Snapshot,
                cfg: TrainConfig, metrics: dict, seconds: float) -> None:
    row = {
        "run_id": run_id, "kind": "dpo", "data_versions": [pair_version], "start_snapshot_id": start.snapshot_id,
        "ref_snapshot_id": start.snapshot_id, "output_snapshot_id": output.snapshot_id,
        "config_json": canonical_json(result_fields(cfg)), "metrics_json": canonical_json(metrics),
        "seconds": float(seconds), "created_at": now_utc(),
    }
    store.write_version(
        version=run_id, stage=STAGE, code_version=CODE_VERSION, table="runs",
        data=pa.Table.from_pylist([row], schema=RUNS), config=result_fields(cfg),
        parents=[pair_version], snapshot_id=output.snapshot_id, stats=metrics,
    )


def _follow(store: Store, pair_version: str, start: Snapshot, cfg: TrainConfig, world: World) -> None:
    """A rank other than the main one: train iff the main rank staged a folder for the model."""
    from train.data import load_pairs

    staged = world.share(None)
    if staged is not None:
        _fit(start.folder(store), load_pairs(store, pair_version), cfg, Path(staged), world)


def _fit_request(store: Store, request: dict, staged: Path, world: World) -> dict:
    """A rank of a training that `tsr` launched: the request names the pairs, the start snapshot and the config."""
    from train.data import load_pairs

    start = get_snapshot(store, request["start"])
    return _fit(start.folder(store), load_pairs(store, request["pairs"]), TrainConfig(**request["config"]), staged,
                world)


def _fit(model_folder: str, dataset, cfg: TrainConfig, output: Path, world: World = SINGLE) -> dict:
    """Run TRL's DPOTrainer and save the trained model (LoRA merged) to `output`. Returns the final metrics."""
    from trl import DPOConfig, DPOTrainer

    from builder.progress import quiet_libraries
    from train.cpu_lm_head import plain_lm_head

    quiet_libraries()
    # One process computes the reference's log-probabilities once, in batched passes before training, instead of a
    # reference forward at every step (a cpu-demo run: 8.8 s against 10.4 s). TRL caches them in a file beside the
    # dataset, so the dataset is written into the run's scratch folder first (removed with it). Several ranks keep
    # TRL's per-step reference: each rank reads the pairs itself and there is no one file they would all share.
    precompute = world.size == 1
    if precompute:
        dataset = dataset.flatten_indices(cache_file_name=str(output / "_trainer" / "pairs.arrow"))
    arguments = trainer_arguments(DPOConfig, cfg, output)
    args = DPOConfig(
        **arguments,
        beta=cfg.beta,
        precompute_ref_log_probs=precompute,
        # without gradients a forward holds no activations: 4 times the training batch fits beside the model
        precompute_ref_batch_size=4 * arguments["per_device_train_batch_size"],
    )
    tokenizer = load_tokenizer(model_folder)
    peft_config = lora_config(cfg)
    # Passing the folder (not a model object) makes TRL load the frozen reference from the same weights.
    # On a CPU the log-probabilities come from one projection of the labelled positions, not TRL's GPU tiles.
    # TRL's bar over the reference pass reads TQDM_DISABLE only; the stage's own progress covers the run
    with (plain_lm_head() if args.use_cpu else contextlib.nullcontext(), environment(TQDM_DISABLE="1"),
          _reference_keyed_by(Path(model_folder).name)):
        trainer = DPOTrainer(model=model_folder, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
        result = train_and_save(trainer, peft_config, model_folder, tokenizer, output, world, label="train DPO")
    return _final_metrics(trainer.state.log_history, result.training_loss, len(dataset))


@contextlib.contextmanager
def _reference_keyed_by(key: str) -> Iterator[None]:
    """TRL keys its cache of reference log-probabilities by a sha256 over every reference weight (`hash_module`:
    0.5 s at 135M, minutes at 70B). The reference is a stored snapshot, and its folder's name, the snapshot id,
    already hashes its files."""
    from trl.trainer import dpo_trainer

    if not hasattr(dpo_trainer, "hash_module"):  # a TRL that keys its cache otherwise
        yield
        return
    with attribute(dpo_trainer, "hash_module", lambda module: key):
        yield


def _final_metrics(history: list[dict], training_loss: float, pairs: int) -> dict:
    steps = [h for h in history if "loss" in h]
    last = steps[-1] if steps else {}
    return {
        "pairs": pairs,
        "steps": len(steps),
        "train_loss": round(float(training_loss), 6),
        "loss": rounded(last.get("loss")),
        "rewards/margins": rounded(last.get("rewards/margins")),
        "rewards/accuracies": rounded(last.get("rewards/accuracies")),
        "mean_rewards/margins": rounded(_mean([h.get("rewards/margins") for h in steps])),
        "mean_rewards/accuracies": rounded(_mean([h.get("rewards/accuracies") for h in steps])),
    }


def _mean(values: list) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m train.dpo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data root (default $TSR_HOME or ./tsr-data)")
    parser.add_argument("--pairs", help="pair version (id or unique prefix)")
    parser.add_argument("--profile", default="cpu-demo", help="profile name or YAML path")
    parser.add_argument("--start", default=None, help="start snapshot (default: the policy the pairs name)")
    parser.add_argument("--fit-into", default=None, help=argparse.SUPPRESS)  # set by tsr when it launches a run
    return parser


def main(argv: list[str] | None = None) -> TrainResult | None:
    """Train one pair version; under a launcher, on every rank. Returns the result on the main rank only."""
    args = make_parser().parse_args(argv)
    if args.fit_into:
        fit_request(Path(args.fit_into), _fit_request)
        return None
    if args.pairs is None:
        raise TsrError("--pairs is required")
    world = this_rank()
    store = Store.open(args.data)
    # This entry point trains in its own processes: a launcher in the profile is for `tsr`, which runs this one.
    cfg = dataclasses.replace(load_profile(args.profile).train, launcher=INPROCESS)
    manifest = store.find_version(args.pairs)
    if manifest.table != "pairs":
        raise TsrError(f"version {manifest.version} is a {manifest.table} version, not a pair version")
    start_id = args.start or manifest.config.get("policy")
    if start_id is None:
        raise TsrError(f"pair version {manifest.version} names no policy snapshot; pass --start")
    start = get_snapshot(store, start_id)
    with main_process_writes(store, world):
        if not world.is_main:
            _follow(store, manifest.version, start, cfg, world)
            return None
        result = train_dpo(store, manifest.version, start, cfg, world=world)
    print(json.dumps({"snapshot": result.snapshot.snapshot_id, "run": result.run_id, "processes": world.size,
                      **result.metrics}))
    return result


if __name__ == "__main__":  # pragma: no cover
    run_entry_point(main)
