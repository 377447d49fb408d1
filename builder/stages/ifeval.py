"""Verifiable instruction following on a user-supplied file in IFEval's format.

Each line is a JSON object with `key`, `prompt`, `instruction_id_list` and `kwargs` (one dict per instruction).
The prompts are imported as an ordinary prompt set (one chunk), the snapshot answers them through the generate
stage (sample index 0, cached), and every answer is checked with the IFEval checkers of `if-verifiable` (a
maintained packaging of Google's checkers, used as they are). Strict checks the response as written; loose also
accepts it after removing its first line, its last line, both, or markdown asterisks (IFEval's definition).

Accuracies: prompt level is the share of prompts whose every instruction is followed; instruction level is the
share of all instructions followed. Nothing is downloaded: the sentence-count checkers' NLTK Punkt model is laid
out offline (builder/evals/nltk_offline.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from builder.backends.base import Generator
from builder.config import GenerateConfig, result_fields
from builder.errors import TsrError
from builder.evals.nltk_offline import INSTALL, use_offline_punkt
from builder.fingerprint import canonical_json, content_hash, stage_fingerprint
from builder.readers import jsonl_records, read_utf8
from builder.stages.base import LOCAL, Executor, Plan, Stage, rows_as_given, run_stage
from builder.stages.generate import generate
from builder.stages.prompts import Chunking, import_prompts, prompt_id
from builder.store import Store, now_utc
from schemas.tables import EVALS

STAGE = "eval.ifeval"
CODE_VERSION = 1
IFEVAL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # what the prompt import reads as JSON Lines


@dataclass(frozen=True)
class IFEvalRow:
    key: str
    prompt: str
    instruction_ids: list[str]
    kwargs: list[dict[str, Any]]


@dataclass(frozen=True)
class InstructionCheck:
    strict: list[bool]
    loose: list[bool]


@dataclass(frozen=True)
class IFEvalResult:
    version: str
    prompts: int
    summary: dict[str, Any]


def _registry() -> dict[str, Any]:
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as exc:
        raise TsrError(f"tsr eval ifeval needs if-verifiable ({exc.name} is missing): {INSTALL}") from None
    return dict(INSTRUCTION_DICT)


def read_ifeval(path: Path) -> list[IFEvalRow]:
    """The rows of an IFEval-format JSONL file, checked: one-line errors name the line and the problem."""
    if path.exists() and not path.is_dir() and path.suffix.lower() not in IFEVAL_SUFFIXES:
        raise TsrError(f"{path}: an IFEval file is JSON Lines ({', '.join(IFEVAL_SUFFIXES)}), "
                       f"not {path.suffix or '(no suffix)'}")
    known = _registry()
    rows: list[IFEvalRow] = []
    keys: set[str] = set()
    for number, record in jsonl_records(path, read_utf8(path)):  # an empty file is an error there
        where = f"{path}: line {number}"
        missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in record]
        if missing:
            raise TsrError(f"{where}: missing {', '.join(missing)} (IFEval rows have key, prompt, "
                           "instruction_id_list, kwargs)")
        ids, kwargs = record["instruction_id_list"], record["kwargs"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise TsrError(f"{where}: instruction_id_list must be a non-empty list of strings")
        if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            raise TsrError(f"{where}: kwargs must be a list of {len(ids)} objects, one per instruction")
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise TsrError(f"{where}: unknown instruction id(s) {', '.join(unknown)}")
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise TsrError(f"{where}: prompt must be a non-empty string")
        if not isinstance(record["key"], (str, int)) or isinstance(record["key"], bool):
            raise TsrError(f"{where}: key must be a number or a string, got {type(record['key']).__name__}")
        key = str(record["key"])
        if key in keys:
            raise TsrError(f"{where}: duplicate key {key}")
        keys.add(key)
        for instruction_id, arguments in zip(ids, kwargs):
            _check_kwargs(where, known[instruction_id], instruction_id, arguments, record["prompt"])
        rows.append(IFEvalRow(key, record["prompt"], ids, kwargs))
    return rows


# The types of the checkers' arguments (IFEval's own data uses exactly these); a wrong type some checker would
# accept silently (a string where a list of keywords belongs reads as its letters) is refused.
_INT_ARGS = ("num_sentences", "num_placeholders", "num_bullets", "num_highlights", "num_sections", "num_paragraphs",
             "nth_paragraph", "frequency", "num_words", "let_frequency", "capital_frequency", "low", "high")
_TEXT_ARGS = ("language", "relation", "starter", "section_spliter", "postscript_marker", "keyword", "first_word",
              "end_phrase", "letter", "let_relation", "capital_relation", "prompt_to_repeat", "original_message",
              "original_paragraph")
_LIST_ARGS = ("keywords", "forbidden_words", "key_sentences")
ARGUMENT_TYPES = ({name: "a whole number" for name in _INT_ARGS} | {name: "a string" for name in _TEXT_ARGS}
                  | {name: "a list of strings" for name in _LIST_ARGS})


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "a whole number":
        if isinstance(value, float):  # 3.0, as a dataset export through a float column writes 3
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a string":
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_kwargs(where: str, checker_class: Any, instruction_id: str, arguments: dict[str, Any],
                  prompt: str) -> None:
    """Build the checker as check_response will (None values dropped), so a bad kwargs fails before any write.

    The checkers draw any argument they are not given at random, which would make results differ from run to
    run: a row must give every argument that changes what its checker accepts.
    """
    given = {k: v for k, v in arguments.items() if v is not None}
    for name, value in given.items():
        kind = ARGUMENT_TYPES.get(name)
        if kind is not None and not _is_kind(value, kind):
            raise TsrError(f"{where}: instruction {instruction_id}: kwargs {name} must be {kind}, "
                           f"got {canonical_json(value)[:60]}")
    state = random.getstate()
    try:
        built = []
        for seed in (0, 1):  # two draws: an argument left to chance differs between them
            random.seed(seed)
            checker = checker_class(instruction_id)
            allowed = list(checker.get_instruction_args_keys())
            unknown = sorted(set(given) - set(allowed))
            if unknown:
                raise TsrError(f"{where}: instruction {instruction_id}: unknown kwargs {', '.join(unknown)} "
                               f"(it takes {', '.join(allowed) or 'none'})")
            checker.build_description(**given)
            args = checker.get_instruction_args()
            if args and "prompt" in args:
                checker.build_description(prompt=prompt)
                args = checker.get_instruction_args()
            built.append(args or {})
    except TsrError:
        raise
    except Exception as exc:  # noqa: BLE001 - any complaint of a checker about its kwargs is the file's fault
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 160:
            reason = reason[:157] + "..."
        raise TsrError(f"{where}: instruction {instruction_id}: its checker rejects kwargs "
                       f"{canonical_json(arguments)[:120]} ({type(exc).__name__}: {reason})") from None
    finally:
        random.setstate(state)
    first, second = built
    random_args = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
    if random_args:
        raise TsrError(f"{where}: instruction {instruction_id}: kwargs must give {', '.join(random_args)} "
                       "(the checker would draw them at random)")


def check_response(row: IFEvalRow, response: str) -> InstructionCheck:
    """Strict and loose results of each of the row's instructions on `response` (if-verifiable's checkers)."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(response=response, instruction_id_list=row.instruction_ids,
                                       kwargs_list=row.kwargs, prompt=row.prompt, instruction_registry=_registry())
    if len(results) != len(row.instruction_ids):  # an empty response: the library returns no results
        return InstructionCheck([False] * len(row.instruction_ids), [False] * len(row.instruction_ids))
    return InstructionCheck([bool(r.strict_pass) for r in results], [bool(r.loose_pass) for r in results])


def accuracies(checks: list[InstructionCheck]) -> dict[str, float]:
    strict = [c.strict for c in checks]
    loose = [c.loose for c in checks]
    instructions = sum(len(s) for s in strict)
    return {
        "prompt_strict": sum(all(s) for s in strict) / len(checks),
        "prompt_loose": sum(all(s) for s in loose) / len(checks),
        "instruction_strict": sum(sum(s) for s in strict) / instructions,
        "instruction_loose": sum(sum(s) for s in loose) / instructions,
    }


def prepare_checkers(store: Store) -> None:
    """Deterministic, offline checkers: NLTK Punkt from the store's cache, a fixed langdetect seed."""
    use_offline_punkt(store.root / "_cache" / "nltk_data")
    try:
        from langdetect import DetectorFactory

        DetectorFactory.seed = 0  # langdetect is random unless seeded
    except ImportError:  # pragma: no cover - a dependency of if-verifiable
        pass


IFEVAL = Stage(name=STAGE, code_version=CODE_VERSION, table="evals", partition=("kind",), id_column="eval_id",
               reads=("eval_id", "generation_id", "follow_strict", "follow_loose"), compute=rows_as_given,
               version_column="eval_version")


def ifeval(
    store: Store,
    *,
    snapshot_id: str,
    path: Path,
    generate_cfg: GenerateConfig,
    load_generator: Callable[[], Generator],
    spec=None,
    executor: Executor = LOCAL,
) -> IFEvalResult:
    """Answer the file's prompts with `snapshot_id` (cached generations), check them, store one row per prompt."""
    rows = read_ifeval(path)
    prepare_checkers(store)
    manifest, _ = import_prompts(store, path, text_column="prompt", chunking=Chunking(chunks=1))
    prompts = pl.DataFrame({"prompt_id": [prompt_id(r.prompt) for r in rows], "text": [r.prompt for r in rows]})
    unique = prompts.unique("prompt_id", maintain_order=True)
    answers = generate(store, snapshot_id=snapshot_id, prompts=unique, prompt_set=manifest.version,
                       sample_indices=[0], cfg=generate_cfg, load_generator=load_generator, spec=spec,
                       executor=executor, label="answer")
    by_prompt = dict(zip(unique["prompt_id"].to_list(), answers.generation_ids))
    from importlib import metadata

    checker = {"library": "if-verifiable", "version": metadata.version("if-verifiable")}
    file_hash = content_hash([[r.key, r.prompt, r.instruction_ids, r.kwargs] for r in rows])
    config = {"file": file_hash, "source": path.name, "generate": result_fields(generate_cfg), "checker": checker}
    parents = sorted({manifest.version, answers.version})
    version = stage_fingerprint(STAGE, CODE_VERSION, config, parents, snapshot_id)
    existing = store.manifest(version)
    if existing is not None:
        return IFEvalResult(version, len(rows), existing.stats)

    started = time.monotonic()
    generations = pl.from_arrow(store.read("generations"))
    assert isinstance(generations, pl.DataFrame)
    texts = generations.unique("generation_id").select("generation_id", "text", "completion_tokens")
    lookup = {r["generation_id"]: r for r in texts.filter(
        pl.col("generation_id").is_in(list(by_prompt.values()))).to_dicts()}
    records, checks = [], []
    for row, pid in zip(rows, prompts["prompt_id"].to_list()):
        generation = lookup[by_prompt[pid]]
        check = check_response(row, generation["text"])
        checks.append(check)
        records.append({name: None for name in EVALS.names} | {
            "eval_id": content_hash({"kind": "ifeval", "generation": generation["generation_id"], "key": row.key,
                                     "instructions": canonical_json([row.instruction_ids, row.kwargs]),
                                     "checker": checker}),
            "eval_version": version, "kind": "ifeval", "prompt_id": pid, "snapshot_id": snapshot_id,
            "generation_id": generation["generation_id"], "completion_tokens": generation["completion_tokens"],
            "ifeval_key": row.key, "instruction_ids": row.instruction_ids, "follow_strict": check.strict,
            "follow_loose": check.loose, "prompt_strict": all(check.strict), "prompt_loose": all(check.loose),
            "created_at": now_utc(),
        })
    summary = {**accuracies(checks), "prompts": len(rows), "instructions": sum(len(r.instruction_ids) for r in rows),
               "mean_tokens": sum(r["completion_tokens"] for r in records) / len(records),
               "checker": checker, "seconds_checking": round(time.monotonic() - started, 3)}
    plan = Plan(config=config, parents=parents, partition_value="ifeval", snapshot_id=snapshot_id, version=version,
                rows=pa.Table.from_pylist(records, schema=EVALS), extra_stats=lambda _rows: summary)
    run_stage(store, IFEVAL, plan)
    return IFEvalResult(version, len(rows), summary)
