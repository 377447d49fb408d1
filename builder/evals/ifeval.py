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
from builder.stages.generate import generate
from builder.stages.prompts import Chunking, import_prompts, prompt_id
from builder.store import Store, now_utc
from schemas.tables import EVALS

STAGE = "eval.ifeval"
CODE_VERSION = 1


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
    if not path.is_file():
        raise TsrError(f"{path}: no such file")
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
        key = str(record["key"])
        if key in keys:
            raise TsrError(f"{where}: duplicate key {key}")
        keys.add(key)
        rows.append(IFEvalRow(key, record["prompt"], ids, kwargs))
    return rows


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


def ifeval(
    store: Store,
    *,
    snapshot_id: str,
    path: Path,
    generate_cfg: GenerateConfig,
    load_generator: Callable[[], Generator],
) -> IFEvalResult:
    """Answer the file's prompts with `snapshot_id` (cached generations), check them, store one row per prompt."""
    rows = read_ifeval(path)
    prepare_checkers(store)
    manifest, _ = import_prompts(store, path, text_column="prompt", chunking=Chunking(chunks=1))
    prompts = pl.DataFrame({"prompt_id": [prompt_id(r.prompt) for r in rows], "text": [r.prompt for r in rows]})
    unique = prompts.unique("prompt_id", maintain_order=True)
    answers = generate(store, snapshot_id=snapshot_id, prompts=unique, prompt_set=manifest.version,
                       sample_indices=[0], cfg=generate_cfg, load_generator=load_generator, label="answer")
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
    store.write_version(
        version=version, stage=STAGE, code_version=CODE_VERSION, table="evals",
        data=pa.Table.from_pylist(records, schema=EVALS), partition={"kind": "ifeval"}, config=config,
        parents=parents, snapshot_id=snapshot_id, stats=summary,
    )
    return IFEvalResult(version, len(rows), summary)
