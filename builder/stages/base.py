"""The stage contract and its one runner.

A stage declares what it is (name, code version, table, partition, id column) and what it needs: the columns each
work item must carry, and a function from one batch of work items to rows. The caller plans one materialization
(the work items, the settings that change results, the parent versions, the snapshot); `run_stage` does the rest,
the same way for every stage:

1. checks the declared input columns, before any model is loaded;
2. computes the version (the fingerprint of stage, code version, settings, parents and snapshot) and returns at
   once if it exists;
3. skips the items whose rows exist under any version of the partition, or in this version's staged batches;
4. hands the missing items, in batches, to an executor (this process, or a Ray actor pool) and stages every
   finished batch as it arrives, so a killed run resumes after the last one;
5. writes the version atomically, with its manifest and stats, and clears its staging.

Rows carry `version` and `created_at`, which the runner fills; a batch function returns the other columns.
The batch function runs wherever the executor puts it, so it and its parameters must be picklable (a module-level
function, dataclasses), and it must not depend on which other items share its batch: per-item seeds do that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from builder.errors import TsrError
from builder.faults import crash_point
from builder.fingerprint import stage_fingerprint
from builder.progress import Progress
from builder.store import Store, now_utc
from schemas.tables import TABLES

# model, a batch of work items, the stage's parameters -> the rows of those items (without the version column and
# created_at, which the runner fills)
BatchFunction = Callable[[Any, list[dict], Any], list[dict]]


@dataclass(frozen=True)
class Stage:
    """What a stage is: where its rows go and how one batch of work items becomes rows."""

    name: str
    code_version: int
    table: str
    partition: tuple[str, ...]  # the hive partition keys of `table`: ("snapshot",), ("judge",), ...
    id_column: str
    reads: tuple[str, ...]  # columns every work item must carry (the id column among them)
    compute: BatchFunction
    computed_stat: str = "computed"  # the manifest's name for the rows computed in this run
    version_column: str = "version"
    # "reference": rows that exist under other versions stay there (the version holds what it computed);
    # "copy": they are copied into this version, relabelled, so the version holds every requested row.
    reuse: str = "reference"
    token_column: str | None = None  # a column of token counts the progress bar reports per second

    @property
    def writes(self) -> tuple[str, ...]:
        return tuple(TABLES[self.table].names)


@dataclass
class Plan:
    """One materialization of a stage: its work items and everything its version is a fingerprint of."""

    config: dict[str, Any]
    parents: list[str]
    partition_value: str | tuple[str, ...]  # one value per partition key of the stage
    snapshot_id: str | None
    items: list[dict] = field(default_factory=list)  # the work items of a stage with a model
    params: Any = None  # handed to the batch function with each batch (settings, templates, seeds)
    batch_size: int = 8
    label: str = ""
    extra_stats: Callable[[pa.Table], dict] | None = None  # stage-specific figures from the version's rows
    # A stage that needs no model (prompts, pairs, SFT sets, IFEval's checks) hands over its rows whole, or a
    # function that makes them, called only when the version does not exist yet.
    rows: pa.Table | Callable[[], pa.Table] | None = None
    version: str | None = None  # an identity the stage computes itself (a prompt set's content hash)


@dataclass(frozen=True)
class StageRun:
    version: str
    computed: int
    reused: int
    rows: pa.Table | None = None  # the version's rows, when it was written in this run


class Executor:
    """Maps batches of missing work items to rows; yields each batch's rows as soon as it is done."""

    name = "local"

    def map(self, stage: Stage, batches: list[list[dict]], params: Any, model: ModelSource) -> Iterable[list[dict]]:
        loaded = model.load()
        for batch in batches:
            yield stage.compute(loaded, batch, params)


LOCAL = Executor()


class ModelSource:
    """How a stage gets its model: `load()` in this process, or a `ModelSpec` (picklable) that executors in other
    processes load themselves.

    Both are only used when a stage has missing work, so a fully cached stage loads (and downloads) nothing:
    `spec` may be a function that makes the ModelSpec when first asked for.
    """

    def __init__(self, load: Callable[[], Any], spec: Any = None):
        self._load = load
        self._spec = spec

    def load(self) -> Any:
        return self._load()

    def spec(self) -> Any:
        return self._spec() if callable(self._spec) else self._spec


def version_of(stage: Stage, plan: Plan) -> str:
    if plan.version is None:
        plan.version = stage_fingerprint(stage.name, stage.code_version, plan.config, plan.parents, plan.snapshot_id)
    return plan.version


def check_items(stage: Stage, items: Sequence[dict]) -> None:
    """Every work item carries the columns the stage declares it reads (checked before any model loads)."""
    for index, item in enumerate(items):
        missing = [column for column in stage.reads if column not in item]
        if missing:
            raise TsrError(f"{stage.name}: work item {index} lacks column(s) {', '.join(missing)} "
                           f"(the stage reads {', '.join(stage.reads)})")


def existing_rows(store: Store, table: str, snapshot_id: str | None, columns: list[str] | None = None) -> pa.Table:
    """Rows already materialized in `table` for one snapshot (the model the rows come from), across versions."""
    versions = [m.version for m in store.manifests(table=table) if m.data.get("snapshot_id") == snapshot_id]
    if not versions:
        return TABLES[table].empty_table().select(columns or TABLES[table].names)
    rows = store.read(table, versions=versions)
    return rows.select(columns) if columns else rows


def existing_ids(store: Store, table: str, id_column: str, snapshot_id: str | None) -> set[str]:
    return set(existing_rows(store, table, snapshot_id, [id_column]).column(id_column).to_pylist())


def run_stage(store: Store, stage: Stage, plan: Plan, model: ModelSource | None = None,
              executor: Executor = LOCAL) -> StageRun:
    """Materialize `plan` (see the module docstring); the caller holds the store's write lock."""
    (run,) = run_stages(store, stage, [plan], model, executor)
    return run


def run_stages(store: Store, stage: Stage, plans: Sequence[Plan], model: ModelSource | None = None,
               executor: Executor = LOCAL) -> list[StageRun]:
    """Materialize several plans of one stage that share a model and its parameters, batching their missing items
    together: one model, one pass. On a CPU or a GPU, a decode step reads every weight whatever the batch, so 48
    rows in one batch cost little more than 16 (the embedded model: 5.9 s against 3 x 3.4 s).

    Each plan still gets its own version, exactly the one `run_stage` would write for it alone; an item that two
    plans both miss is computed once, for the first. Batch functions compute each item independently of its batch
    neighbours (per-item seeds), so batching changes rows only by floating-point rounding.
    """
    runs: list[StageRun | None] = []
    pending: list[tuple[int, Plan, str, pa.Table, list[dict]]] = []  # index, plan, version, earlier rows, missing
    claimed: set[str] = set()
    same_as: dict[int, int] = {}  # a plan asked for twice: its second index -> its first
    for index, plan in enumerate(plans):
        check_items(stage, plan.items)
        version = version_of(stage, plan)
        twin = next((first for first, _, pending_version, *_ in pending if pending_version == version), None)
        if twin is not None:
            runs.append(None)
            same_as[index] = twin
        elif store.manifest(version) is not None:
            runs.append(StageRun(version, computed=0, reused=len(plan.items)))
        elif plan.rows is not None:
            runs.append(_write_given_rows(store, stage, plan, version))
        else:
            runs.append(None)
            earlier, missing = _missing_items(store, stage, plan, version)
            missing = [item for item in missing if item[stage.id_column] not in claimed]
            claimed.update(item[stage.id_column] for item in missing)
            pending.append((index, plan, version, earlier, missing))
    if not pending:
        return runs  # type: ignore[return-value]
    if model is None:
        raise TypeError(f"stage {stage.name}: a plan without rows needs a model source")
    first = pending[0][1]
    if any(plan.params != first.params or plan.batch_size != first.batch_size for _, plan, *_ in pending):
        raise TypeError(f"stage {stage.name}: plans batched together must share their parameters and batch size")
    if stage.reuse == "copy" and len(pending) > 1:
        raise TypeError(f"stage {stage.name} copies reused rows into its version: run its plans one at a time")

    started = time.monotonic()
    owner = {item[stage.id_column]: version for _, _, version, _, missing in pending for item in missing}
    missing_all = [item for *_, missing in pending for item in missing]
    if missing_all:
        size = first.batch_size
        batches = [missing_all[start : start + size] for start in range(0, len(missing_all), size)]
        schema = TABLES[stage.table]
        label = " + ".join(dict.fromkeys(plan.label or stage.name for _, plan, *_ in pending))
        with Progress(label, total=len(missing_all)) as progress:
            for rows in executor.map(stage, batches, first.params, model):
                created = now_utc()
                by_version: dict[str, list[dict]] = {}
                for row in rows:
                    by_version.setdefault(owner[row[stage.id_column]], []).append(row)
                for version, own in by_version.items():
                    store.stage_batch(version, stage.table, pa.Table.from_pylist(
                        [{**row, stage.version_column: version, "created_at": created} for row in own],
                        schema=schema))
                tokens = sum(row[stage.token_column] for row in rows) if stage.token_column else 0
                progress.update(len(rows), tokens=tokens)
                crash_point(f"{stage.name}.after-batch")
    seconds = round(time.monotonic() - started, 3)
    shared = [version for _, _, version, *_ in pending]
    for index, plan, version, earlier, missing in pending:
        stats = {"seconds": seconds, "executor": executor.name}
        if len(shared) > 1:  # computed in one pass with these versions: the seconds are the pass's
            stats["batched_with"] = [other for other in shared if other != version]
        runs[index] = _write_computed(store, stage, plan, version, earlier, len(missing), stats)
    for index, twin in same_as.items():
        runs[index] = runs[twin]
    return runs  # type: ignore[return-value]


def _missing_items(store: Store, stage: Stage, plan: Plan, version: str) -> tuple[pa.Table, list[dict]]:
    """The plan's rows that exist under any version of its partition, and the items still to compute (neither
    there nor in this version's staged batches)."""
    wanted = pa.array([item[stage.id_column] for item in plan.items], pa.string())
    earlier = existing_rows(store, stage.table, plan.snapshot_id)
    earlier = earlier.filter(pc.is_in(earlier.column(stage.id_column), wanted))
    done = set(earlier.column(stage.id_column).to_pylist())
    done |= set(store.staged(version, stage.table).column(stage.id_column).to_pylist())
    return earlier, [item for item in plan.items if item[stage.id_column] not in done]


def _write_computed(store: Store, stage: Stage, plan: Plan, version: str, earlier: pa.Table, computed: int,
                    run_stats: dict) -> StageRun:
    """Write a version from its staged batches (and, for a copying stage, the rows it reused)."""
    rows = store.staged(version, stage.table)
    if stage.reuse == "copy" and earlier.num_rows:
        relabelled = earlier.set_column(earlier.schema.get_field_index(stage.version_column), stage.version_column,
                                        pa.array([version] * earlier.num_rows, pa.string()))
        rows = pa.concat_tables([rows, relabelled.cast(rows.schema)])
    rows = _in_plan_order(rows, stage.id_column, [item[stage.id_column] for item in plan.items])
    stats = {"requested": len(plan.items), stage.computed_stat: computed, "reused": len(plan.items) - computed,
             **run_stats}
    if plan.extra_stats is not None:
        stats.update(plan.extra_stats(rows))
    store.write_version(
        version=version, stage=stage.name, code_version=stage.code_version, table=stage.table, data=rows,
        partition=_partition(stage, plan), config=plan.config, parents=plan.parents,
        snapshot_id=plan.snapshot_id, stats=stats,
    )
    store.clear_staged(version)
    return StageRun(version, computed=computed, reused=len(plan.items) - computed, rows=rows)


def _partition(stage: Stage, plan: Plan) -> dict[str, str]:
    values = plan.partition_value if isinstance(plan.partition_value, tuple) else (plan.partition_value,)
    if len(values) != len(stage.partition):
        raise TypeError(f"stage {stage.name} is partitioned by {stage.partition}, got {values}")
    return dict(zip(stage.partition, values))


def _write_given_rows(store: Store, stage: Stage, plan: Plan, version: str) -> StageRun:
    """A stage without a model: its rows are computed whole (cheaply) by the caller; nothing to stage or resume."""
    rows = plan.rows() if callable(plan.rows) else plan.rows
    missing = [column for column in stage.reads if column not in rows.column_names]
    if missing:
        raise TsrError(f"{stage.name}: the rows lack column(s) {', '.join(missing)}")
    store.write_version(
        version=version, stage=stage.name, code_version=stage.code_version, table=stage.table, data=rows,
        partition=_partition(stage, plan), config=plan.config, parents=plan.parents,
        snapshot_id=plan.snapshot_id, stats=plan.extra_stats(rows) if plan.extra_stats else {},
    )
    return StageRun(version, computed=rows.num_rows, reused=0, rows=rows)


def rows_as_given(model: Any, items: list[dict], params: Any) -> list[dict]:
    """The batch function of a stage whose rows come whole with the plan (it is never called)."""
    raise TypeError("a stage without a model takes its rows from the plan")


def _in_plan_order(rows: pa.Table, id_column: str, wanted: list[str]) -> pa.Table:
    """One row per id, in the order the plan asked for them.

    Batches arrive in any order (resumed, or from several workers): the plan's order makes the file one function
    of its rows, whichever executor computed them.
    """
    position = {key: index for index, key in enumerate(wanted)}
    ids = rows.column(id_column).to_pylist()
    first: dict[str, int] = {}
    for index, key in enumerate(ids):
        first.setdefault(key, index)
    order = sorted(first.values(), key=lambda index: position.get(ids[index], len(wanted)))
    return rows.take(pa.array(order, pa.int64()))
