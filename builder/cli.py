"""The `tsr` command line: noun groups with verb subcommands. Commands parse flags and print; the work is in
the library modules, and heavy imports (torch, transformers, trl) happen inside the commands that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from builder.errors import TsrError


class TsrGroup(click.Group):
    """Turns TsrError into a one-line `Error: ...` with exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TsrError as exc:
            raise click.ClickException(str(exc)) from None


def _store(ctx: click.Context, *, create: bool = False):
    from builder.store import Store

    return Store.open(ctx.obj["data"], create=create)


@click.group(cls=TsrGroup)
@click.option(
    "--data", "data", envvar="TSR_HOME", default="tsr-data", show_default=True, type=click.Path(path_type=Path),
    help="Data root of the store (env TSR_HOME).",
)
@click.version_option(package_name="temporal-sr")
@click.pass_context
def cli(ctx: click.Context, data: Path) -> None:
    """temporal-sr: versioned datasets for Temporal Self-Rewarding language models."""
    ctx.ensure_object(dict)
    ctx.obj["data"] = data


# ---- prompts ------------------------------------------------------------------------------------------------------


@cli.group(cls=TsrGroup)
def prompts() -> None:
    """Import and list prompt sets."""


@prompts.command(name="import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--text-column", help="Column holding the prompt text (default: prompt, instruction, text, question).")
@click.option("--chunks", type=int, help="Split into N disjoint per-iteration chunks (default 5).")
@click.option("--chunk-size", type=int, help="Split into chunks of N prompts instead.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle before chunking.")
@click.pass_context
def prompts_import(ctx, file: Path, text_column, chunks, chunk_size, seed) -> None:
    """Import a JSONL, CSV or Parquet file of prompts as a new prompt-set version."""
    from builder.stages.prompts import Chunking, import_prompts, read_texts

    if chunks is None and chunk_size is None:
        chunks = 5
    chunking = Chunking(chunks=chunks, chunk_size=chunk_size, seed=seed)
    read_texts(file, text_column)  # fail on bad input before a store is created
    store = _store(ctx, create=True)
    with store.writing():
        manifest, created = import_prompts(store, file, text_column=text_column, chunking=chunking)
    stats = manifest.stats
    verb = "imported" if created else "already imported (no-op)"
    click.echo(
        f"prompt set {manifest.version} {verb}: {stats['prompts']} prompts in {stats['chunks']} chunks "
        f"({stats['duplicates']} duplicates dropped of {stats['rows_read']} rows)"
    )


@prompts.command(name="list")
@click.pass_context
def prompts_list(ctx) -> None:
    """List prompt-set versions."""
    store = _store(ctx)
    for manifest in store.manifests(table="prompts"):
        stats = manifest.stats
        click.echo(
            f"{manifest.version}  {stats['prompts']:>7} prompts  {stats['chunks']:>3} chunks  "
            f"{manifest.config.get('source')}  {manifest.data['created_at'][:19]}"
        )


# ---- sql and versions ---------------------------------------------------------------------------------------------


@cli.command(name="sql")
@click.argument("query", required=False)
@click.option("--query", "query_name", help="Run a named query shipped with temporal-sr (see --list).")
@click.option("--list", "list_queries", is_flag=True, help="List the named queries.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the result to FILE instead of stdout.")
@click.pass_context
def sql_command(ctx, query, query_name, list_queries, fmt, out) -> None:
    """Run SQL over the store's tables (prompts, generations, judgments, pairs, snapshots, runs, versions)."""
    from builder import sql

    if list_queries:
        for name, text in sql.named_queries().items():
            first = text.strip().splitlines()[0].lstrip("- ") if text.strip() else ""
            click.echo(f"{name:<24} {first}")
        return
    if (query is None) == (query_name is None):
        raise TsrError("give either a SQL string or --query NAME")
    text = sql.named_query(query_name) if query_name else query
    result = sql.run_query(_store(ctx), text)
    rendered = sql.write_result(result, fmt, out)
    if rendered is not None:
        sys.stdout.write(rendered)


@cli.group(cls=TsrGroup)
def versions() -> None:
    """Inspect materialized versions (one manifest each)."""


@versions.command(name="list")
@click.option("--table", help="Only versions of this table.")
@click.pass_context
def versions_list(ctx, table) -> None:
    """List every version: id, stage, table, rows, creation time."""
    store = _store(ctx)
    for manifest in store.manifests(table=table):
        click.echo(
            f"{manifest.version}  {manifest.stage:<18} {manifest.table:<12} {manifest.rows:>9} rows  "
            f"{manifest.data['created_at'][:19]}"
        )


@versions.command(name="verify")
@click.pass_context
def versions_verify(ctx) -> None:
    """Recompute every file's sha256 and compare it with its manifest."""
    store = _store(ctx)
    checked = store.verify(full=True)
    click.echo(f"{checked} files match their manifests")


def main() -> None:  # pragma: no cover - console entry point alias
    cli(obj={})
