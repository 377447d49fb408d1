"""SFT data for M0: instruction-following (IFT) and evaluation fine-tuning (EFT) sets as versioned tables.

IFT rows are conversations whose last message is the assistant's answer (imported from `prompt`/`response` pairs or
`messages` lists, JSONL or Parquet). EFT rows are (prompt, response, justification, score): the SFT trainer renders
prompt and response through the judge template the pipeline uses and trains on "justification\\nScore: N", so the
model learns exactly the reply format `tsr judge` asks for.

EFT rows also come from the store (`build_eft`): generations judged by a judge stronger than the model being trained
(a fixed judge snapshot's generated justification, or a reward model's score on a rubric line), optionally kept
only for prompts where the judge ranks the responses as a reference ranking does (both papers built EFT that way).

A set's version is the hash of its rows' ids in order (imports) or of its inputs and settings (builds): importing
the same content again is a no-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from builder import judging
from builder.backends.base import SCORE_PREFIX
from builder.errors import TsrError
from builder.fingerprint import content_hash, stage_fingerprint
from builder.readers import jsonl_records, read_utf8
from builder.stages.base import Plan, Stage, rows_as_given, run_stage
from builder.store import Manifest, Store
from schemas.tables import EFT, IFT

IFT_STAGE = "ift.import"
EFT_STAGE = "eft.import"
EFT_BUILD_STAGE = "eft.build"
CODE_VERSION = 1
DEFAULT_IFT = "ift_seed.jsonl"  # shipped in builder/data, written for this project
DEFAULT_EFT = "eft_seed.jsonl"
ROLES = ("system", "user", "assistant")

# The justification a reward model's score gets (it writes none): the rubric's criteria the score stands for.
RUBRIC_LINES = [
    "The response is not relevant to the question and offers no related information.",
    "The response is relevant and offers some related information, but does not deal with the question itself.",
    ("The response is relevant and deals with a substantial part of the question, but does not answer its basic "
     "elements in a useful way."),
    ("The response is relevant, deals with the question and answers its basic elements usefully, but is not a "
     "clear, complete and well organised answer."),
    ("The response is relevant, answers the question directly and completely, and is clearly written and well "
     "organised, though it is not an expert, impeccably tailored answer."),
    ("The response is relevant, complete, clearly written and well organised, and it is an expert answer tailored "
     "to the question with no extraneous content."),
]


def default_ift_path() -> Path:
    return Path(str(resources.files("builder") / "data" / DEFAULT_IFT))


def default_eft_path() -> Path:
    return Path(str(resources.files("builder") / "data" / DEFAULT_EFT))


# ---- reading ---------------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every row of a JSONL or Parquet file, with one-line errors on bad input."""
    if not path.exists():
        raise TsrError(f"{path}: no such file")
    if not path.is_file():
        raise TsrError(f"{path}: not a file")
    suffix = path.suffix.lower()
    records: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise TsrError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        records = [(f"row {i + 1}", row) for i, row in enumerate(rows)]
    elif suffix in (".jsonl", ".ndjson", ".json"):
        records = [(f"line {number}", record) for number, record in jsonl_records(path, read_utf8(path))]
    else:
        raise TsrError(f"{path}: unknown format {suffix or '(no suffix)'}; use .jsonl or .parquet")
    if not records:
        raise TsrError(f"{path}: file has no rows")
    return records


def _text(path: Path, where: str, record: dict, column: str) -> str:
    if column not in record or record[column] is None:
        raise TsrError(f"{path}: {where}: missing column {column!r}")
    value = record[column]
    if not isinstance(value, str):
        raise TsrError(f"{path}: {where}: column {column!r} is {type(value).__name__}, expected text")
    if not value.strip():
        raise TsrError(f"{path}: {where}: column {column!r} is empty")
    return value


def parse_ift(path: Path) -> list[list[dict[str, str]]]:
    """Conversations from `messages` lists or `prompt`/`response` pairs (`completion` is read as `response`)."""
    conversations = []
    for where, record in read_records(path):
        if "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise TsrError(f"{path}: {where}: column 'messages' must be a non-empty list of messages")
            checked = []
            for i, message in enumerate(messages):
                if not isinstance(message, dict):
                    raise TsrError(f"{path}: {where}: message {i + 1} is not an object with role and content")
                role = message.get("role")
                if role not in ROLES:
                    raise TsrError(f"{path}: {where}: message {i + 1} has role {role!r}; use {', '.join(ROLES)}")
                checked.append({"role": role, "content": _text(path, f"{where}, message {i + 1}", message,
                                                                "content")})
            if checked[-1]["role"] != "assistant":
                raise TsrError(f"{path}: {where}: the last message must be the assistant's (the completion)")
            if not any(m["role"] == "user" for m in checked[:-1]):
                raise TsrError(f"{path}: {where}: no user message before the assistant's answer")
            conversations.append(checked)
        elif "prompt" in record:
            column = "response" if "response" in record else "completion"
            conversations.append([{"role": "user", "content": _text(path, where, record, "prompt")},
                                  {"role": "assistant", "content": _text(path, where, record, column)}])
        else:
            raise TsrError(f"{path}: {where}: expected a 'messages' column or 'prompt' and 'response' columns "
                           f"(got {', '.join(c if c.isprintable() else repr(c) for c in record) or 'none'})")
    return conversations


def parse_eft(path: Path) -> list[dict[str, Any]]:
    """(prompt, response, justification, score) rows; a justification's own trailing `Score: N` line is dropped."""
    rows = []
    for where, record in read_records(path):
        fields = {c: _text(path, where, record, c) for c in ("prompt", "response", "justification")}
        score = record.get("score")
        if isinstance(score, str) and score.strip().isdigit():
            score = int(score.strip())
        if isinstance(score, float) and score.is_integer():
            score = int(score)
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
            raise TsrError(f"{path}: {where}: column 'score' must be a whole number from 0 to 5, got {score!r}")
        written, _ = judging.parse_score(fields["justification"])
        if written is not None and written != score:
            raise TsrError(f"{path}: {where}: the justification ends with score {written} but 'score' is {score}")
        fields["justification"] = judging.cut_at_score(fields["justification"]) if written is not None \
            else fields["justification"].strip()
        if not fields["justification"]:
            raise TsrError(f"{path}: {where}: column 'justification' has no text before its score line")
        rows.append({**fields, "score": score})
    return rows


# ---- importing -------------------------------------------------------------------------------------------------


def ift_example_id(messages: list[dict[str, str]]) -> str:
    return content_hash({"ift": [[m["role"], m["content"]] for m in messages]})


def eft_example_id(row: dict[str, Any]) -> str:
    return content_hash({"eft": [row["prompt"], row["response"], row["justification"], row["score"]]})


IFT_IMPORT = Stage(name=IFT_STAGE, code_version=CODE_VERSION, table="ift", partition=("set",),
                   id_column="example_id", reads=("example_id", "messages"), compute=rows_as_given)
EFT_IMPORT = Stage(name=EFT_STAGE, code_version=CODE_VERSION, table="eft", partition=("set",),
                   id_column="example_id", reads=("example_id", "prompt", "response", "score"), compute=rows_as_given)
EFT_BUILD = Stage(name=EFT_BUILD_STAGE, code_version=CODE_VERSION, table="eft", partition=("set",),
                  id_column="example_id", reads=EFT_IMPORT.reads, compute=rows_as_given)


def _write_set(store: Store, stage: Stage, plan: Plan) -> tuple[Manifest, bool]:
    run_stage(store, stage, plan)
    return store.manifest(plan.version), True


def import_ift(store: Store, path: Path) -> tuple[Manifest, bool]:
    """Import an IFT file as an IFT-set version. Returns (manifest, created); created is False on a no-op."""
    conversations = parse_ift(path)
    ids = [ift_example_id(c) for c in conversations]
    version = stage_fingerprint(IFT_STAGE, CODE_VERSION, {"examples": content_hash(ids)}, parents=[])
    existing = store.manifest(version)
    if existing is not None:
        return existing, False
    table = pa.Table.from_pydict(
        {"example_id": ids, "set_version": [version] * len(ids), "messages": conversations,
         "source": [path.name] * len(ids), "position": list(range(len(ids)))},
        schema=IFT,
    )
    turns = [len(c) for c in conversations]
    stats = {"examples": len(ids), "multi_turn": sum(t > 2 for t in turns), "duplicates": len(ids) - len(set(ids))}
    plan = Plan(config={"source": path.name}, parents=[], partition_value=version, snapshot_id=None,
                version=version, rows=table, extra_stats=lambda _rows: stats)
    return _write_set(store, IFT_IMPORT, plan)


def _eft_table(rows: list[dict[str, Any]], version: str) -> pa.Table:
    columns = {name: [row.get(name) for row in rows] for name in EFT.names if name not in ("set_version",
                                                                                          "example_id")}
    return pa.Table.from_pydict(
        {**columns, "example_id": [eft_example_id(r) for r in rows], "set_version": [version] * len(rows)},
        schema=EFT,
    )


def _score_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {str(s): sum(r["score"] == s for r in rows) for s in range(6)}


def import_eft(store: Store, path: Path) -> tuple[Manifest, bool]:
    """Import an EFT file as an EFT-set version. Returns (manifest, created); created is False on a no-op."""
    rows = parse_eft(path)
    for position, row in enumerate(rows):
        row.update(source=path.name, position=position)
    ids = [eft_example_id(r) for r in rows]
    version = stage_fingerprint(EFT_STAGE, CODE_VERSION, {"examples": content_hash(ids)}, parents=[])
    existing = store.manifest(version)
    if existing is not None:
        return existing, False
    stats = {"examples": len(rows), "scores": _score_counts(rows)}
    return _write_set(store, EFT_IMPORT, Plan(config={"source": path.name}, parents=[], partition_value=version,
                                              snapshot_id=None, version=version, rows=_eft_table(rows, version),
                                              extra_stats=lambda _rows: stats))


def find_set(store: Store, ref: str, table: str) -> Manifest:
    manifest = store.find_version(ref)
    if manifest.table != table:
        raise TsrError(f"version {manifest.version} is a {manifest.table} version, not an {table.upper()} set")
    return manifest


# ---- building EFT from judged generations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A user's reference ranking: a value per generation, higher is better (ranks are turned around)."""

    values: dict[str, float]
    digest: str


def read_reference(path: Path) -> Reference:
    """JSONL or Parquet with `generation_id` and either `rank` (1 = best) or `score` (higher = better)."""
    values: dict[str, float] = {}
    for where, record in read_records(path):
        gid = _text(path, where, record, "generation_id")
        if "rank" in record:
            value, sign = record["rank"], -1.0
        elif "score" in record:
            value, sign = record["score"], 1.0
        else:
            raise TsrError(f"{path}: {where}: expected a 'rank' (1 = best) or a 'score' (higher = better) column")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TsrError(f"{path}: {where}: the reference rank or score must be a finite number, got {value!r}")
        if gid in values:
            raise TsrError(f"{path}: {where}: generation {gid} is ranked twice")
        values[gid] = sign * float(value)
    return Reference(values, content_hash(sorted(values.items())))


def agrees(judge_scores: list[float], reference: list[float]) -> bool:
    """True when every pair the reference orders strictly, the judge orders the same way strictly."""
    for i in range(len(reference)):
        for j in range(len(reference)):
            if reference[i] > reference[j] and not judge_scores[i] > judge_scores[j]:
                return False
    return True


def _generated_justification(raw_reply: str, score: float) -> str | None:
    """The first judge sample whose parsed score is `score`, cut before its score line (None if none is)."""
    for reply in raw_reply.split(judging.SAMPLE_SEPARATOR):
        parsed, _ = judging.parse_score(reply)
        if parsed is not None and parsed == score:
            text = judging.cut_at_score(reply)
            return text or None
    return None


def reward_to_scores(rewards: list[float]) -> list[int]:
    """Raw reward-model scores onto 0..5 by rank: equal sixths of the sorted rewards (ties share a score)."""
    ordered = sorted(rewards)
    n = len(ordered)
    return [min(5, ordered.index(r) * 6 // n) for r in rewards]


def build_eft(
    store: Store,
    *,
    judge_id: str,
    snapshot_id: str | None = None,
    reference: Reference | None = None,
    reference_name: str | None = None,
) -> tuple[Manifest, bool]:
    """EFT rows from `judge_id`'s judgments in the store (of `snapshot_id`'s generations, if given).

    A generative judge contributes the replies it scored itself (`scored_by` generate, one whole-number score);
    a reward model its scores mapped to 0..5 by rank with the rubric line of that score as justification.
    With a reference, only prompts whose judged responses the judge orders as the reference does are kept.
    """
    judgments = pl.from_arrow(store.read("judgments"))
    assert isinstance(judgments, pl.DataFrame)
    judgments = judgments.filter(pl.col("judge_id") == judge_id)
    generations = pl.from_arrow(store.read("generations").select(["generation_id", "snapshot_id", "prompt_id",
                                                                  "text", "version"]))
    prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"]))
    assert isinstance(generations, pl.DataFrame) and isinstance(prompts, pl.DataFrame)
    frame = judgments.join(generations.rename({"text": "response", "version": "generation_version"}),
                           on="generation_id", how="inner")
    if snapshot_id is not None:
        frame = frame.filter(pl.col("snapshot_id") == snapshot_id)
    frame = frame.join(prompts.unique("prompt_id").rename({"text": "prompt"}), on="prompt_id", how="inner")
    if frame.is_empty():
        whose = f" of snapshot {snapshot_id}" if snapshot_id else ""
        raise TsrError(f"no judgments by {judge_id} of generations{whose} in {store.root}: "
                       f"run `tsr judge --judge ...` first")
    # One judgment per generation: the newest (a judge may have scored it under several settings).
    frame = frame.sort(["created_at", "judgment_id"]).unique("generation_id", keep="last").sort("generation_id")
    reward = (frame["scored_by"] == "reward").all()
    dropped: dict[str, int] = {}
    if reward:
        frame = frame.filter(pl.col("score").is_not_null())
        frame = frame.with_columns(pl.Series("eft_score", reward_to_scores(frame["score"].to_list())))
        frame = frame.with_columns(
            pl.col("eft_score").map_elements(lambda s: RUBRIC_LINES[s], return_dtype=pl.String).alias("why"))
    else:
        generated = frame.filter((pl.col("scored_by") == "generate") & pl.col("score").is_not_null())
        dropped["not scored by a written justification"] = frame.height - generated.height
        whole = generated.filter(pl.col("score") == pl.col("score").round(0))
        dropped["averaged to a fraction"] = generated.height - whole.height
        why = [_generated_justification(raw, score) for raw, score in zip(whole["raw_reply"], whole["score"])]
        frame = whole.with_columns(pl.Series("why", why, dtype=pl.String),
                                   pl.col("score").cast(pl.Int32).alias("eft_score"))
        dropped["no justification before the score"] = frame["why"].null_count()
        frame = frame.filter(pl.col("why").is_not_null())
    if reference is not None:
        frame = frame.with_columns(pl.col("generation_id").replace_strict(reference.values, default=None,
                                                                          return_dtype=pl.Float64).alias("ref"))
        ranked = frame.filter(pl.col("ref").is_not_null())
        dropped["no reference rank"] = frame.height - ranked.height
        keep = []
        for _, group in ranked.group_by("prompt_id", maintain_order=True):
            if group.height >= 2 and agrees(group["score"].to_list(), group["ref"].to_list()):
                keep.extend(group["generation_id"].to_list())
        dropped["judge disagrees with the reference (or one response)"] = ranked.height - len(keep)
        frame = ranked.filter(pl.col("generation_id").is_in(keep))
    if frame.is_empty():
        raise TsrError(f"no EFT rows left from judge {judge_id}'s judgments ({_describe(dropped)})")
    frame = frame.sort(["prompt_id", "generation_id"])
    rows = [
        {"prompt": r["prompt"], "response": r["response"], "justification": r["why"], "score": r["eft_score"],
         "source": "judgments", "position": i, "generation_id": r["generation_id"],
         "judgment_id": r["judgment_id"], "judge_id": judge_id}
        for i, r in enumerate(frame.iter_rows(named=True))
    ]
    config = {"judge": judge_id, "snapshot": snapshot_id, "reward": bool(reward),
              "reference": reference.digest if reference else None, "reference_file": reference_name,
              "judgments": content_hash(sorted(frame["judgment_id"].to_list()))}
    parents = sorted(set(frame["version"].to_list()))
    version = stage_fingerprint(EFT_BUILD_STAGE, CODE_VERSION, config, parents, judge_id)
    existing = store.manifest(version)
    if existing is not None:
        return existing, False
    stats = {"examples": len(rows), "scores": _score_counts(rows), "dropped": dropped}
    return _write_set(store, EFT_BUILD, Plan(config=config, parents=parents, partition_value=version,
                                             snapshot_id=judge_id, version=version, rows=_eft_table(rows, version),
                                             extra_stats=lambda _rows: stats))


def _describe(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in dropped.items() if n) or "none to start from"


# ---- rendering for the trainer -----------------------------------------------------------------------------------


def eft_target(justification: str, score: int) -> str:
    """The reply EFT teaches: the justification, then the final line `Score: N` that `parse_score` reads."""
    return f"{justification.strip()}\n{SCORE_PREFIX} {score}"


def sft_examples(store: Store, ift_version: str | None, eft_version: str | None, template: str) -> list[dict]:
    """The union of an IFT and an EFT set as TRL prompt-completion conversations, in a fixed order."""
    examples: list[dict] = []
    if ift_version is not None:
        for row in store.read("ift", versions=[ift_version]).sort_by("position").to_pylist():
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            examples.append({"prompt": messages[:-1], "completion": messages[-1:]})
    if eft_version is not None:
        for row in store.read("eft", versions=[eft_version]).sort_by("position").to_pylist():
            judge_prompt = judging.render_template(template, row["prompt"], row["response"])
            examples.append({"prompt": [{"role": "user", "content": judge_prompt}],
                             "completion": [{"role": "assistant",
                                             "content": eft_target(row["justification"], row["score"])}]})
    return examples
