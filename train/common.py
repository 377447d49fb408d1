"""What the DPO and SFT trainers share: TRL config arguments, the tokenizer, the optional LoRA adapter, and the
bookkeeping that makes a training run idempotent and recoverable after a kill.

torch, transformers and peft are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import TsrError
from builder.faults import crash_point
from builder.snapshot import Snapshot, get_snapshot, list_snapshots
from builder.store import Store
from train.distributed import SINGLE, World, batch_split

RUN_FILE = "tsr_training.json"  # written into the model folder, so a snapshot carries the run that made it


@dataclass(frozen=True)
class FinishedRun:
    snapshot: Snapshot
    metrics: dict
    seconds: float
    recorded: bool  # False: the model was registered but the process died before the run row was written


def finished_run(store: Store, run_id: str) -> FinishedRun | None:
    """The output of a run trained before, or None.

    Found through its row in `runs`, or, after a kill between registering the model and recording the run, through
    the registered snapshot that names the run (its folder's run file holds the metrics); the caller then writes the
    missing row.
    """
    for row in store.read("runs").to_pylist():
        if row["run_id"] == run_id:
            return recorded_run(store, row)
    for snapshot in list_snapshots(store):
        if snapshot.run_id == run_id:
            record = json.loads((Path(snapshot.folder(store)) / RUN_FILE).read_text("utf-8"))
            return FinishedRun(snapshot, record["metrics"], record["seconds"], recorded=False)
    return None


def recorded_run(store: Store, row: dict) -> FinishedRun:
    """The output of a run from its row in `runs`."""
    return FinishedRun(get_snapshot(store, row["output_snapshot_id"]), json.loads(row["metrics_json"]), row["seconds"],
                       recorded=True)


def write_run_file(folder: Path, record: dict) -> None:
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True), "utf-8")


def rounded(value) -> float | None:
    """A logged metric as a float with 6 decimals (None stays None), so run records compare across runs."""
    return None if value is None else round(float(value), 6)


def use_bf16(cfg: Any) -> bool:
    """bf16 where it trains: CUDA with bf16 support ("auto"), or wherever the user insists ("true"); with "mixed",
    where the device computes bf16 natively (then as autocast over fp32 weights, see trainer_arguments)."""
    import torch

    if cfg.bf16 == "mixed":
        from builder.backends.hf import cpu_has_native_bf16

        return bool(torch.cuda.is_bf16_supported()) if torch.cuda.is_available() else cpu_has_native_bf16()
    if cfg.bf16 == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cfg.bf16 == "true"


def trainer_arguments(config_class: type, cfg: Any, output: Path) -> dict[str, Any]:
    """Arguments of a TRL config (DPOConfig, SFTConfig) that both trainers set the same way."""
    import torch

    bf16 = use_bf16(cfg)
    # The launcher's world size, known before the process group starts (the Trainer starts it).
    per_device, accumulation = batch_split(cfg.global_batch, cfg.per_device_batch, World.from_environment().size)
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio); 4.x has both.
    fields = {f.name for f in dataclasses.fields(config_class)}
    warmup = {"warmup_ratio": cfg.warmup_ratio} if "warmup_ratio" in fields else {"warmup_steps": cfg.warmup_ratio}
    return {
        "output_dir": str(output / "_trainer"),
        **warmup,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "lr_scheduler_type": cfg.lr_scheduler,
        "max_length": cfg.max_length,
        "bf16": bf16,  # TRL defaults to bf16=True, which fails on CPUs
        "gradient_checkpointing": cfg.gradient_checkpointing,  # TRL defaults to True
        "seed": cfg.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        # "mixed" keeps fp32 master weights and lets autocast run the matrix products in bf16: on a CPU with
        # native bf16 a DPO step takes about half the time of fp32, while the optimizer still sees fp32 updates.
        "model_init_kwargs": {"dtype": torch.bfloat16 if bf16 and cfg.bf16 != "mixed" else torch.float32},
        # Without it accelerate sees no accelerator and leaves each CPU rank training alone (gloo needs it).
        "use_cpu": not torch.cuda.is_available(),
    }


def load_tokenizer(model_folder: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(cfg: Any):
    """A LoRA adapter on every linear layer when `lora_r` > 0 (merged before saving), else None."""
    if cfg.lora_r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear", task_type="CAUSAL_LM")


def train_and_save(trainer, peft_config, model_folder: str, tokenizer, output: Path, world: World = SINGLE,
                   label: str = "train"):
    """Train, merge LoRA, and save model and tokenizer to `output`; returns TRL's TrainOutput.

    On several ranks every rank takes part in gathering the weights (ZeRO-3 and FSDP hold shards) and only the
    main rank writes. Snapshots keep the start model's storage dtype (bf16 for the embedded default), whatever
    trained them.
    """
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics go to the run record, not one dict per step on stdout
    trainer.add_callback(_crash_point_callback())
    if world.is_main:
        trainer.add_callback(_progress_callback(label))
    _check_lora_fits(trainer, peft_config)
    result = trainer.train()
    dtype = stored_dtype(model_folder)
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
        model.to(dtype).save_pretrained(output, safe_serialization=True)
    else:
        model = accelerator.unwrap_model(trainer.model)
        if peft_config is not None:  # DDP only (checked above): every rank holds the whole model
            model = model.merge_and_unload()
            state = model.state_dict()
        else:
            state = accelerator.get_state_dict(trainer.model)  # a collective: gathers ZeRO-3 and FSDP shards
        if world.is_main:
            state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
            model.save_pretrained(output, state_dict=state, safe_serialization=True)
    if world.is_main:
        tokenizer.save_pretrained(output)
        shutil.rmtree(output / "_trainer", ignore_errors=True)
        crash_point("train.saved")
    accelerator.wait_for_everyone()
    return result


def _check_lora_fits(trainer, peft_config) -> None:
    if peft_config is not None and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        raise TsrError("lora_r > 0 trains under DDP only (torchrun, or accelerate's ddp.yaml): ZeRO-3 and FSDP "
                       "shard the base weights that merging the adapter needs")


def _crash_point_callback():
    """A kill point after every optimizer step (`TSR_CRASH_AT=train.step#N@RANK`), for the kill tests."""
    from transformers import TrainerCallback

    class CrashPoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            crash_point("train.step")

    return CrashPoints()


def _progress_callback(label: str):
    """Optimizer steps as stage progress (a bar on a terminal, a log line every 30 s elsewhere)."""
    from transformers import TrainerCallback

    from builder.progress import Progress

    class StepProgress(TrainerCallback):
        progress: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(label, total=state.max_steps, unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.__exit__(None, None, None)
                self.progress = None

    return StepProgress()


def run_entry_point(main: Callable[[], Any]) -> None:
    """`python -m train.dpo` and `train.sft`: a TsrError is one line on stderr and exit status 1, no traceback."""
    try:
        main()
    except TsrError as exc:
        rank = World.from_environment()
        where = f"[rank {rank.rank}] " if rank.size > 1 else ""
        print(f"Error: {where}{str(exc).replace(chr(10), ' ')}", file=sys.stderr, flush=True)
        sys.exit(1)


def stored_dtype(model_folder: str):
    """The dtype the model's weights are stored in, read as `from_pretrained(dtype="auto")` reads it (the config's
    dtype, else the first floating tensor's) without loading the model: at 70B a second load would cost minutes."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(model_folder), "dtype", None)
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    for file in sorted(Path(model_folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor_dtype = weights.get_tensor(name).dtype
                if tensor_dtype.is_floating_point:
                    return tensor_dtype
    return torch.get_default_dtype()
