"""Judge stage: (generations, judge snapshot, template, mode, judge samples) -> judgments rows.

A judgment's id hashes the generation, the judge snapshot, the template's hash, the mode and every other
setting that changes the score, so the same judgment is never computed twice: rows that exist (under any version)
are reused, and finished batches are staged so a killed run resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import polars as pl

from builder import judging
from builder.backends.base import Generator, SamplingSettings
from builder.backends.reward import RewardScorer
from builder.config import JudgeConfig, result_fields
from builder.errors import TsrError
from builder.fingerprint import content_hash
from builder.stages.base import LOCAL, Executor, ModelSource, Plan, Stage, run_stages
from builder.store import Store

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


@dataclass(frozen=True)
class JudgeParams:
    judge_id: str
    cfg: JudgeConfig
    template: str
    template_hash: str
    mode: str
    reward: bool


def judge_batch(model: Generator | RewardScorer, items: list[dict], params: JudgeParams) -> list[dict]:
    """One batch of (prompt, response) items -> judgment rows: the rubric's score, or a reward model's reward."""
    cfg = params.cfg
    if params.reward:
        rewards = model.score([item["prompt"] for item in items], [item["text"] for item in items])
        results = [judging.Judgment(value, "reward", "", None, None, 1) for value in rewards]
    else:
        sampling = SamplingSettings(temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
        results = judging.judge(model, [(item["judgment_id"], item["prompt"], item["text"], item["seed"])
                                        for item in items],
                                template=params.template, mode=cfg.mode, sampling=sampling, samples=cfg.samples)
    return [{
        "judgment_id": item["judgment_id"], "generation_id": item["generation_id"], "judge_id": params.judge_id,
        "template_hash": params.template_hash, "mode": params.mode, "scored_by": result.scored_by,
        "judge_samples": result.judge_samples, "score": result.score, "raw_reply": result.raw_reply,
        "parse_error": result.parse_error, "digit_probs": result.digit_probs, "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens, "seed": item["seed"],
    } for item, result in zip(items, results)]


JUDGE = Stage(name=STAGE, code_version=CODE_VERSION, table="judgments", partition=("judge",),
              id_column="judgment_id", reads=("judgment_id", "generation_id", "prompt", "text", "seed"),
              compute=judge_batch, computed_stat="judged")


def judge(
    store: Store,
    *,
    judge_id: str,
    generation_ids: list[str],
    cfg: JudgeConfig,
    load_generator: Callable[[], Generator | RewardScorer],
    reward: bool = False,
    spec=None,
    executor: Executor = LOCAL,
    label: str = "judge",
) -> JudgmentSet:
    """Materialize judgments by `judge_id` of every generation in `generation_ids`.

    With `reward`, `load_generator` returns a RewardScorer and the score is its raw reward (mode "reward").
    """
    (result,) = judge_together(store, judge_id=judge_id, generation_sets=[generation_ids], labels=[label], cfg=cfg,
                               load_generator=load_generator, reward=reward, spec=spec, executor=executor)
    return result


def judge_together(
    store: Store,
    *,
    judge_id: str,
    generation_sets: Sequence[list[str]],
    labels: Sequence[str],
    cfg: JudgeConfig,
    load_generator: Callable[[], Generator | RewardScorer],
    reward: bool = False,
    spec=None,
    executor: Executor = LOCAL,
) -> list[JudgmentSet]:
    """`judge` for several sets of generations by one judge, their missing judgments computed in shared batches;
    each set gets the version it would get alone."""
    template = template_text(cfg)
    template_hash = judging.template_hash(template)
    settings = judge_settings(cfg, template_hash, reward)
    mode = settings.get("mode", cfg.mode)
    params = JudgeParams(judge_id, cfg, template, template_hash, mode, reward)
    generations = pl.from_arrow(store.read("generations").select(["generation_id", "prompt_id", "text", "version"]))
    prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"]))
    assert isinstance(generations, pl.DataFrame) and isinstance(prompts, pl.DataFrame)
    generations = generations.unique("generation_id")
    prompts = prompts.unique("prompt_id").rename({"text": "prompt"})
    plans = []
    for generation_ids, label in zip(generation_sets, labels, strict=True):
        ids = [judgment_id(gid, judge_id, settings) for gid in generation_ids]
        wanted = pl.DataFrame({"generation_id": generation_ids, "judgment_id": ids}, schema={
            "generation_id": pl.String, "judgment_id": pl.String}).join(
            generations, on="generation_id", how="left", maintain_order="left"
        ).join(prompts, on="prompt_id", how="left", maintain_order="left")
        if wanted["text"].null_count():
            raise TsrError(f"{wanted['text'].null_count()} generation(s) to judge are not in {store.root}")
        wanted = wanted.with_columns(pl.col("generation_id").map_elements(
            lambda gid: judge_seed(cfg.seed, gid), return_dtype=pl.Int64).alias("seed"))
        plans.append(Plan(
            items=wanted.select("judgment_id", "generation_id", "prompt", "text", "seed").to_dicts(),
            config={**settings, "generations": content_hash(generation_ids)},
            parents=sorted(set(wanted["version"].to_list())), partition_value=judge_id, snapshot_id=judge_id,
            params=params, batch_size=cfg.batch_size, label=label, extra_stats=lambda rows: {
                "unparsable": rows.column("score").null_count,
                "scored_by": _value_counts(rows.column("scored_by").to_pylist())}))
    runs = run_stages(store, JUDGE, plans, ModelSource(load_generator, spec), executor)
    return [JudgmentSet(run.version, [item["judgment_id"] for item in plan.items], judged=run.computed,
                        reused=run.reused) for plan, run in zip(plans, runs)]


def _value_counts(values: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts
