"""Judge stage: (generations, judge snapshot, template, mode, judge samples) -> judgments rows.

A judgment's id hashes the generation, the judge snapshot, the template's hash, the mode and every other
setting that changes the score, so the same judgment is never computed twice: rows that exist (under any version)
are reused, and finished batches are staged so a killed run resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import polars as pl
import pyarrow as pa

from builder import judging
from builder.backends.base import Generator, SamplingSettings
from builder.backends.reward import RewardScorer
from builder.config import JudgeConfig, result_fields
from builder.errors import TsrError
from builder.faults import crash_point
from builder.fingerprint import content_hash, stage_fingerprint
from builder.progress import Progress
from builder.stages.generate import existing_ids
from builder.store import Store, now_utc
from schemas.tables import JUDGMENTS

STAGE = "judge"
CODE_VERSION = 1
DEFAULT_TEMPLATE = "judge_rubric.txt"  # shipped in builder/data


@dataclass(frozen=True)
class JudgmentSet:
    version: str
    judgment_ids: list[str]
    judged: int
    reused: int


def template_text(cfg: JudgeConfig) -> str:
    """The rubric template: the user's file, or the project's own wording shipped in builder/data."""
    if cfg.template is None:
        return (resources.files("builder") / "data" / DEFAULT_TEMPLATE).read_text("utf-8")
    return judging.load_template(cfg.template)


def judge_settings(cfg: JudgeConfig, template_hash: str, reward: bool) -> dict:
    """What changes a judgment's score. A reward model reads neither template nor sampling settings."""
    if reward:
        return {"mode": "reward"}
    settings = {k: v for k, v in result_fields(cfg).items() if k != "template"}
    return {**settings, "template": template_hash}


def judgment_id(generation_id: str, judge_id: str, settings: dict) -> str:
    return content_hash({"generation": generation_id, "judge": judge_id, **settings})


def judge_seed(base_seed: int, generation_id: str) -> int:
    return int(content_hash([base_seed, generation_id])[:8], 16)


def judge(
    store: Store,
    *,
    judge_id: str,
    generation_ids: list[str],
    cfg: JudgeConfig,
    load_generator: Callable[[], Generator | RewardScorer],
    reward: bool = False,
    label: str = "judge",
) -> JudgmentSet:
    """Materialize judgments by `judge_id` of every generation in `generation_ids`.

    With `reward`, `load_generator` returns a RewardScorer and the score is its raw reward (mode "reward").
    """
    template = template_text(cfg)
    template_hash = judging.template_hash(template)
    settings = judge_settings(cfg, template_hash, reward)
    mode = settings.get("mode", cfg.mode)
    ids = [judgment_id(gid, judge_id, settings) for gid in generation_ids]
    config = {**settings, "generations": content_hash(generation_ids)}
    generations = pl.from_arrow(store.read("generations"))
    assert isinstance(generations, pl.DataFrame)
    wanted = pl.DataFrame({"generation_id": generation_ids, "judgment_id": ids}).join(
        generations.select("generation_id", "prompt_id", "text", "version"), on="generation_id", how="left"
    )
    if wanted["text"].null_count():
        raise TsrError(f"{wanted['text'].null_count()} generation(s) to judge are not in {store.root}")
    parents = sorted(set(wanted["version"].to_list()))
    version = stage_fingerprint(STAGE, CODE_VERSION, config, parents, judge_id)
    if store.manifest(version) is not None:
        return JudgmentSet(version, ids, judged=0, reused=len(ids))

    done = existing_ids(store, "judgments", "judgment_id", judge_id)
    staged = store.staged(version, "judgments")
    done |= set(staged.column("judgment_id").to_pylist())
    missing = wanted.filter(~pl.col("judgment_id").is_in(list(done)))
    started = time.monotonic()
    if missing.height:
        prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"]))
        assert isinstance(prompts, pl.DataFrame)
        missing = missing.join(prompts.unique("prompt_id").rename({"text": "prompt"}), on="prompt_id", how="left")
        generator = load_generator()
        sampling = SamplingSettings(temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
        rows_all = missing.to_dicts()
        with Progress(label, total=len(rows_all)) as progress:
            for start in range(0, len(rows_all), cfg.batch_size):
                chunk = rows_all[start : start + cfg.batch_size]
                if reward:
                    rewards = generator.score([r["prompt"] for r in chunk], [r["text"] for r in chunk])
                    results = [judging.Judgment(value, "reward", "", None, None, 1) for value in rewards]
                else:
                    items = [(r["judgment_id"], r["prompt"], r["text"], judge_seed(cfg.seed, r["generation_id"]))
                             for r in chunk]
                    results = judging.judge(generator, items, template=template, mode=cfg.mode,
                                            sampling=sampling, samples=cfg.samples)
                rows = []
                for r, result in zip(chunk, results):
                    rows.append({
                        "judgment_id": r["judgment_id"], "generation_id": r["generation_id"],
                        "judge_id": judge_id, "template_hash": template_hash, "mode": mode,
                        "scored_by": result.scored_by, "judge_samples": result.judge_samples,
                        "score": result.score, "raw_reply": result.raw_reply, "parse_error": result.parse_error,
                        "digit_probs": result.digit_probs, "temperature": cfg.temperature,
                        "max_new_tokens": cfg.max_new_tokens, "seed": judge_seed(cfg.seed, r["generation_id"]),
                        "version": version, "created_at": now_utc(),
                    })
                store.stage_batch(version, "judgments", pa.Table.from_pylist(rows, schema=JUDGMENTS))
                progress.update(len(rows))
                crash_point("judge.after-batch")
        staged = store.staged(version, "judgments")
    scores = staged.column("score")
    store.write_version(
        version=version, stage=STAGE, code_version=CODE_VERSION, table="judgments", data=staged,
        partition={"judge": judge_id}, config=config, parents=parents, snapshot_id=judge_id,
        stats={"requested": len(ids), "judged": missing.height, "reused": len(ids) - missing.height,
               "unparsable": scores.null_count, "seconds": round(time.monotonic() - started, 3),
               "scored_by": _value_counts(staged.column("scored_by").to_pylist())},
    )
    store.clear_staged(version)
    return JudgmentSet(version, ids, judged=missing.height, reused=len(ids) - missing.height)


def _value_counts(values: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts
