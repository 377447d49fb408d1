"""What the DPO and SFT trainers share: TRL config arguments, the tokenizer and the optional LoRA adapter.

torch, transformers and peft are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any


def use_bf16(cfg: Any) -> bool:
    """bf16 where it trains: CUDA with bf16 support ("auto"), or wherever the user insists ("true")."""
    import torch

    if cfg.bf16 == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return cfg.bf16 == "true"


def trainer_arguments(config_class: type, cfg: Any, output: Path) -> dict[str, Any]:
    """Arguments of a TRL config (DPOConfig, SFTConfig) that both trainers set the same way."""
    import torch

    bf16 = use_bf16(cfg)
    world = max(1, torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
    accumulation = max(1, math.ceil(cfg.global_batch / (cfg.per_device_batch * world)))
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio); 4.x has both.
    fields = {f.name for f in dataclasses.fields(config_class)}
    warmup = {"warmup_ratio": cfg.warmup_ratio} if "warmup_ratio" in fields else {"warmup_steps": cfg.warmup_ratio}
    return {
        "output_dir": str(output / "_trainer"),
        **warmup,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.per_device_batch,
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
        "model_init_kwargs": {"dtype": torch.bfloat16 if bf16 else torch.float32},
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


def train_and_save(trainer, peft_config, model_folder: str, tokenizer, output: Path):
    """Train, merge LoRA, and save model and tokenizer to `output`; returns TRL's TrainOutput.

    Snapshots keep the start model's storage dtype (bf16 for the embedded default), whatever trained them.
    """
    from transformers import AutoModelForCausalLM, PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics go to the run record, not one dict per step on stdout
    result = trainer.train()
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    saved_dtype = AutoModelForCausalLM.from_pretrained(model_folder, dtype="auto").dtype
    model.to(saved_dtype).save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    shutil.rmtree(output / "_trainer", ignore_errors=True)
    return result
