"""Which versions a push sends: everything, or the chosen tables and pair versions together with their lineage."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from builder.errors import TsrError
from builder.store import Manifest, Store
from schemas.tables import TABLES


def select_versions(store: Store, *, pairs: Sequence[str] = (), tables: Sequence[str] = ()) -> list[Manifest]:
    """The versions a push sends: everything, or the given tables and pair versions, always with their lineage.

    Lineage is what a pulled copy needs to stand on its own: manifest parents, the versions holding the rows a pair
    version references (reused generations and judgments live in the versions that first made them), and the
    registration (and training run) of every snapshot involved.
    """
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise TsrError(f"unknown table(s) {', '.join(unknown)}; tables are {', '.join(TABLES)}")
    if not pairs and not tables:
        wanted = {m.version for m in store.manifests()}
    else:
        wanted = {m.version for m in store.manifests() if m.table in tables}
        for ref in pairs:
            manifest = store.find_version(ref)
            if manifest.table != "pairs":
                raise TsrError(f"version {manifest.version} is a {manifest.table} version, not a pair version")
            wanted.add(manifest.version)
    if not wanted:
        raise TsrError(f"nothing to push: {store.root} has no versions" + (" of those tables" if tables else ""))
    requires = _Requirements(store)
    todo, selected = list(wanted), set()
    while todo:
        version = todo.pop()
        if version in selected:
            continue
        selected.add(version)
        todo.extend(requires(version) - selected)
    return sorted((store.manifest(v) for v in selected), key=lambda m: (m.data["created_at"], m.version))


class _Requirements:
    """version -> the versions it needs (see select_versions); tables are read once, on first need."""

    def __init__(self, store: Store):
        self.store = store
        self.registration = {m.data.get("snapshot_id"): m.version for m in store.manifests(table="snapshots")}
        self._rows: dict[str, pl.DataFrame] = {}

    def rows(self, table: str, columns: list[str]) -> pl.DataFrame:
        if table not in self._rows:
            frame = pl.from_arrow(self.store.read(table, verify=False).select(columns))
            assert isinstance(frame, pl.DataFrame)
            self._rows[table] = frame
        return self._rows[table]

    def __call__(self, version: str) -> set[str]:
        manifest = self.store.manifest(version)
        if manifest is None:
            raise TsrError(f"a manifest names parent {version}, which is not in {self.store.root}")
        needed = set(manifest.data["parents"])
        snapshots = {manifest.data.get("snapshot_id")}
        if manifest.table == "snapshots":
            row = self.rows("snapshots", ["snapshot_id", "run_id"]).filter(
                pl.col("snapshot_id") == manifest.data.get("snapshot_id"))
            needed |= {r for r in row["run_id"].to_list() if r and self.store.manifest(r) is not None}
        if manifest.table == "pairs":
            pairs = pl.from_arrow(self.store.read("pairs", versions=[version], verify=False))
            assert isinstance(pairs, pl.DataFrame)
            generation_ids = pairs["chosen_generation_id"].to_list() + pairs["rejected_generation_id"].to_list()
            generations = self.rows("generations", ["generation_id", "prompt_id", "version"]).filter(
                pl.col("generation_id").is_in(generation_ids))
            judges = pairs["judge_id"].unique().to_list()
            judgments = self.rows("judgments", ["generation_id", "judge_id", "version"]).filter(
                pl.col("generation_id").is_in(generation_ids) & pl.col("judge_id").is_in(judges))
            prompts = self.rows("prompts", ["prompt_id", "set_version"]).filter(
                pl.col("prompt_id").is_in(pairs["prompt_id"].to_list()))
            needed |= set(generations["version"]) | set(judgments["version"]) | set(prompts["set_version"])
            snapshots |= set(pairs["chosen_snapshot_id"]) | set(pairs["rejected_snapshot_id"])
            snapshots.add(manifest.config.get("policy"))
        needed |= {self.registration[s] for s in snapshots if s in self.registration}
        needed.discard(version)
        return needed
