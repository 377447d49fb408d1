"""Pairwise win rate of snapshot A against snapshot B under a fixed judge, debiased for position.

Both snapshots answer every prompt through the generate stage (sample index 0, so the answers are ordinary,
cached generation rows). Then, per prompt:

* an LLM judge reads the pairwise template (builder/data/pairwise_judge.txt) twice, with A as response 1 and with A
  as response 2. Its verdict is read in forced mode: after an optional justification, "Score:" is appended and the
  backend's forced digit reader gives P("1") and P("2"), renormalized over the two. (The verdict is written as a
  score line so that every backend, hf, vllm and the scripted fake, reads it with the digit reader it already has.)
  In generate mode (a served judge, whose log-probabilities an API may not return) the judge writes its comparison
  and the verdict is its final `Score: 1` or `Score: 2` line: 1.0 or 0.0; a reply without one counts as no
  preference (0.5) in that order, and the summary counts them (`unparsed_verdicts`).
  pref_a_first = P(A better) with A shown first, pref_a_second = P(A better) with A shown second.
* a reward model scores both answers; A's preference is 1, 0.5 or 0 as its reward is above, equal to or below B's.
  A reward model sees each answer alone, so it has no position to be biased by.

outcome: "win" when both orders prefer A (> 0.5), "loss" when both prefer B (< 0.5), otherwise "tie" (the judge
changed its mind with the order, or was indifferent): a judge that always picks the first position yields only
ties. preference = the mean of the two orders. The summary gives win, tie and loss rates and the score
(win + tie / 2), each with a percentile bootstrap 95% interval over prompts, and the mean response lengths of both
sides, since length is the known confounder of LLM judges, and the judge's position bias: its mean P(response 1 is
better) over both orders, 0.5 for an unbiased judge.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from builder import judging
from builder.backends.base import Generator, GenRequest, SamplingSettings
from builder.config import GenerateConfig, result_fields
from builder.errors import TsrError
from builder.fingerprint import content_hash
from builder.readers import read_text_file
from builder.stages.base import LOCAL, Executor, ModelSource, Plan, Stage, run_stage
from builder.stages.generate import generate
from builder.store import Store
from schemas.tables import EVALS

STAGE = "eval.winrate"
CODE_VERSION = 1
DEFAULT_TEMPLATE = "pairwise_judge.txt"  # shipped in builder/data
PLACEHOLDERS = ("{prompt}", "{response_1}", "{response_2}")
OUTCOMES = ("win", "tie", "loss")


@dataclass(frozen=True)
class PairwiseJudgeSettings:
    """What changes a verdict: the template, the justification's length and sampling, and the seed."""

    template: str | None = None  # a file with {prompt}, {response_1}, {response_2}; None: the shipped one
    mode: str = "forced"  # forced (the verdict digit's probabilities) or generate (the verdict the judge writes)
    max_new_tokens: int = 0  # tokens of comparison written before the verdict (0: read the verdict at once)
    temperature: float = 0.7
    seed: int = 0
    batch_size: int = 8  # throughput only


@dataclass(frozen=True)
class WinRate:
    version: str
    prompts: int
    judged: int
    reused: int
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# The arithmetic


def outcome(pref_a_first: float, pref_a_second: float) -> str:
    """win only when both orders prefer A, loss only when both prefer B, else tie."""
    if pref_a_first > 0.5 and pref_a_second > 0.5:
        return "win"
    if pref_a_first < 0.5 and pref_a_second < 0.5:
        return "loss"
    return "tie"


def rates(outcomes: Sequence[str]) -> dict[str, float]:
    n = len(outcomes)
    if n == 0:
        raise ValueError("no outcomes to rate")
    found = {name: sum(1 for o in outcomes if o == name) / n for name in OUTCOMES}
    return {**found, "score": found["win"] + found["tie"] / 2}


def bootstrap_intervals(outcomes: Sequence[str], *, resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the win, tie, loss rates and the score: prompts resampled with
    replacement `resamples` times (a seeded stream, so the interval is reproducible)."""
    if resamples < 1:
        raise ValueError(f"bootstrap resamples must be at least 1, got {resamples}")
    rng = random.Random(seed)
    n = len(outcomes)
    draws: dict[str, list[float]] = {name: [] for name in (*OUTCOMES, "score")}
    for _ in range(resamples):
        sample = [outcomes[rng.randrange(n)] for _ in range(n)]
        for name, value in rates(sample).items():
            draws[name].append(value)
    tail = (1 - level) / 2
    return {name: (_quantile(values, tail), _quantile(values, 1 - tail)) for name, values in draws.items()}


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(rows: pl.DataFrame, *, resamples: int, seed: int, positional: bool = True) -> dict[str, Any]:
    """The summary of a win rate's rows; `positional`: the judge saw both answers in an order (an LLM judge, not a
    reward model), so its position bias is part of it."""
    outcomes = rows["outcome"].to_list()
    intervals = bootstrap_intervals(outcomes, resamples=resamples, seed=seed)
    point = rates(outcomes)
    summary: dict[str, Any] = {"prompts": len(outcomes), "bootstrap_resamples": resamples, "bootstrap_seed": seed}
    for name in (*OUTCOMES, "score"):
        summary[f"{name}_rate" if name != "score" else "score"] = point[name]
        summary[f"{name}_ci" if name != "score" else "score_ci"] = list(intervals[name])
    summary["mean_tokens_a"] = float(rows["completion_tokens"].mean())
    summary["mean_tokens_b"] = float(rows["other_completion_tokens"].mean())
    summary["mean_preference"] = float(rows["preference"].mean())
    if "unparsed_verdicts" in rows.columns and rows["unparsed_verdicts"].is_not_null().any():
        summary["unparsed_verdicts"] = int(rows["unparsed_verdicts"].sum())  # generate mode: of 2 per prompt
    if positional:  # P(response 1 is better) over both orders, whatever it holds: 0.5 without position bias
        summary["position_1_preference"] = float(((rows["pref_a_first"] + 1 - rows["pref_a_second"]) / 2).mean())
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The template


def template_text(path: str | None) -> str:
    if path is None:
        return (resources.files("builder") / "data" / DEFAULT_TEMPLATE).read_text("utf-8")
    file = Path(path)
    text = read_text_file(file, "pairwise template")  # missing, a folder, unreadable or not UTF-8: one line
    try:
        text.format(prompt="", response_1="", response_2="")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise TsrError(f"{file}: a pairwise template takes only {{prompt}}, {{response_1}} and {{response_2}} "
                       f"(write other braces as {{{{ and }}}}): {exc!r}") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise TsrError(f"{file}: a pairwise template must contain {', '.join(missing)}")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Judging


def forced_verdicts(generator: Generator, items: Sequence[tuple[str, str, str, int]], template: str,
                    settings: PairwiseJudgeSettings) -> list[float]:
    """P(response 1 is better) for each (prompt, response_1, response_2, seed), read from the verdict digit."""
    messages = [[{"role": "user", "content": template.format(prompt=p, response_1=r1, response_2=r2)}]
                for p, r1, r2, _ in items]
    replies = [""] * len(items)
    if settings.max_new_tokens > 0:
        sampling = SamplingSettings(temperature=settings.temperature, top_p=1.0,
                                    max_new_tokens=settings.max_new_tokens)
        requests = [GenRequest(key=str(i), messages=m, seed=item[3]) for i, (m, item) in
                    enumerate(zip(messages, items))]
        for batch in generator.generate(requests, sampling):
            for result in batch:
                replies[int(result.key)] = result.text
    texts = [generator.render(m, judging.forced_continuation(reply)) for m, reply in zip(messages, replies)]
    out = []
    for probs in generator.digit_probs(texts):
        first, second = probs[1], probs[2]
        out.append(first / (first + second) if first + second > 0 else 0.5)
    return out


def generated_verdicts(generator: Generator, items: Sequence[tuple[str, str, str, int]], template: str,
                       settings: PairwiseJudgeSettings) -> list[float | None]:
    """1.0 or 0.0 from the judge's final `Score: 1` / `Score: 2` line, None for a reply without one."""
    sampling = SamplingSettings(temperature=settings.temperature, top_p=1.0, max_new_tokens=settings.max_new_tokens)
    requests = [GenRequest(key=str(i), seed=seed, messages=[{"role": "user", "content": template.format(
        prompt=p, response_1=r1, response_2=r2)}]) for i, (p, r1, r2, seed) in enumerate(items)]
    verdicts: list[float | None] = [None] * len(items)
    for batch in generator.generate(requests, sampling):
        for result in batch:
            score, _ = judging.parse_score(result.text)
            verdicts[int(result.key)] = {1: 1.0, 2: 0.0}.get(score)  # None: no score, or not 1 or 2
    return verdicts


def eval_id(generation_a: str, generation_b: str, judge_id: str, judge_settings: dict) -> str:
    return content_hash({"kind": "winrate", "a": generation_a, "b": generation_b, "judge": judge_id,
                         **judge_settings})


def _order_seed(base: int, key: str, order: str) -> int:
    return int(content_hash([base, key, order])[:8], 16)


def winrate(
    store: Store,
    *,
    snapshot_a: str,
    snapshot_b: str,
    judge_id: str,
    prompts: pl.DataFrame,
    prompt_set: str,
    generate_cfg: GenerateConfig,
    judge_settings: PairwiseJudgeSettings,
    load_generator: Callable[[str], Generator],
    load_judge: Callable[[], Any],
    reward: bool = False,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
    generator_spec: Callable[[str], Any] | None = None,
    judge_spec: Callable[[], Any] | None = None,
    executor: Executor = LOCAL,
) -> WinRate:
    """Answer every prompt with A and B (cached generations), judge each pair in both orders, store the rows.

    `load_generator(snapshot_id)` loads a model to answer with; `load_judge()` the judge (a Generator, or with
    `reward` a RewardScorer). Both are only called when something is missing. `generator_spec(snapshot_id)` and
    `judge_spec()` give their ModelSpecs, for executors that load models in their own workers.
    """
    if snapshot_a == snapshot_b:
        raise TsrError("--a and --b name the same snapshot; a win rate compares two")
    answers = {}
    for side, snapshot_id in (("a", snapshot_a), ("b", snapshot_b)):
        answers[side] = generate(store, snapshot_id=snapshot_id, prompts=prompts, prompt_set=prompt_set,
                                 sample_indices=[0], cfg=generate_cfg,
                                 load_generator=lambda s=snapshot_id: load_generator(s),
                                 spec=(lambda s=snapshot_id: generator_spec(s)) if generator_spec else None,
                                 executor=executor, label=f"answer ({side})")
    template = None if reward else template_text(judge_settings.template)
    if reward:
        settings = {"mode": "reward"}
    else:
        assert template is not None
        settings = {"mode": judge_settings.mode, "template": judging.template_hash(template),
                    "max_new_tokens": judge_settings.max_new_tokens, "seed": judge_settings.seed,
                    **({"temperature": judge_settings.temperature} if judge_settings.max_new_tokens else {})}
    generations = pl.from_arrow(store.read("generations"))
    assert isinstance(generations, pl.DataFrame)
    texts = generations.select("generation_id", "text", "completion_tokens").unique("generation_id")
    wanted = pl.DataFrame({
        "prompt_id": prompts["prompt_id"], "prompt": prompts["text"],
        "generation_id": answers["a"].generation_ids, "other_generation_id": answers["b"].generation_ids,
    }).join(texts, on="generation_id", how="left", maintain_order="left").join(
        texts.rename({"generation_id": "other_generation_id", "text": "other_text",
                      "completion_tokens": "other_completion_tokens"}), on="other_generation_id", how="left",
        maintain_order="left")
    wanted = wanted.with_columns(pl.struct("generation_id", "other_generation_id").map_elements(
        lambda r: eval_id(r["generation_id"], r["other_generation_id"], judge_id, settings),
        return_dtype=pl.String).alias("eval_id"))
    config = {"judge": judge_id, **settings, "generate": result_fields(generate_cfg), "a": snapshot_a,
              "b": snapshot_b, "evals": content_hash(wanted["eval_id"].to_list()),
              "bootstrap_resamples": resamples, "bootstrap_seed": bootstrap_seed}
    fixed = {"kind": "winrate", "snapshot_id": snapshot_a, "other_snapshot_id": snapshot_b, "judge_id": judge_id,
             "judge_mode": settings["mode"], "template_hash": settings.get("template")}

    def summary(rows: pa.Table) -> dict:
        frame = pl.from_arrow(rows)
        assert isinstance(frame, pl.DataFrame)
        # A reward model sees one answer at a time: it has no position to be biased by.
        return {**summarize(frame, resamples=resamples, seed=bootstrap_seed, positional=not reward),
                "judge_mode": settings["mode"]}

    plan = Plan(items=wanted.to_dicts(), config=config,
                parents=sorted({prompt_set, answers["a"].version, answers["b"].version}), partition_value="winrate",
                snapshot_id=judge_id, params=PairwiseParams(template, judge_settings, reward, fixed),
                batch_size=judge_settings.batch_size, label="judge pairs", extra_stats=summary)
    run = run_stage(store, WINRATE, plan, ModelSource(load_judge, judge_spec), executor)
    stats = store.manifest(run.version).stats
    return WinRate(run.version, wanted.height, judged=run.computed, reused=run.reused, summary=stats)


@dataclass(frozen=True)
class PairwiseParams:
    template: str | None
    settings: PairwiseJudgeSettings
    reward: bool
    fixed: dict  # the columns every row of one win rate shares


def judge_pairs_batch(judge: Any, items: list[dict], params: PairwiseParams) -> list[dict]:
    """One batch of (A's answer, B's answer) items -> eval rows, judged in both orders."""
    return [{**row, **params.fixed} for row in _judge_chunk(judge, items, params.template, params.settings,
                                                            params.reward)]


WINRATE = Stage(name=STAGE, code_version=CODE_VERSION, table="evals", partition=("kind",), id_column="eval_id",
                reads=("eval_id", "prompt_id", "prompt", "generation_id", "text", "completion_tokens",
                       "other_generation_id", "other_text", "other_completion_tokens"),
                compute=judge_pairs_batch, computed_stat="judged", version_column="eval_version", reuse="copy")


def _judge_chunk(judge: Any, chunk: list[dict], template: str | None, settings: PairwiseJudgeSettings,
                 reward: bool) -> list[dict]:
    base = {name: None for name in EVALS.names}
    rows = []
    if reward:
        scores = judge.score([r["prompt"] for r in chunk] * 2,
                             [r["text"] for r in chunk] + [r["other_text"] for r in chunk])
        for i, r in enumerate(chunk):
            reward_a, reward_b = scores[i], scores[len(chunk) + i]
            pref = 1.0 if reward_a > reward_b else 0.0 if reward_a < reward_b else 0.5
            rows.append({**base, **_ids(r), "reward_a": reward_a, "reward_b": reward_b, "pref_a_first": pref,
                         "pref_a_second": pref, "preference": pref, "outcome": outcome(pref, pref)})
        return rows
    assert template is not None
    items = [(r["prompt"], r["text"], r["other_text"], _order_seed(settings.seed, r["eval_id"], "ab"))
             for r in chunk]
    items += [(r["prompt"], r["other_text"], r["text"], _order_seed(settings.seed, r["eval_id"], "ba"))
              for r in chunk]
    if settings.mode == "generate":
        verdicts = generated_verdicts(judge, items, template, settings)
        first = [0.5 if v is None else v for v in verdicts]
        unparsed = [int(verdicts[i] is None) + int(verdicts[len(chunk) + i] is None) for i in range(len(chunk))]
    else:
        first, unparsed = forced_verdicts(judge, items, template, settings), [None] * len(chunk)
    for i, r in enumerate(chunk):
        pref_first = first[i]  # A is response 1: P(1 better)
        pref_second = 1.0 - first[len(chunk) + i]  # A is response 2: P(2 better)
        rows.append({**base, **_ids(r), "pref_a_first": pref_first, "pref_a_second": pref_second,
                     "preference": (pref_first + pref_second) / 2, "outcome": outcome(pref_first, pref_second),
                     "unparsed_verdicts": unparsed[i]})
    return rows


def _ids(r: dict) -> dict:
    return {"eval_id": r["eval_id"], "prompt_id": r["prompt_id"], "generation_id": r["generation_id"],
            "completion_tokens": r["completion_tokens"], "other_generation_id": r["other_generation_id"],
            "other_completion_tokens": r["other_completion_tokens"]}
