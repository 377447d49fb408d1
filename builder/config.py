"""Settings, one dataclass per stage, layered: dataclass defaults < profile YAML < command-line flags.

Only fields marked `result=True` in their metadata enter fingerprints; the rest (batch sizes, devices, backends
that compute the same thing) are throughput knobs and never invalidate stored work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from builder.errors import TsrError


def _result(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help, "result": True})


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help, "result": False})


@dataclass
class GenerateConfig:
    k: int = _result(2, "responses sampled per model per prompt (paper: 7 for TSR)")
    temperature: float = _result(1.0, "sampling temperature (paper: 1.0)")
    top_p: float = _result(1.0, "nucleus sampling (paper: 1.0)")
    max_new_tokens: int = _result(64, "new tokens per response (paper: 1024)")
    seed: int = _result(0, "base seed; each sample's seed is derived from it, the prompt and the sample index")
    backend: str = _knob("hf", "hf (transformers) or vllm")
    batch_size: int = _knob(8, "requests per batch (hf backend)")

    def __post_init__(self) -> None:
        _check(self.k >= 1, f"generate.k must be at least 1, got {self.k}")
        _check(self.temperature >= 0, f"generate.temperature must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"generate.top_p must be in (0, 1], got {self.top_p}")
        _check(self.max_new_tokens >= 1, f"generate.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.backend in ("hf", "vllm"), f"generate.backend must be hf or vllm, got {self.backend!r}")


@dataclass
class JudgeConfig:
    mode: str = _result("auto", "generate (parse `Score: N`), forced (digit probabilities) or auto (both)")
    samples: int = _result(1, "judge replies averaged per response")
    temperature: float = _result(0.7, "sampling temperature of the judge's justification")
    max_new_tokens: int = _result(48, "tokens of justification (forced mode with 0: no justification)")
    template: str | None = _result(None, "rubric template file with {prompt} and {response}; default: built in")
    seed: int = _result(0, "base seed of judge sampling")
    batch_size: int = _knob(8, "judgments per batch")

    def __post_init__(self) -> None:
        _check(self.mode in ("generate", "forced", "auto"), f"judge.mode must be generate, forced or auto, "
               f"got {self.mode!r}")
        _check(self.samples >= 1, f"judge.samples must be at least 1, got {self.samples}")


@dataclass
class TrainConfig:
    learning_rate: float = _result(5e-7, "DPO learning rate (paper: 5e-7)")
    beta: float = _result(0.1, "DPO beta (paper: 0.1)")
    epochs: float = _result(1.0, "epochs over the pairs")
    global_batch: int = _result(32, "pairs per optimizer step, across devices and accumulation")
    lr_scheduler: str = _result("cosine", "learning-rate schedule")
    warmup_ratio: float = _result(0.1, "share of steps spent warming up")
    max_length: int = _result(2048, "prompt + response tokens")
    lora_r: int = _result(0, "LoRA rank (0: full fine-tuning); LoRA is merged before saving")
    seed: int = _result(0, "training seed")
    per_device_batch: int = _knob(1, "pairs per device per forward pass")
    bf16: str = _knob("auto", "auto (bf16 on CUDA only), true or false")
    gradient_checkpointing: bool = _knob(True, "recompute activations in the backward pass: less memory, ~1/3 more "
                                               "compute (TRL's default; off pays on a small model)")

    def __post_init__(self) -> None:
        _check_trainer(self, "train")


@dataclass
class SFTConfig:
    """Supervised fine-tuning of M0 on IFT + EFT data (train/sft.py); loss on the completions only."""

    learning_rate: float = _result(2e-6, "SFT learning rate (paper: 2e-6)")
    epochs: float = _result(3.0, "epochs over the union of IFT and EFT examples (paper: 3)")
    global_batch: int = _result(32, "examples per optimizer step, across devices and accumulation (paper: 32)")
    lr_scheduler: str = _result("cosine", "learning-rate schedule (paper: cosine)")
    warmup_ratio: float = _result(0.1, "share of steps spent warming up (paper: 0.1)")
    max_length: int = _result(2048, "prompt + completion tokens (longer examples are cut at the end)")
    lora_r: int = _result(0, "LoRA rank (0: full fine-tuning); LoRA is merged before saving")
    seed: int = _result(0, "training seed (also the order of the examples)")
    per_device_batch: int = _knob(1, "examples per device per forward pass")
    bf16: str = _knob("auto", "auto (bf16 on CUDA only), true or false")
    gradient_checkpointing: bool = _knob(True, "recompute activations in the backward pass: less memory, ~1/3 more "
                                               "compute (TRL's default; off pays on a small model)")

    def __post_init__(self) -> None:
        _check_trainer(self, "sft")


def _check_trainer(cfg: TrainConfig | SFTConfig, section: str) -> None:
    """The checks both trainers' settings share (the same TRL arguments come from them: train/common.py)."""
    _check(cfg.learning_rate > 0, f"{section}.learning_rate must be > 0, got {cfg.learning_rate}")
    _check(cfg.epochs > 0, f"{section}.epochs must be > 0, got {cfg.epochs}")
    _check(cfg.global_batch >= 1 and cfg.per_device_batch >= 1, f"{section} batch sizes must be at least 1")
    _check(0 <= cfg.warmup_ratio < 1, f"{section}.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    _check(cfg.bf16 in ("auto", "true", "false"), f"{section}.bf16 must be auto, true or false, got {cfg.bf16}")
    _check(isinstance(cfg.gradient_checkpointing, bool),
           f"{section}.gradient_checkpointing must be true or false, got {cfg.gradient_checkpointing!r}")


@dataclass
class LoopConfig:
    chunks: int = _result(5, "chunks the default prompt set is split into (one per iteration)")
    prompts_per_iteration: int | None = _result(None, "use only the first N prompts of each chunk (None: all)")
    sr_k: int | None = _result(None, "K of the SR baseline (None: same as generate.k; paper: 4)")


@dataclass
class Profile:
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    name: str = "defaults"


SECTIONS = {"generate": GenerateConfig, "judge": JudgeConfig, "train": TrainConfig, "loop": LoopConfig,
            "sft": SFTConfig}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TsrError(message)


def result_fields(config: Any) -> dict[str, Any]:
    """The settings of `config` that change results: what enters a fingerprint."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("result")}


def profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise TsrError(f"{path}: no such profile file")
        return path
    shipped = Path(str(resources.files("builder") / "profiles" / f"{name_or_path}.yaml"))
    if not shipped.is_file():
        known = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
        raise TsrError(f"no profile {name_or_path!r}; shipped: {', '.join(known)}, or give a .yaml path")
    return shipped


def load_profile(name_or_path: str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Profile:
    """Dataclass defaults < the profile's YAML < `overrides` (flags: {section: {field: value}}, None = unset)."""
    raw: dict[str, Any] = {}
    name = source = "defaults"
    if name_or_path:
        path = profile_path(name_or_path)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text("utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TsrError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise TsrError(f"{path}: a profile is a mapping of sections ({', '.join(SECTIONS)})")
        name = path.stem
    sections = {}
    for section, cls in SECTIONS.items():
        values = dict(raw.get(section) or {})
        for key, value in (overrides or {}).get(section, {}).items():
            if value is not None:
                values[key] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TsrError(f"profile {name}: unknown {section} setting(s) {', '.join(unknown)}")
        try:
            sections[section] = cls(**values)
        except TsrError as exc:
            flagged = any(v is not None for v in (overrides or {}).get(section, {}).values())
            raise TsrError(f"profile {source}{' with command-line flags' if flagged else ''}: {exc}") from None
    unknown_sections = sorted(set(raw) - set(SECTIONS))
    if unknown_sections:
        raise TsrError(f"profile {name}: unknown section(s) {', '.join(unknown_sections)}")
    return Profile(name=name, **sections)
