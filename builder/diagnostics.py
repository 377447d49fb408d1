"""What the vanishing-gap diagnostics need that the store may lack, computed through the stages.

`tsr stats --diagnostics` reads everything through SQL (builder/stats.py); two inputs a query cannot compute:
hidden-state means under a snapshot the user picks (the embed stage) and a fixed judge's scores of every chosen and
rejected response (the judge stage). `prepare` computes what is missing and reuses the rest; it loads a model
only for missing work.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import TsrError
from builder.stats import JudgeKey, pair_generation_ids, run_sql
from builder.store import Store


def judge_key(store: Store, judgment_id: str) -> JudgeKey:
    """The settings of one stored judgment, to select that judge's scores in rescored_gap."""
    sql = ("select judge_id, template_hash, mode, judge_samples, temperature, max_new_tokens from judgments "
           "where judgment_id = $id limit 1")
    rows = run_sql(store, sql, {"id": judgment_id}, reads=["judgments"]).to_pylist()
    if not rows:
        raise TsrError(f"judgment {judgment_id} is not in {store.root}")
    return JudgeKey(**rows[0])


@dataclass(frozen=True)
class Prepared:
    """What `prepare` found or computed for the diagnostics: the embedding snapshot and the rescoring judge."""

    snapshot_id: str | None = None
    judge: JudgeKey | None = None
    embedded: int = 0
    rescored: int = 0


def prepare(
    store: Store,
    *,
    method: str | None = None,
    iteration: int | None = None,
    snapshot_ref: str | None = None,
    text_kind: str = "response",
    judge_ref: str | None = None,
    profile: str | None = None,
    batch_size: int = 16,
    executor: str | None = None,
    versions: list[str] | None = None,
) -> Prepared:
    """Compute whatever the diagnostics need and the store lacks (hidden-state means under `snapshot_ref`, the
    fixed judge's judgments of every chosen and rejected response of the selected pairs: a method, an iteration,
    a list of pair versions); reuse the rest."""
    if snapshot_ref is None and judge_ref is None:
        return Prepared()
    from builder.backends.loading import ModelSpec, generator_spec, reward_spec
    from builder.config import load_profile
    from builder.snapshot import get_snapshot
    from builder.stages.embed import check_text_kind, embed
    from builder.stages.judge import judge
    from builder.stages.ray_executor import executor_for

    check_text_kind(text_kind)
    settings = load_profile(profile, {"executor": {"kind": executor}})
    runner = executor_for(settings.executor)
    snapshot_id, key, embedded, rescored = None, None, 0, 0
    with store.writing():
        generation_ids = pair_generation_ids(store, method=method, iteration=iteration, versions=versions)
        if snapshot_ref is not None and not generation_ids:  # no pairs (yet): nothing to embed, and no columns
            snapshot_id = get_snapshot(store, snapshot_ref).snapshot_id
        elif snapshot_ref is not None:
            snap = get_snapshot(store, snapshot_ref)
            snapshot_id = snap.snapshot_id
            # Hidden states come from transformers whatever the generation backend.
            def embed_spec(snap=snap):
                return ModelSpec("generator", "hf", str(snap.folder(store)), batch_size)

            result = embed(store, snapshot_id=snapshot_id, generation_ids=generation_ids, text_kind=text_kind,
                           load_generator=lambda: embed_spec().load(), spec=embed_spec, executor=runner,
                           batch_size=batch_size,
                           label=f"embed under {snap.name}")
            embedded = result.computed
        if judge_ref is not None and generation_ids:
            judge_snap = get_snapshot(store, judge_ref)
            reward = judge_snap.role == "reward"
            def judge_spec(snap=judge_snap):
                return reward_spec(store, snap) if reward else generator_spec(store, snap, settings)

            judged = judge(store, judge_id=judge_snap.snapshot_id, generation_ids=generation_ids, cfg=settings.judge,
                           load_generator=lambda: judge_spec().load(), spec=judge_spec, executor=runner, reward=reward,
                           label=f"rescore by {judge_snap.name}")
            key = judge_key(store, judged.judgment_ids[0])
            rescored = judged.judged
    return Prepared(snapshot_id, key, embedded, rescored)
