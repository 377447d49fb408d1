"""Settings, one dataclass per stage, layered: dataclass defaults < profile YAML < command-line flags.

Only fields marked `result=True` in their metadata enter fingerprints; the rest (batch sizes, devices, backends
that compute the same thing) are throughput knobs and never invalidate stored work.

Every field is checked against its declared type and the rules in its metadata (`min`, `gt`, `max`, `lt`,
`choices`) when a config is constructed, directly or from a profile, so a bad value is a one-line error before any
model loads or any row is written. Ints stay ints in a float field (YAML's `epochs: 1`), so fingerprints of
existing profiles do not change.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from builder.errors import TsrError

SEED_MAX = 2**32 - 1  # numpy's seed range, which transformers' set_seed feeds

# transformers.trainer_utils.SchedulerType values that work with the arguments train/common.py passes (no
# scheduler-specific kwargs, no eval strategy); checked here so a typo fails before a model loads.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
# The rest of SchedulerType: each needs settings tsr does not pass (min_lr, num_decay_steps, an eval strategy).
UNSUPPORTED_SCHEDULERS = ("reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                          "warmup_stable_decay", "greedy")
POLYNOMIAL_LR_END = 1e-7  # transformers' default lr_end of the polynomial schedule: the start rate must exceed it


def _result(default: Any, help: str, **rules: Any) -> Any:
    return field(default=default, metadata={"help": help, "result": True, **rules})


def _knob(default: Any, help: str, **rules: Any) -> Any:
    return field(default=default, metadata={"help": help, "result": False, **rules})


class SettingError(TsrError):
    """A bad setting; `field` names the offending field (None: a combination of fields)."""

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.field = field_name


@dataclass
class GenerateConfig:
    k: int = _result(2, "responses sampled per model per prompt (paper: 7 for TSR)", min=1)
    temperature: float = _result(1.0, "sampling temperature (paper: 1.0)", min=0)
    top_p: float = _result(1.0, "nucleus sampling (paper: 1.0)", gt=0, max=1)
    max_new_tokens: int = _result(64, "new tokens per response (paper: 1024)", min=1)
    seed: int = _result(0, "base seed; each sample's seed is derived from it, the prompt and the sample index",
                        min=0, max=SEED_MAX)
    backend: str = _knob("hf", "hf (transformers), vllm (in-process), or openai (an OpenAI-compatible server)",
                         choices=("hf", "vllm", "openai"))
    batch_size: int = _knob(8, "requests per batch (hf backend)", min=1)
    base_url: str | None = _knob(None, "openai: the server's API root, e.g. http://127.0.0.1:8000/v1")
    served_model: str | None = _knob(None, "openai: the model name the server knows (default: the snapshot's "
                                     "folder, as `transformers serve FOLDER` and `vllm serve FOLDER` name it)")
    api_key_env: str = _knob("OPENAI_API_KEY", "openai: the environment variable holding the API key (never stored)")
    max_in_flight: int = _knob(8, "openai: requests in flight at once", min=1)
    serve_command: str | None = _knob(None, "openai: the engine tsr starts on each snapshot it generates or judges "
                                      "with, e.g. 'vllm serve {model} --port {port}' ({model}: the snapshot's "
                                      "folder, {port}: a free port); instead of base_url")
    served_api: str = _knob("chat", "openai: chat (the server applies its chat template) or completions (tsr "
                            "renders the snapshot's own template and sends text)", choices=("chat", "completions"))

    def __post_init__(self) -> None:
        validate(self, "generate")
        if self.backend == "openai" and not (self.base_url or self.serve_command):
            raise SettingError("generate.backend openai needs generate.base_url (the server's API root) or "
                               "generate.serve_command (an engine tsr starts)", "base_url")
        if self.base_url and self.serve_command:
            raise SettingError("generate.base_url and generate.serve_command exclude each other: a running server, "
                               "or one tsr starts", "serve_command")
        if self.serve_command:
            from builder.backends.managed_server import check_template

            try:
                check_template(self.serve_command)
            except TsrError as exc:
                raise SettingError(str(exc), "serve_command") from None


@dataclass
class JudgeConfig:
    mode: str = _result("auto", "generate (parse `Score: N`), forced (digit probabilities) or auto (both)",
                        choices=("generate", "forced", "auto"))
    samples: int = _result(1, "judge replies averaged per response", min=1)
    temperature: float = _result(0.7, "sampling temperature of the judge's justification", min=0)
    max_new_tokens: int = _result(48, "tokens of justification (forced mode with 0: no justification)", min=0)
    template: str | None = _result(None, "rubric template file with {prompt} and {response}; default: built in")
    seed: int = _result(0, "base seed of judge sampling", min=0, max=SEED_MAX)
    batch_size: int = _knob(8, "judgments per batch", min=1)

    def __post_init__(self) -> None:
        validate(self, "judge")
        if self.mode == "generate" and self.max_new_tokens == 0:
            raise SettingError("judge.max_new_tokens 0 leaves generate mode no reply to read `Score: N` from; "
                               "use mode forced or auto, or more tokens", "max_new_tokens")


LAUNCHER_HELP = ("inprocess (train inside the tsr process), or a launcher command the training runs under, e.g. "
                 "'torchrun --nproc_per_node 8' or 'accelerate launch --config_file {accelerate_configs}/zero3.yaml'")


@dataclass
class TrainConfig:
    learning_rate: float = _result(5e-7, "DPO learning rate (paper: 5e-7)", gt=0)
    beta: float = _result(0.1, "DPO beta (paper: 0.1)", gt=0)
    epochs: float = _result(1.0, "epochs over the pairs", gt=0)
    global_batch: int = _result(32, "pairs per optimizer step, across devices and accumulation", min=1)
    lr_scheduler: str = _result("cosine", "learning-rate schedule", choices=LR_SCHEDULERS)
    warmup_ratio: float = _result(0.1, "share of steps spent warming up", min=0, lt=1)
    max_length: int = _result(2048, "prompt + response tokens", min=1)
    lora_r: int = _result(0, "LoRA rank (0: full fine-tuning); LoRA is merged before saving", min=0)
    seed: int = _result(0, "training seed", min=0, max=SEED_MAX)
    per_device_batch: int = _knob(1, "pairs per device per forward pass", min=1)
    bf16: str = _knob("auto", "auto (bf16 on CUDA only), true, false, or mixed (bf16 compute over fp32 weights "
                      "where the device has native bf16, else fp32)", choices=("auto", "true", "false", "mixed"))
    gradient_checkpointing: bool = _knob(True, "recompute activations in the backward pass: less memory, ~1/3 more "
                                               "compute (TRL's default; off pays on a small model)")
    launcher: str = _knob("inprocess", LAUNCHER_HELP)

    def __post_init__(self) -> None:
        _check_trainer(self, "train")


@dataclass
class SFTConfig:
    """Supervised fine-tuning of M0 on IFT + EFT data (train/sft.py); loss on the completions only."""

    learning_rate: float = _result(2e-6, "SFT learning rate (paper: 2e-6)", gt=0)
    epochs: float = _result(3.0, "epochs over the union of IFT and EFT examples (paper: 3)", gt=0)
    global_batch: int = _result(32, "examples per optimizer step, across devices and accumulation (paper: 32)",
                                min=1)
    lr_scheduler: str = _result("cosine", "learning-rate schedule (paper: cosine)", choices=LR_SCHEDULERS)
    warmup_ratio: float = _result(0.1, "share of steps spent warming up (paper: 0.1)", min=0, lt=1)
    max_length: int = _result(2048, "prompt + completion tokens (longer examples are cut at the end)", min=1)
    lora_r: int = _result(0, "LoRA rank (0: full fine-tuning); LoRA is merged before saving", min=0)
    seed: int = _result(0, "training seed (also the order of the examples)", min=0, max=SEED_MAX)
    per_device_batch: int = _knob(1, "examples per device per forward pass", min=1)
    bf16: str = _knob("auto", "auto (bf16 on CUDA only), true, false, or mixed (bf16 compute over fp32 weights "
                      "where the device has native bf16, else fp32)", choices=("auto", "true", "false", "mixed"))
    gradient_checkpointing: bool = _knob(True, "recompute activations in the backward pass: less memory, ~1/3 more "
                                               "compute (TRL's default; off pays on a small model)")
    launcher: str = _knob("inprocess", LAUNCHER_HELP)

    def __post_init__(self) -> None:
        _check_trainer(self, "sft")


def _check_trainer(cfg: TrainConfig | SFTConfig, section: str) -> None:
    """The checks both trainers' settings share (the same TRL arguments come from them: train/common.py)."""
    if isinstance(cfg.bf16, bool):  # YAML's unquoted `bf16: true` means the string "true"
        cfg.bf16 = "true" if cfg.bf16 else "false"
    validate(cfg, section)
    if not isinstance(cfg.launcher, str) or not cfg.launcher.strip():
        raise SettingError(f"{section}.launcher must be 'inprocess' or a launcher command, got {cfg.launcher!r}",
                           "launcher")
    if cfg.lr_scheduler == "polynomial" and cfg.learning_rate <= POLYNOMIAL_LR_END:
        raise SettingError(f"{section}.learning_rate must be above {POLYNOMIAL_LR_END} (the polynomial schedule's "
                           f"end rate), got {cfg.learning_rate}", "learning_rate")


@dataclass
class LoopConfig:
    chunks: int = _result(5, "chunks the default prompt set is split into (one per iteration)", min=1)
    prompts_per_iteration: int | None = _result(None, "use only the first N prompts of each chunk (None: all)",
                                                min=1)
    sr_k: int | None = _result(None, "K of the SR baseline (None: same as generate.k; paper: 4)", min=1)

    def __post_init__(self) -> None:
        validate(self, "loop")


EXECUTORS = ("local", "ray")


@dataclass
class ExecutorConfig:
    """Where the model stages (generate, judge, embed, the win rate's judge) compute their batches.

    Throughput settings only: rows, ids and texts are the same whichever executor computes them.
    """

    kind: str = _knob("local", "local (this process) or ray (an actor pool on a Ray cluster: RAY_ADDRESS, or a "
                      "local one)", choices=EXECUTORS)
    actors: int = _knob(2, "ray: actors, one model each", min=1)
    cpus_per_actor: float = _knob(1.0, "ray: CPUs reserved per actor (its torch threads)", min=0)
    gpus_per_actor: float = _knob(0.0, "ray: GPUs per actor (1 for a model per GPU)", min=0)
    max_restarts: int = _knob(3, "ray: restarts of a dead actor before the stage fails", min=0)
    threads_per_actor: int = _knob(0, "ray: torch CPU threads per actor; 0: as many as a local run here uses, so "
                                   "CPU rows match it bit for bit (another count can flip a near-tie token)", min=0)

    def __post_init__(self) -> None:
        validate(self, "executor")


@dataclass
class Profile:
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    name: str = "defaults"

    def __post_init__(self) -> None:
        for section, cls in SECTIONS.items():
            if not isinstance(getattr(self, section), cls):
                raise TsrError(f"profile {self.name}: {section} must be a {cls.__name__}, "
                               f"got {type(getattr(self, section)).__name__}")


SECTIONS = {"generate": GenerateConfig, "judge": JudgeConfig, "train": TrainConfig, "loop": LoopConfig,
            "sft": SFTConfig, "executor": ExecutorConfig}

_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _kind(f: dataclasses.Field) -> tuple[str, bool]:
    """(base type name, whether None is allowed) of a field annotated `int`, `float | None`, ..."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")]
    optional = "None" in parts
    base = next(part for part in parts if part != "None")
    return base, optional


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, short and on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value) if isinstance(value, (str, int, float)) else f"{type(value).__name__} {value}"
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_problem(value: float, rules: dict[str, Any], kind: str) -> str | None:
    low = ("[", rules["min"]) if "min" in rules else ("(", rules["gt"]) if "gt" in rules else None
    high = ("]", rules["max"]) if "max" in rules else (")", rules["lt"]) if "lt" in rules else None
    ok = ((low is None or (value >= low[1] if low[0] == "[" else value > low[1]))
          and (high is None or (value <= high[1] if high[0] == "]" else value < high[1])))
    if ok:
        return None
    if low and high:
        return f"must be in {low[0]}{_bound(low[1])}, {_bound(high[1])}{high[0]}"
    if low:
        if low[0] == "(":
            return f"must be > {_bound(low[1])}"
        return f"must be at least {low[1]}" if kind == "int" else f"must be >= {_bound(low[1])}"
    assert high is not None
    return f"must be at most {_bound(high[1])}" if high[0] == "]" else f"must be below {_bound(high[1])}"


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is not valid for field `f` (type, then range or choices), or None when it is: the message after
    the field's name, e.g. "must be an integer, got 'two'"."""
    kind, optional = _kind(f)
    got = f"got {show(value)}"
    if value is None:
        return None if optional else f"must be {_KINDS.get(kind, kind)}, {got}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, {got}"
    if isinstance(value, bool) and kind != "str":
        return f"must be {_KINDS[kind]}, {got}"
    if kind == "int" and not isinstance(value, int):
        return f"must be an integer, {got}"
    if kind == "float" and not isinstance(value, (int, float)):
        return f"must be a number, {got}"
    if kind == "float" and not math.isfinite(value):
        return f"must be a finite number, {got}"
    if kind == "str" and not isinstance(value, str):
        return f"must be a string, {got}"
    rules = f.metadata
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        if choices == LR_SCHEDULERS and value in UNSUPPORTED_SCHEDULERS:
            return (f"{value!r} needs scheduler arguments tsr does not pass (min_lr, num_decay_steps or an eval "
                    f"strategy); use one of {', '.join(choices)}")
        return f"must be one of {', '.join(choices)}, {got}{_suggest(str(value), list(choices))}"
    if kind in ("int", "float"):
        problem = _range_problem(value, rules, kind)
        return None if problem is None else f"{problem}, {got}"
    return None


def validate(config: Any, section: str) -> None:
    """Raise SettingError naming `section.field` for the first field of `config` that breaks its type or rules."""
    for f in dataclasses.fields(config):
        problem = field_problem(f, getattr(config, f.name))
        if problem is not None:
            raise SettingError(f"{section}.{f.name} {problem}", f.name)


def result_fields(config: Any) -> dict[str, Any]:
    """The settings of `config` that change results: what enters a fingerprint."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("result")}


def profiles_dir() -> Path:
    return Path(str(resources.files("builder").joinpath("profiles")))


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _suggest(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def profile_path(name_or_path: str) -> Path:
    """A shipped profile's name (paper, cpu-demo) or a YAML file's path: the file to read."""
    known = shipped_profiles()
    listing = f"shipped: {', '.join(known)}" if known else f"no profiles found in {profiles_dir()}"
    if not name_or_path or not name_or_path.strip():
        raise TsrError(f"empty profile name; {listing}, or give a .yaml path")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path or "\\" in name_or_path:
        if path.is_dir():
            raise TsrError(f"{path}: is a folder, not a profile file")
        if not path.is_file():
            raise TsrError(f"{path}: no such profile file ({listing})")
        return path
    shipped = profiles_dir() / f"{name_or_path}.yaml"
    if name_or_path not in known or not shipped.is_file():
        raise TsrError(f"no profile {name_or_path!r}{_suggest(name_or_path, known)}; {listing}, "
                       f"or give a .yaml path")
    return shipped


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: YAML keeps the last, silently dropping the first."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key is refused by the base class with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{show(key)} given twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_profile(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TsrError(f"{path}: cannot read the profile ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TsrError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TsrError(f"{path}: invalid YAML ({first})") from None
    except RecursionError:
        raise TsrError(f"{path}: invalid YAML (nested too deeply)") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TsrError(f"{path}: a profile is a mapping of sections ({', '.join(SECTIONS)}), got {show(raw)}")
    return raw


def _unknown(kind: str, names: list[str], known: list[str]) -> str:
    """"unknown generate setting 'temprature' (did you mean 'temperature'?)"; the known names when none is near."""
    hints = [_suggest(name, known) for name in names]
    shown = ", ".join(f"{show(name)}{hint}" for name, hint in zip(names, hints))
    listing = "" if all(hints) else f"; known: {', '.join(known)}"
    return f"unknown {kind}{'s' if len(names) > 1 else ''} {shown}{listing}"


def load_profile(name_or_path: str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Profile:
    """Dataclass defaults < the profile's YAML < `overrides` (flags: {section: {field: value}}, None = unset)."""
    raw: dict[str, Any] = {}
    name = source = "defaults"
    if name_or_path is not None:
        path = profile_path(name_or_path)
        source = str(path)
        raw = _read_profile(path)
        name = path.stem
    sections_known = list(SECTIONS)
    unknown_sections = sorted({str(key) for key in raw} - set(SECTIONS))
    if unknown_sections:
        raise TsrError(f"profile {source}: {_unknown('section', unknown_sections, sections_known)}")
    unknown_flag_sections = sorted(set(overrides or {}) - set(SECTIONS))
    if unknown_flag_sections:
        raise TsrError(f"command-line flags: {_unknown('section', unknown_flag_sections, sections_known)}")
    sections = {}
    for section, cls in SECTIONS.items():
        written = raw.get(section)
        if written is None:
            written = {}
        if not isinstance(written, dict):
            raise TsrError(f"profile {source}: the {section} section must be a mapping of settings "
                           f"(key: value), got {show(written)}")
        values = {str(key): value for key, value in written.items()}
        flagged = {key for key, value in (overrides or {}).get(section, {}).items() if value is not None}
        for key in flagged:
            values[key] = overrides[section][key]  # type: ignore[index]
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            where = " with command-line flags" if set(unknown) & flagged else ""
            raise TsrError(f"profile {source}{where}: {_unknown(f'{section} setting', unknown, known)}")
        try:
            sections[section] = cls(**values)
        except TsrError as exc:
            bad = getattr(exc, "field", None)
            from_flag = bad in flagged if bad is not None else bool(flagged)
            raise TsrError(f"profile {source}{' with command-line flags' if from_flag else ''}: {exc}") from None
    return Profile(name=name, **sections)
