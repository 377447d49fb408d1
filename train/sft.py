"""The thin SFT trainer: M0 = SFT(base, IFT + EFT), as both papers start, recorded as a snapshot with lineage.

`train_sft(store, base, ift_version, eft_version, cfg)` trains TRL's SFTTrainer on the union of an IFT set and an EFT
set (EFT rows rendered through the judge template the pipeline uses) with loss on the completions only, saves the
result as safetensors in the store, and records a training run of kind "sft". The run id hashes both data versions,
the base snapshot, the template's hash and the result-changing config, so training the same thing twice is a no-op.

Mirrors train/dpo.py: the same run file in the model folder, the same crash points and recovery, and on several GPUs
the same entry point runs under a launcher (only the main rank writes the store), or `tsr sft` launches it itself
when the profile names an `sft.launcher`:

    accelerate launch --config_file train/accelerate/zero3.yaml -m train.sft --data tsr-data --base B --ift V --eft V

torch, transformers and trl are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from builder.config import SFTConfig, load_profile, result_fields
from builder.errors import TsrError
from builder.faults import crash_point
from builder.fingerprint import canonical_json, stage_fingerprint
from builder.judging import template_hash
from builder.snapshot import Snapshot, adopt_folder, get_snapshot, register, staging_folder
from builder.store import Store, now_utc
from schemas.tables import RUNS
from train.common import (
    finished_run,
    load_tokenizer,
    lora_config,
    rounded,
    run_entry_point,
    train_and_save,
    trainer_arguments,
    write_run_file,
)
from train.distributed import SINGLE, World, main_process_writes
from train.launch import INPROCESS, fit_request, launched, run_launched, this_rank

STAGE = "train.sft"
CODE_VERSION = 1


@dataclass(frozen=True)
class SFTResult:
    snapshot: Snapshot
    run_id: str
    metrics: dict
    trained: bool  # False when the run existed already


def run_config(cfg: SFTConfig, template: str) -> dict:
    """What the run id and the run record hold: the result-changing settings and the judge template's hash."""
    return {**result_fields(cfg), "judge_template": template_hash(template)}


def run_id_for(data_versions: list[str], base_id: str, cfg: SFTConfig, template: str) -> str:
    return stage_fingerprint(STAGE, CODE_VERSION, run_config(cfg, template), data_versions, base_id)


def train_sft(
    store: Store,
    base: Snapshot,
    ift_version: str | None,
    eft_version: str | None,
    cfg: SFTConfig,
    *,
    template: str,
    name: str | None = None,
    world: World = SINGLE,
) -> SFTResult:
    """Fine-tune `base` on an IFT and an EFT set (either may be None, not both), register the result as an M0.

    Runs in this process, or under `cfg.launcher`; on the main rank of a launched run, the other ranks follow
    (`_follow`) the decision this function shares with them.
    """
    from builder.stages.sft_data import sft_examples

    data_versions = [v for v in (ift_version, eft_version) if v is not None]
    if not data_versions:
        raise TsrError("SFT needs an IFT set, an EFT set or both")
    run_id = run_id_for(data_versions, base.snapshot_id, cfg, template)
    finished = finished_run(store, run_id)
    examples = sft_examples(store, ift_version, eft_version, template) if finished is None else None
    staged = staging_folder(store) if examples else None
    world.share(str(staged) if staged else None)  # the other ranks train iff a folder is named
    if finished is not None:
        if not finished.recorded:
            _record_run(store, run_id, data_versions, base, finished.snapshot, cfg, template, finished.metrics,
                        finished.seconds)
        return SFTResult(finished.snapshot, run_id, finished.metrics, trained=False)
    if staged is None:
        raise TsrError(f"the SFT sets {', '.join(data_versions)} hold no examples")

    from datasets import Dataset

    started = time.monotonic()
    if launched(cfg) and world.size == 1:
        metrics = run_launched(store, staged, module="train.sft", cfg=cfg, run_id=run_id, label=name or "SFT",
                               request={"ift": ift_version, "eft": eft_version, "base": base.snapshot_id,
                                        "template": template})
    else:
        metrics = _fit(base.folder(store), Dataset.from_list(examples), cfg, staged, world)
    metrics = {"ift_examples": _rows(store, ift_version), "eft_examples": _rows(store, eft_version), **metrics}
    seconds = round(time.monotonic() - started, 3)
    write_run_file(staged, {"run_id": run_id, "kind": "sft", "data_versions": data_versions,
                            "start_snapshot_id": base.snapshot_id, "config": run_config(cfg, template),
                            "metrics": metrics, "seconds": seconds})
    snapshot_id = adopt_folder(store, staged)
    # pair_version stays null (no pairs trained it); the run the snapshot names holds both data versions and the
    # config, and the model folder's tsr_training.json carries the same record.
    snapshot = register(store, Snapshot(
        snapshot_id, name or f"{base.name}+sft", "m0", path=f"snapshots/{snapshot_id}",
        parent_snapshot_id=base.snapshot_id, run_id=run_id,
    ))
    crash_point("train.before-run-record")
    _record_run(store, run_id, data_versions, base, snapshot, cfg, template, metrics, seconds)
    return SFTResult(snapshot, run_id, metrics, trained=True)


def _rows(store: Store, version: str | None) -> int:
    manifest = store.manifest(version) if version else None
    return manifest.rows if manifest is not None else 0


def _record_run(store: Store, run_id: str, data_versions: list[str], base: Snapshot, output: Snapshot,
                cfg: SFTConfig, template: str, metrics: dict, seconds: float) -> None:
    config = run_config(cfg, template)
    row = {
        "run_id": run_id, "kind": "sft", "data_versions": data_versions, "start_snapshot_id": base.snapshot_id,
        "ref_snapshot_id": None, "output_snapshot_id": output.snapshot_id, "config_json": canonical_json(config),
        "metrics_json": canonical_json(metrics), "seconds": float(seconds), "created_at": now_utc(),
    }
    store.write_version(
        version=run_id, stage=STAGE, code_version=CODE_VERSION, table="runs",
        data=pa.Table.from_pylist([row], schema=RUNS), config=config, parents=data_versions,
        snapshot_id=output.snapshot_id, stats=metrics,
    )


def _follow(store: Store, base: Snapshot, ift: str | None, eft: str | None, cfg: SFTConfig, template: str,
            world: World) -> None:
    """A rank other than the main one: train iff the main rank staged a folder for the model."""
    staged = world.share(None)
    if staged is not None:
        _fit_examples(store, base, ift, eft, cfg, template, Path(staged), world)


def _fit_request(store: Store, request: dict, staged: Path, world: World) -> dict:
    """A rank of a training that `tsr` launched: the request names the sets, the base and the config."""
    base = get_snapshot(store, request["base"])
    return _fit_examples(store, base, request["ift"], request["eft"], SFTConfig(**request["config"]),
                         request["template"], staged, world)


def _fit_examples(store: Store, base: Snapshot, ift: str | None, eft: str | None, cfg: SFTConfig, template: str,
                  staged: Path, world: World) -> dict:
    from datasets import Dataset

    from builder.stages.sft_data import sft_examples

    return _fit(base.folder(store), Dataset.from_list(sft_examples(store, ift, eft, template)), cfg, staged, world)


def _fit(model_folder: str, dataset, cfg: SFTConfig, output: Path, world: World = SINGLE) -> dict:
    """Run TRL's SFTTrainer (completion-only loss) and save the model (LoRA merged) to `output`; return metrics."""
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    from builder.progress import quiet_libraries

    quiet_libraries()
    args = TrlSFTConfig(
        **trainer_arguments(TrlSFTConfig, cfg, output),
        completion_only_loss=True,  # the prompt (and the judge rubric) carries no loss
    )
    tokenizer = load_tokenizer(model_folder)
    peft_config = lora_config(cfg)
    trainer = SFTTrainer(model=model_folder, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    result = train_and_save(trainer, peft_config, model_folder, tokenizer, output, world, label="train SFT")
    steps = [h for h in trainer.state.log_history if "loss" in h]
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    return {
        "examples": len(dataset),
        "steps": len(steps),
        "train_loss": round(float(result.training_loss), 6),
        "first_loss": rounded(first.get("loss")),
        "loss": rounded(last.get("loss")),
        "mean_token_accuracy": rounded(last.get("mean_token_accuracy")),
    }


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m train.sft", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data root (default $TSR_HOME or ./tsr-data)")
    parser.add_argument("--base", help="base snapshot (id, prefix or name)")
    parser.add_argument("--ift", default=None, help="IFT-set version (id or unique prefix)")
    parser.add_argument("--eft", default=None, help="EFT-set version (id or unique prefix)")
    parser.add_argument("--profile", default="cpu-demo", help="profile name or YAML path (its sft section)")
    parser.add_argument("--name", default=None, help="name of the new snapshot")
    parser.add_argument("--fit-into", default=None, help=argparse.SUPPRESS)  # set by tsr when it launches a run
    return parser


def main(argv: list[str] | None = None) -> SFTResult | None:
    """Fine-tune M0; under a launcher, on every rank. Returns the result on the main rank only."""
    from builder.stages.judge import template_text
    from builder.stages.sft_data import find_set

    args = make_parser().parse_args(argv)
    if args.fit_into:
        fit_request(Path(args.fit_into), _fit_request)
        return None
    if args.base is None:
        raise TsrError("--base is required")
    world = this_rank()
    store = Store.open(args.data)
    profile = load_profile(args.profile)
    # This entry point trains in its own processes: a launcher in the profile is for `tsr`, which runs this one.
    cfg = dataclasses.replace(profile.sft, launcher=INPROCESS)
    template = template_text(profile.judge)
    ift = find_set(store, args.ift, "ift").version if args.ift else None
    eft = find_set(store, args.eft, "eft").version if args.eft else None
    base = get_snapshot(store, args.base)
    with main_process_writes(store, world):
        if not world.is_main:
            _follow(store, base, ift, eft, cfg, template, world)
            return None
        result = train_sft(store, base, ift, eft, cfg, template=template, name=args.name, world=world)
    print(json.dumps({"snapshot": result.snapshot.snapshot_id, "run": result.run_id, "processes": world.size,
                      **result.metrics}))
    return result


if __name__ == "__main__":  # pragma: no cover
    run_entry_point(main)
