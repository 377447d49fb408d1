"""The `tsr` command line: noun groups with verb subcommands. Commands parse flags and print; the work is in
the library modules, and heavy imports (torch, transformers, trl) happen inside the commands that need them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from builder.errors import TsrError


class TsrGroup(click.Group):
    """Turns TsrError into a one-line `Error: ...` with exit status 1, never a traceback; a usage mistake (a
    missing option, a bad choice) is one line too, with click's exit status 2 and without the usage screen."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TsrError as exc:
            # A path or value the user gave may hold a newline; the error stays one line whatever it quotes.
            raise click.ClickException(_escape_line_breaks(str(exc))) from None
        except click.UsageError as exc:
            raise _one_line(exc) from None


class _OneLineUsageError(click.UsageError):
    """Already shortened by a nested group: the outer group passes it on unchanged."""


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _OneLineUsageError):
        return exc
    command = exc.ctx.command_path if exc.ctx is not None else "tsr"
    # Without a context, click prints only "Error: <message>".
    return _OneLineUsageError(f"{' '.join(exc.format_message().split())} (see {command} --help)")


def _escape_line_breaks(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _store(ctx: click.Context, *, create: bool = False):
    from builder.store import Store

    return Store.open(ctx.obj["data"], create=create)


# ---- numeric flags: checked while the command line is parsed, before any command body runs --------------------


class _Range:
    """A bad value is a one-line `Error: ...` with exit status 1 (a TsrError), not click's usage screen."""

    def fail(self, message, param=None, ctx=None):
        name = param.get_error_hint(ctx) if param is not None else "value"
        raise TsrError(f"invalid value for {name}: {message}")


class _IntRange(_Range, click.IntRange):
    name = "integer"


class _FloatRange(_Range, click.FloatRange):
    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


COUNT = _IntRange(min=1)  # k, samples, chunks, batch sizes, iterations, limits: at least 1
INDEX = _IntRange(min=0)  # sample offsets, token counts that may be 0
SEED = _IntRange(min=0, max=2**32 - 1)
NON_NEGATIVE = _FloatRange(min=0)  # temperatures
TOP_P = _FloatRange(min=0, max=1, min_open=True)


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
@click.option("--chunks", type=COUNT, help="Split into N disjoint per-iteration chunks (default 5).")
@click.option("--chunk-size", type=COUNT, help="Split into chunks of N prompts instead.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the shuffle before chunking.")
@click.pass_context
def prompts_import(ctx, file: Path, text_column, chunks, chunk_size, seed) -> None:
    """Import a JSONL, CSV or Parquet file of prompts as a new prompt-set version."""
    from builder.stages.prompts import Chunking, check_prompt_file, import_prompts

    if chunks is None and chunk_size is None:
        chunks = 5
    chunking = Chunking(chunks=chunks, chunk_size=chunk_size, seed=seed)
    check_prompt_file(file, text_column, chunking)  # fail on bad input before a store is created
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
    from builder.store import TABLE_DIRS

    if table is not None and table not in TABLE_DIRS:
        raise TsrError(f"--table: no table {table!r}; tables: {', '.join(TABLE_DIRS)}")
    store = _store(ctx)
    for manifest in store.manifests(table=table):
        click.echo(
            f"{manifest.version}  {manifest.stage:<18} {manifest.table:<12} {manifest.rows:>9} rows  "
            f"{manifest.data['created_at'][:19]}"
        )


@versions.command(name="verify")
@click.option("--full", is_flag=True, help="Recompute every checksum, ignoring the cache of files already verified.")
@click.pass_context
def versions_verify(ctx, full) -> None:
    """Check every data file and model file against its manifest; list anything the store does not account for."""
    store = _store(ctx)
    data = store.verify(full=full)
    model_files = store.verify_models(cache={} if full else None)
    missing = store.missing_models()
    unknown = store.unknown_items()
    if unknown:
        shown = "; ".join(f"{path} ({why})" for path, why in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise TsrError(f"{len(unknown)} unknown item(s) in {store.root}, not written by tsr: {shown}{more}")
    absent = f"; {len(missing)} snapshot(s) without weights in this store" if missing else ""
    click.echo(f"{data + model_files} files match their manifests ({data} data, {model_files} model){absent}")


# ---- models -------------------------------------------------------------------------------------------------------


@cli.group(cls=TsrGroup)
def models() -> None:
    """Register and list model snapshots."""


@models.command(name="add")
@click.argument("source", required=False)
@click.option("--default", "use_default", is_flag=True, help="The embedded SmolLM2-135M-Instruct (converted once).")
@click.option("--served", "served_url", metavar="URL",
              help="A model behind an OpenAI-compatible server (vLLM, SGLang, TGI, transformers serve, a hosted "
              "API): its API root, e.g. http://127.0.0.1:8000/v1. Needs --model.")
@click.option("--model", "served_model", help="--served: the model name the server knows (see its /v1/models).")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="--served: the environment variable holding the server's API key (the key is never stored).")
@click.option("--name", help="A name for the snapshot (default: folder name, repo id or served model).")
@click.option("--role", type=click.Choice(["m0", "judge", "reward", "external"]),
              help="m0, judge, reward or external (default: judge with --served, else external).")
@click.option("--revision", help="Hub revision (branch, tag or commit) to resolve; with --served, the revision "
              "that pins the served model (default: what the server reports, if it does).")
@click.pass_context
def models_add(ctx, source, use_default, served_url, served_model, api_key_env, name, role, revision) -> None:
    """Add a local model folder (safetensors), a Hub model id or a served model as a snapshot."""
    from builder import snapshot as snapshots

    if sum([use_default, source is not None, served_url is not None]) != 1:
        raise TsrError("give one of: a model folder / hub id, --default, or --served URL --model NAME")
    if use_default and (name is not None or revision is not None):
        raise TsrError("--default takes no --name or --revision (it is always SmolLM2-135M-Instruct)")
    if (served_model is not None) != (served_url is not None):
        raise TsrError("--served URL and --model NAME go together")
    if name is not None:
        name = snapshots.check_name(name)
    if served_url is not None:
        return _add_served(ctx, served_url, served_model, api_key_env, name, role or "judge", revision)
    role = role or "external"
    # Every check runs before the store is opened: a refused model leaves no store and no file behind.
    checked = checked_revision = None
    target = None if use_default else snapshots.resolve_source(source)
    if isinstance(target, Path):
        if revision is not None:
            raise TsrError(f"{source}: --revision applies only to a Hub model id, not a local folder")
        checked = snapshots.check_local_model(target)
    elif target is not None:
        checked_revision = snapshots.check_hub_model(target, revision)
    store = _store(ctx, create=True)
    with store.writing():
        if use_default:
            snap = snapshots.add_default(store)
        elif checked is not None:
            snap = snapshots.add_local(store, target, name=name, role=role, checked=checked)
        else:
            snap = snapshots.add_hub(store, target, revision=revision, name=name, role=role,
                                     checked_revision=checked_revision)
    click.echo(f"snapshot {snap.snapshot_id}  {snap.name}  ({snap.role})")


def _add_served(ctx, url: str, model: str, api_key_env: str, name: str | None, role: str,
                revision: str | None) -> None:
    from builder import snapshot as snapshots
    from builder.backends.endpoints import Endpoint, check_url, reported_revision, served_model_info

    if role not in ("judge", "external"):
        raise TsrError(f"--role {role}: a served model generates and judges (role judge or external); it has no "
                       "weights here to train (m0) and no reward head the OpenAI API exposes (reward)")
    if not model.strip() or not model.isprintable():
        raise TsrError(f"--model {model!r}: must be the non-empty name the server lists")
    if not api_key_env.isidentifier():
        raise TsrError(f"--api-key-env {api_key_env!r}: not an environment variable name")
    endpoint = Endpoint(check_url(url), api_key_env)
    entry = served_model_info(endpoint, model)  # before the store is opened: a refused model writes nothing
    pinned = revision or reported_revision(endpoint, entry)
    store = _store(ctx, create=True)
    with store.writing():
        snap = snapshots.add_served(store, model, endpoint, revision=pinned, name=name, role=role)
    click.echo(f"snapshot {snap.snapshot_id}  {snap.name}  ({snap.role}, served by {endpoint.base_url})")
    if pinned is None:
        click.echo(f"note: the server reports no revision for {model!r}, so the snapshot pins the model name "
                   "only; pass --revision to pin what it serves", err=True)


@models.command(name="list")
@click.pass_context
def models_list(ctx) -> None:
    """List snapshots with their lineage."""
    from builder.snapshot import list_snapshots

    for snap in list_snapshots(_store(ctx)):
        data = f"pairs {snap.pair_version}" if snap.pair_version else f"run {snap.run_id}"  # SFT: IFT + EFT run
        parent = f" <- {snap.parent_snapshot_id} on {data}" if snap.parent_snapshot_id else ""
        temporary = " [temporary]" if snap.temporary else ""
        served = f" [served: {snap.served_model}@{snap.served_revision or 'unpinned'}]" if snap.served else ""
        click.echo(f"{snap.snapshot_id}  {snap.name:<28} {snap.role:<9}{temporary}{served}{parent}")


# ---- shared options ---------------------------------------------------------------------------------------------


def profile_option(function):
    return click.option("--profile", default="cpu-demo", show_default=True,
                        help="Settings profile: paper, cpu-demo, or a YAML file; flags override it.")(function)


def executor_option(function):
    return click.option("--executor", type=click.Choice(["local", "ray"]),
                        help="Where the model stages compute: this process (local) or a Ray actor pool (ray: the "
                        "cluster RAY_ADDRESS names, else a local one). Throughput only: never changes results. "
                        "Default: the profile's executor.kind.")(function)


def _stage_models(store, settings):
    from builder.backends.loading import stage_models

    return stage_models(store, settings)


def generation_options(function):
    for option in reversed([
        click.option("-k", "k", type=COUNT, help="Samples per prompt."),
        click.option("--temperature", type=NON_NEGATIVE),
        click.option("--top-p", type=TOP_P),
        click.option("--max-new-tokens", type=COUNT),
        click.option("--seed", type=SEED),
        click.option("--backend", type=click.Choice(["hf", "vllm", "openai"])),
        click.option("--base-url", help="openai backend: the server's API root, e.g. http://127.0.0.1:8000/v1."),
        click.option("--batch-size", type=COUNT, help="Throughput only: never changes results."),
    ]):
        function = option(function)
    return function


def prompt_options(function):
    function = click.option("--prompt-set", help="Prompt-set version (default: the shipped default prompts).")(
        function)
    return click.option("--chunk", type=COUNT, default=1, show_default=True, help="Prompt chunk.")(function)


def _check_chunk(settings, prompt_set: str | None, chunk: int, flag: str) -> None:
    """With the shipped default prompts (split into the profile's loop.chunks), a chunk past the last one fails
    before the store is touched; a given --prompt-set's chunks are checked when it is read."""
    if prompt_set is None and chunk > settings.loop.chunks:
        raise TsrError(f"{flag} {chunk}: the default prompts are split into {settings.loop.chunks} chunks "
                       f"(loop.chunks of profile {settings.name})")


def _resolve_prompt_set(store, prompt_set: str | None, chunks: int) -> str:
    from builder.stages.prompts import resolve_prompt_set

    return resolve_prompt_set(store, prompt_set, chunks)


# ---- generate, judge --------------------------------------------------------------------------------------------


def _generate_chunk(store, settings, snapshot_ref: str, chunk: int, prompt_set: str | None, sample_offset: int):
    from builder.stages.generate import generate_chunk

    return generate_chunk(store, settings, snapshot_ref, chunk, prompt_set, sample_offset)


@cli.command(name="generate")
@click.option("--snapshot", "snapshot_ref", required=True, help="Snapshot id, prefix or name (see tsr models list).")
@prompt_options
@click.option("--sample-offset", type=INDEX, default=0, show_default=True,
              help="First sample index (M0's past pool uses K..2K-1).")
@generation_options
@executor_option
@profile_option
@click.pass_context
def generate_command(ctx, snapshot_ref, chunk, prompt_set, sample_offset, executor, profile, **flags) -> None:
    """Sample K responses per prompt of a chunk from a snapshot."""
    from builder.config import load_profile

    settings = load_profile(profile, {"generate": flags, "executor": {"kind": executor}})
    _check_chunk(settings, prompt_set, chunk, "--chunk")
    store = _store(ctx, create=True)
    with store.writing():
        result, _ = _generate_chunk(store, settings, snapshot_ref, chunk, prompt_set, sample_offset)
    click.echo(f"generations {result.version}: {result.generated} generated, {result.reused} reused")


@cli.command(name="judge")
@click.option("--snapshot", "snapshot_ref", required=True, help="The snapshot whose generations are judged.")
@click.option("--judge", "judge_ref", help="Judge snapshot (default: the same snapshot, i.e. self-judging); a "
              "snapshot added with --role reward judges as a reward model.")
@prompt_options
@click.option("--sample-offset", type=INDEX, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["generate", "forced", "auto"]))
@click.option("--samples", type=COUNT, help="Judge replies averaged per response.")
@click.option("--template", type=click.Path(path_type=Path), help="Rubric template with {prompt} and {response}.")
@click.option("--judge-max-new-tokens", type=INDEX, help="Tokens of justification (forced mode: 0 for none).")
@click.option("--judge-temperature", type=NON_NEGATIVE, help="Sampling temperature of the justification.")
@generation_options
@executor_option
@profile_option
@click.pass_context
def judge_command(ctx, snapshot_ref, judge_ref, chunk, prompt_set, sample_offset, mode, samples, template,
                  judge_max_new_tokens, judge_temperature, executor, profile, **flags) -> None:
    """Judge a snapshot's generations of a chunk (generating any that are missing)."""
    from builder.config import load_profile
    from builder.snapshot import get_snapshot
    from builder.stages.judge import judge, template_text

    judge_flags = {"mode": mode, "samples": samples, "template": str(template) if template else None,
                   "seed": flags.get("seed"), "max_new_tokens": judge_max_new_tokens,
                   "temperature": judge_temperature}
    settings = load_profile(profile, {"generate": flags, "judge": judge_flags, "executor": {"kind": executor}})
    template_text(settings.judge)  # a bad template fails before anything is generated
    _check_chunk(settings, prompt_set, chunk, "--chunk")
    store = _store(ctx, create=True)
    with store.writing():
        generated, snap = _generate_chunk(store, settings, snapshot_ref, chunk, prompt_set, sample_offset)
        judge_snap = get_snapshot(store, judge_ref) if judge_ref else snap
        executor, spec = _stage_models(store, settings)
        result = judge(store, judge_id=judge_snap.snapshot_id, generation_ids=generated.generation_ids,
                       cfg=settings.judge, load_generator=lambda: spec(judge_snap).load(),
                       spec=lambda: spec(judge_snap), executor=executor, reward=judge_snap.role == "reward")
    stats = store.manifest(result.version).stats
    click.echo(f"judgments {result.version}: {result.judged} judged, {result.reused} reused, "
               f"{stats.get('unparsable', 0)} unparsable, scored by {stats.get('scored_by', {})}")


# ---- SFT data and M0 ----------------------------------------------------------------------------------------------


@cli.group(cls=TsrGroup)
def ift() -> None:
    """Import and list instruction-following (IFT) sets for SFT."""


@ift.command(name="import")
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_context
def ift_import(ctx, file: Path) -> None:
    """Import JSONL or Parquet with `prompt`/`response` columns or `messages` lists as an IFT-set version."""
    from builder.stages.sft_data import import_ift, parse_ift

    parse_ift(file)  # fail on bad input before a store is created
    store = _store(ctx, create=True)
    with store.writing():
        manifest, created = import_ift(store, file)
    click.echo(f"IFT set {manifest.version} {'imported' if created else 'already imported (no-op)'}: "
               f"{manifest.rows} examples ({manifest.stats['multi_turn']} multi-turn)")


@ift.command(name="list")
@click.pass_context
def ift_list(ctx) -> None:
    """List IFT-set versions."""
    for manifest in _store(ctx).manifests(table="ift"):
        click.echo(f"{manifest.version}  {manifest.rows:>7} examples  {manifest.config.get('source')}  "
                   f"{manifest.data['created_at'][:19]}")


@cli.group(cls=TsrGroup)
def eft() -> None:
    """Import, build and list evaluation fine-tuning (EFT) sets: judge replies ending with `Score: N`."""


@eft.command(name="import")
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_context
def eft_import(ctx, file: Path) -> None:
    """Import JSONL or Parquet with prompt, response, justification and score (0-5) as an EFT-set version."""
    from builder.stages.sft_data import import_eft, parse_eft

    parse_eft(file)
    store = _store(ctx, create=True)
    with store.writing():
        manifest, created = import_eft(store, file)
    click.echo(f"EFT set {manifest.version} {'imported' if created else 'already imported (no-op)'}: "
               f"{manifest.rows} examples, scores {manifest.stats['scores']}")


@eft.command(name="build")
@click.option("--judge", "judge_ref", required=True, help="The judge whose judgments become EFT rows: a fixed judge "
              "snapshot stronger than the model being trained, or a reward model (--role reward).")
@click.option("--snapshot", "snapshot_ref", help="Only judgments of this snapshot's generations.")
@click.option("--reference", type=click.Path(path_type=Path), help="JSONL or Parquet with generation_id and rank "
              "(1 = best) or score (higher = better): keep only prompts the judge ranks as this reference does.")
@click.pass_context
def eft_build(ctx, judge_ref, snapshot_ref, reference) -> None:
    """Build an EFT set from judged generations already in the store."""
    from builder.snapshot import get_snapshot
    from builder.stages.sft_data import build_eft, read_reference

    ranking = read_reference(reference) if reference else None
    store = _store(ctx)
    with store.writing():
        judge_snap = get_snapshot(store, judge_ref)
        snap = get_snapshot(store, snapshot_ref) if snapshot_ref else None
        manifest, created = build_eft(store, judge_id=judge_snap.snapshot_id,
                                      snapshot_id=snap.snapshot_id if snap else None, reference=ranking,
                                      reference_name=reference.name if reference else None)
    stats = manifest.stats
    dropped = ", ".join(f"{n} {why}" for why, n in stats["dropped"].items() if n) or "none"
    click.echo(f"EFT set {manifest.version} {'built' if created else 'already built (no-op)'}: {manifest.rows} "
               f"examples, scores {stats['scores']}; dropped: {dropped}")


@eft.command(name="list")
@click.pass_context
def eft_list(ctx) -> None:
    """List EFT-set versions."""
    for manifest in _store(ctx).manifests(table="eft"):
        click.echo(f"{manifest.version}  {manifest.rows:>7} examples  {manifest.stage:<11} "
                   f"{manifest.config.get('source') or manifest.config.get('judge')}  {manifest.data['created_at'][:19]}")


@cli.command(name="sft")
@click.option("--base", "base_ref", help="Base snapshot (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--ift", "ift_ref", help="IFT-set version (id or prefix; default: the shipped seed set).")
@click.option("--eft", "eft_ref", help="EFT-set version (id or prefix; default: the shipped seed set).")
@click.option("--no-ift", is_flag=True, help="Train on the EFT set alone.")
@click.option("--no-eft", is_flag=True, help="Train on the IFT set alone.")
@click.option("--name", help="Name of the new snapshot (default: BASE+sft).")
@click.option("--template", type=click.Path(path_type=Path), help="Judge template EFT rows are rendered through "
              "(default: the profile's, i.e. the one `tsr judge` uses).")
@profile_option
@click.pass_context
def sft_command(ctx, base_ref, ift_ref, eft_ref, no_ift, no_eft, name, template, profile) -> None:
    """Fine-tune a base model on IFT + EFT data (TRL SFTTrainer, loss on completions): a new M0 snapshot."""
    from builder import snapshot as snapshots
    from builder.config import load_profile
    from builder.stages.judge import template_text
    from builder.stages.sft_data import default_eft_path, default_ift_path, find_set, import_eft, import_ift
    from train.launch import check_launcher
    from train.sft import train_sft

    if (no_ift and ift_ref) or (no_eft and eft_ref) or (no_ift and no_eft):
        raise TsrError("--no-ift and --no-eft leave out a set: give at most one of them, and not with that set")
    settings = load_profile(profile, {"judge": {"template": str(template) if template else None}})
    template_body = template_text(settings.judge)
    check_launcher(settings.sft, "sft")
    store = _store(ctx, create=True)
    with store.writing():
        base = snapshots.get_snapshot(store, base_ref) if base_ref else snapshots.add_default(store)
        ift_version = None if no_ift else (find_set(store, ift_ref, "ift").version if ift_ref
                                           else import_ift(store, default_ift_path())[0].version)
        eft_version = None if no_eft else (find_set(store, eft_ref, "eft").version if eft_ref
                                           else import_eft(store, default_eft_path())[0].version)
        result = train_sft(store, base, ift_version, eft_version, settings.sft, template=template_body, name=name)
    verb = "trained" if result.trained else "already trained (no-op)"
    click.echo(f"snapshot {result.snapshot.snapshot_id}  {result.snapshot.name}  {verb} by run {result.run_id} "
               f"on IFT {ift_version} + EFT {eft_version}  {result.metrics}")


# ---- the loop and the trainer -----------------------------------------------------------------------------------


def loop_options(function):
    for option in reversed([
        click.option("--iter", "iteration", type=COUNT, required=True, help="Iteration N (1-based)."),
        click.option("--method", type=click.Choice(["tsr", "sr", "tsr-past"]), default="tsr", show_default=True),
        click.option("--m0", "m0_ref", help="Starting snapshot M0 (default: the embedded SmolLM2-135M-Instruct)."),
        click.option("--judge", "judge_ref", help="A fixed judge snapshot instead of self-judging."),
        click.option("--prompt-set", help="Prompt-set version (default: the shipped default prompts)."),
    ]):
        function = option(function)
    return function


def _check_loop_inputs(settings, prompt_set: str | None, iteration: int, flag: str = "--iter") -> None:
    """What the loop would trip over only after models load: the iteration's chunk and the judge's template."""
    from builder.stages.judge import template_text
    from train.launch import check_launcher

    _check_chunk(settings, prompt_set, iteration, flag)
    template_text(settings.judge)
    check_launcher(settings.train, "train")


def _make_loop(ctx, profile, method, m0_ref, judge_ref, prompt_set, overrides=None):
    from builder import snapshot as snapshots
    from builder.config import load_profile
    from builder.loop import Loop

    settings = load_profile(profile, overrides or {})
    store = _store(ctx, create=True)
    m0 = snapshots.get_snapshot(store, m0_ref) if m0_ref else snapshots.add_default(store)
    judge_snap = snapshots.get_snapshot(store, judge_ref) if judge_ref else None
    set_version = _resolve_prompt_set(store, prompt_set, settings.loop.chunks)
    return store, Loop(store, settings, m0=m0, prompt_set=set_version, method=method, judge=judge_snap)


@cli.command(name="pairs")
@loop_options
@executor_option
@profile_option
@click.pass_context
def pairs_command(ctx, iteration, method, m0_ref, judge_ref, prompt_set, executor, profile) -> None:
    """Build iteration N's preference pairs (training M_1..M_{N-1} on the way), reusing what exists."""
    import time

    from builder.config import load_profile
    from builder.summary import loop_summary

    started = time.monotonic()
    overrides = {"executor": {"kind": executor}}
    _check_loop_inputs(load_profile(profile, overrides), prompt_set, iteration)
    store = _store(ctx, create=True)
    with store.writing():
        store, loop = _make_loop(ctx, profile, method, m0_ref, judge_ref, prompt_set, overrides)
        result = loop.iteration(iteration)
    click.echo(loop_summary(store, loop, result, time.monotonic() - started))


@cli.command(name="train")
@click.option("--pairs", "pair_ref", help="Train on this pair version (id or prefix) instead of --iter.")
@click.option("--iter", "iteration", type=COUNT, help="Train M_N on iteration N's final pairs.")
@click.option("--method", type=click.Choice(["tsr", "sr", "tsr-past"]), default="tsr", show_default=True)
@click.option("--m0", "m0_ref")
@click.option("--judge", "judge_ref")
@click.option("--prompt-set")
@profile_option
@click.pass_context
def train_command(ctx, pair_ref, iteration, method, m0_ref, judge_ref, prompt_set, profile) -> None:
    """DPO-train a new snapshot from a pair version (TRL), recording its lineage."""
    from builder.config import load_profile
    from builder.snapshot import get_snapshot
    from train.dpo import train_dpo

    if (pair_ref is None) == (iteration is None):
        raise TsrError("give either --pairs VERSION or --iter N")
    from train.launch import check_launcher

    settings = load_profile(profile)  # bad settings fail before the store is touched
    check_launcher(settings.train, "train")
    if iteration is not None:
        _check_loop_inputs(settings, prompt_set, iteration)
    store = _store(ctx, create=True)
    with store.writing():
        if pair_ref:
            manifest = store.find_version(pair_ref)
            if manifest.table != "pairs":
                raise TsrError(f"version {manifest.version} is a {manifest.table} version, not a pair version")
            start = get_snapshot(store, manifest.config["policy"])
            result = train_dpo(store, manifest.version, start, settings.train)
            snap, metrics = result.snapshot, result.metrics
        else:
            store, loop = _make_loop(ctx, profile, method, m0_ref, judge_ref, prompt_set)
            snap = loop.policy(iteration)
            metrics = {}
    click.echo(f"snapshot {snap.snapshot_id}  {snap.name}  {metrics}")


def _named_snapshot(store, ref: str, flag: str):
    """The snapshot `ref` names; the error says which flag named it."""
    from builder.snapshot import get_snapshot

    try:
        return get_snapshot(store, ref)
    except TsrError as exc:
        raise TsrError(f"{flag} {ref}: {exc}") from None


@cli.command(name="experiment")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for figure1.png, figure1.md, figure1.csv, report.html and experiment.json.")
@click.option("--sr-iters", type=INDEX, default=4, show_default=True, help="Iterations of SR (0: leave SR out).")
@click.option("--tsr-iters", type=INDEX, default=2, show_default=True,
              help="Iterations of TSR and of TSR without the future model (0: leave both out).")
@click.option("--no-tsr-past", is_flag=True, help="Leave out TSR without the future model (the ablation).")
@click.option("--m0", "m0_ref", help="Starting snapshot M0 (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--judge", "judge_ref", help="The fixed judge that rescores every final pair (default: M0).")
@click.option("--snapshot", "snapshot_ref", help="The fixed snapshot the similarity is computed under (default: M0).")
@click.option("--text", "text_kind", type=click.Choice(["response", "chat"]), default="response", show_default=True,
              help="What --snapshot encodes: the response alone, or prompt + response through the chat template.")
@click.option("--prompt-set", help="Prompt-set version (default: the shipped default prompts).")
@click.option("--prompts-per-iteration", type=COUNT, help="Use the first N prompts of each chunk (default: the "
              "profile's loop.prompts_per_iteration).")
@click.option("--batch-size", type=COUNT, default=16, show_default=True,
              help="Texts per forward pass of the embedding (throughput only).")
@executor_option
@profile_option
@click.pass_context
def experiment_command(ctx, out, sr_iters, tsr_iters, no_tsr_past, m0_ref, judge_ref, snapshot_ref, text_kind,
                       prompt_set, prompts_per_iteration, batch_size, executor, profile) -> None:
    """The paper's Figure 1: SR for N iterations against TSR (and TSR without the future) for M, on one prompt
    set; every final pair rescored by one fixed judge, the chosen/rejected similarity under one fixed snapshot,
    95% bootstrap intervals. Resumable: a rerun reuses every row and trained model."""
    import time

    from builder import experiment, figure1
    from builder import snapshot as snapshots
    from builder.config import load_profile
    from builder.readers import check_output_dir

    started = time.monotonic()
    iterations = {m: n for m, n in (("sr", sr_iters), ("tsr", tsr_iters),
                                    ("tsr-past", 0 if no_tsr_past else tsr_iters)) if n}
    overrides = {"executor": {"kind": executor}, "loop": {"prompts_per_iteration": prompts_per_iteration}}
    settings = load_profile(profile, overrides)  # every check runs before the store is opened
    if not iterations:
        raise TsrError("an experiment needs at least one method with at least one iteration")
    longest = max(iterations, key=iterations.__getitem__)
    _check_loop_inputs(settings, prompt_set, iterations[longest], "--sr-iters" if longest == "sr" else "--tsr-iters")
    check_output_dir(out)
    store = _store(ctx, create=True)
    with store.writing():
        m0 = _named_snapshot(store, m0_ref, "--m0") if m0_ref else snapshots.add_default(store)
        judge_snap = _named_snapshot(store, judge_ref, "--judge") if judge_ref else m0
        embed_snap = _named_snapshot(store, snapshot_ref, "--snapshot") if snapshot_ref else m0
        try:
            set_version = _resolve_prompt_set(store, prompt_set, settings.loop.chunks)
        except TsrError as exc:
            raise TsrError(f"--prompt-set {prompt_set}: {exc}") from None
        result = experiment.run_experiment(
            store, settings, m0=m0, prompt_set=set_version, iterations=iterations, judge=judge_snap,
            snapshot=embed_snap, text_kind=text_kind, profile=profile, executor=executor, batch_size=batch_size)
    record = {"m0": m0.snapshot_id, "judge": judge_snap.snapshot_id, "snapshot": embed_snap.snapshot_id,
              "text": text_kind, "prompt_set": set_version, "profile": settings.name,
              "prompts_per_iteration": settings.loop.prompts_per_iteration, "iterations": iterations}
    written = experiment.write_outputs(store, result, out, record=record)
    for method in sorted(result.final_pairs, key=experiment.RUN_ORDER.index):
        versions = ", ".join(f"{n}: {v}" for n, v in result.final_pairs[method].items())
        click.echo(f"{method:<9} final pairs by iteration  {versions}")
    click.echo(f"\n{result.figure.title}\n")
    click.echo(figure1.markdown(result.figure))
    work = result.work
    click.echo(f"computed: {work['generated']} generations, {work['judged']} judgments, {work['trained']} trained "
               f"models, {work['rescored']} rescored, {work['embedded']} embedded (everything else reused)")
    click.echo(f"time: {time.monotonic() - started:.1f}s; wrote {', '.join(str(p) for p in written)}")


# ---- sharing on the Hub -------------------------------------------------------------------------------------------


def _split_values(values: tuple[str, ...]) -> list[str]:
    """`--pairs a --pairs b` and `--pairs a,b` both work."""
    return [v for value in values for v in value.split(",") if v]


@cli.command(name="push")
@click.argument("repo_id")
@click.option("--pairs", "pair_refs", multiple=True, help="Pair version (id or prefix); repeat or comma-separate.")
@click.option("--tables", multiple=True, help="Tables to push (prompts, generations, judgments, pairs, snapshots, "
              "runs); repeat or comma-separate. Default, with no --pairs either: everything.")
@click.option("--private", is_flag=True, help="Create the dataset repo private.")
@click.pass_context
def push_command(ctx, repo_id, pair_refs, tables, private) -> None:
    """Push versions (with their lineage), a dataset card and tags to a Hub dataset repo, in one commit."""
    from builder.hub import push

    result = push(_store(ctx), repo_id, pairs=_split_values(pair_refs), tables=_split_values(tables),
                  private=private)
    if result.commit:
        click.echo(f"pushed {len(result.pushed)} version(s) to {repo_id} in commit {result.commit[:12]} "
                   f"({result.present} already there)")
    else:
        click.echo(f"{repo_id} has all {result.present} version(s) already (at {result.head[:12]}): no new commit")
    for version, config in result.configs.items():
        click.echo(f"  {config:<28} pair version {version}")
    if result.tags_created:
        click.echo(f"tagged: {', '.join(result.tags_created)}")


@cli.command(name="pull")
@click.argument("ref", metavar="REPO_ID[@REVISION]")
@click.pass_context
def pull_command(ctx, ref) -> None:
    """Restore the versions pushed to a Hub dataset repo into the store, checked against their manifests."""
    from builder.hub import pull

    result = pull(ctx.obj["data"], ref)
    click.echo(f"pulled {ref} (commit {result.commit[:12]}): {len(result.restored)} version(s) restored, "
               f"{result.present} already present")


# ---- stats, plots and the report ----------------------------------------------------------------------------------


def diagnostics_options(function):
    for option in reversed([
        click.option("--snapshot", "snapshot_ref", help="Similarity: cosine of chosen vs rejected mean last-layer "
                     "hidden states under this snapshot (computed once, cached in the store)."),
        click.option("--text", "text_kind", type=click.Choice(["response", "chat"]), default="response",
                     show_default=True, help="What --snapshot encodes: the response alone, or prompt + response "
                     "through the chat template."),
        click.option("--judge", "judge_ref", help="Rescore every chosen and rejected response with this fixed judge, "
                     "so methods compare on one scale (judgments are stored and reused)."),
        click.option("--profile", default="cpu-demo", show_default=True,
                     help="Settings profile of the rescoring judge (its judge section)."),
        click.option("--batch-size", type=COUNT, default=16, show_default=True,
                     help="Texts per forward pass for --snapshot (throughput only)."),
    ]):
        function = option(function)
    return function


def _check_rescoring_profile(judge_ref, profile) -> None:
    """The rescoring judge's settings fail before the store is opened or anything is computed."""
    if judge_ref is not None:
        from builder.config import load_profile

        load_profile(profile)


def _prepare_diagnostics(ctx, method, iteration, snapshot_ref, text_kind, judge_ref, profile, batch_size):
    from builder.diagnostics import prepare

    _check_rescoring_profile(judge_ref, profile)
    return prepare(_store(ctx), method=method, iteration=iteration, snapshot_ref=snapshot_ref,
                   text_kind=text_kind, judge_ref=judge_ref, profile=profile, batch_size=batch_size)


@cli.command(name="stats")
@click.option("--method", type=click.Choice(["tsr", "sr", "tsr-past"]), help="Only this method.")
@click.option("--iter", "iteration", type=COUNT, help="Only iteration N.")
@click.option("--diagnostics", is_flag=True, help="The vanishing-gap diagnostics (score gap, and with --judge / "
              "--snapshot the rescored gap and the chosen/rejected similarity) instead of the pair statistics.")
@click.option("--differences", is_flag=True, help="Each method against SR per iteration, prompt by prompt: the mean "
              "difference of the gap (and with --judge / --snapshot of the rescored gap and the similarity), its 95% "
              "paired bootstrap interval, and whether it excludes zero.")
@click.option("--evals", "show_evals", is_flag=True, help="The evaluation results (tsr eval winrate / ifeval) "
              "instead of the pair statistics (SQL: tsr sql --query evals).")
@diagnostics_options
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write to FILE instead of stdout.")
@click.pass_context
def stats_command(ctx, method, iteration, diagnostics, differences, show_evals, snapshot_ref, text_kind, judge_ref,
                  profile, batch_size, fmt, out) -> None:
    """Pair statistics per method, iteration and phase (SQL: tsr sql --query pair_stats)."""
    from builder import stats
    from builder.readers import check_output_file

    if out is not None:
        check_output_file(out)  # before anything is computed
    _check_rescoring_profile(judge_ref, profile)
    store = _store(ctx)
    if show_evals:
        from builder.evals.summary import evals_table, terminal_table

        table = evals_table(store)
        rendered = terminal_table(table) if fmt == "table" else stats.render(table, fmt)
    elif differences:
        # the baseline's pairs are needed too: prepared (embedded, rescored) for every method
        prepared = _prepare_diagnostics(ctx, None, iteration, snapshot_ref, text_kind, judge_ref, profile,
                                         batch_size)
        table = stats.method_differences(store, method=method, iteration=iteration,
                                         snapshot_id=prepared.snapshot_id, text_kind=text_kind, judge=prepared.judge)
        rendered = stats.render(table, fmt, kind="differences")
    elif diagnostics or snapshot_ref or judge_ref:
        prepared = _prepare_diagnostics(ctx, method, iteration, snapshot_ref, text_kind, judge_ref, profile,
                                         batch_size)
        table = stats.diagnostics(store, method=method, iteration=iteration, snapshot_id=prepared.snapshot_id,
                                  text_kind=text_kind, judge=prepared.judge)
        rendered = stats.render(table, fmt, kind="diagnostics")
    else:
        rendered = stats.render(stats.pair_stats(store, method=method, iteration=iteration), fmt)
    text = stats.write_output(rendered, out)
    if text is not None:
        sys.stdout.write(text)


@cli.command(name="plot")
@click.option("--out", type=click.Path(path_type=Path), default="tsr-plots", show_default=True,
              help="Folder for the PNGs.")
@click.option("--method", type=click.Choice(["tsr", "sr", "tsr-past"]), help="Only this method.")
@diagnostics_options
@click.pass_context
def plot_command(ctx, out, method, snapshot_ref, text_kind, judge_ref, profile, batch_size) -> None:
    """Write PNGs: gap and similarity per iteration (methods side by side), chosen/rejected score histograms."""
    from builder import plots
    from builder.readers import check_output_dir

    check_output_dir(out)  # before anything is computed
    prepared = _prepare_diagnostics(ctx, method, None, snapshot_ref, text_kind, judge_ref, profile, batch_size)
    written = plots.write_plots(_store(ctx), out, method=method, snapshot_id=prepared.snapshot_id,
                                text_kind=text_kind, judge=prepared.judge)
    for plot in written:
        click.echo(str(plot.path))


@cli.command(name="report")
@click.option("--out", type=click.Path(path_type=Path), default="tsr-report.html", show_default=True)
@diagnostics_options
@click.pass_context
def report_command(ctx, out, snapshot_ref, text_kind, judge_ref, profile, batch_size) -> None:
    """Write one self-contained HTML file: versions, lineage graph, pair statistics, diagnostics and plots."""
    from builder.readers import check_output_file
    from builder.report import write_report

    check_output_file(out)  # before anything is computed
    prepared = _prepare_diagnostics(ctx, None, None, snapshot_ref, text_kind, judge_ref, profile, batch_size)
    path = write_report(_store(ctx), out, snapshot_id=prepared.snapshot_id, text_kind=text_kind,
                        judge=prepared.judge)
    click.echo(str(path))


# ---- evaluation ---------------------------------------------------------------------------------------------------


@cli.group(name="eval", cls=TsrGroup)
def eval_group() -> None:
    """Evaluate snapshots: pairwise win rates and IFEval instruction following."""


def eval_generation_options(function):
    for option in reversed([
        click.option("--temperature", type=NON_NEGATIVE, default=0.0, show_default=True,
                     help="Sampling temperature of the answers (0: greedy)."),
        click.option("--max-new-tokens", type=COUNT, help="New tokens per answer (default: the profile's)."),
        click.option("--seed", type=SEED),
        click.option("--backend", type=click.Choice(["hf", "vllm", "openai"])),
        click.option("--base-url", help="openai backend: the server's API root, e.g. http://127.0.0.1:8000/v1."),
        click.option("--batch-size", type=COUNT, help="Throughput only: never changes results."),
    ]):
        function = option(function)
    return executor_option(function)


def _eval_settings(profile, flags):
    from builder.config import load_profile

    flags = dict(flags)
    executor = flags.pop("executor", None)
    return load_profile(profile, {"generate": flags, "executor": {"kind": executor}})


@eval_group.command(name="winrate")
@click.option("--a", "a_ref", required=True, help="Snapshot A (id, prefix or name): the one whose win rate is given.")
@click.option("--b", "b_ref", required=True, help="Snapshot B, the baseline.")
@click.option("--prompts", "prompts_ref", required=True,
              help="A prompt chunk number (of --prompt-set, default the shipped prompts) or a prompts file.")
@click.option("--prompt-set", help="Prompt-set version for a chunk number (default: the shipped default prompts).")
@click.option("--limit", type=COUNT, help="Only the first N prompts.")
@click.option("--judge", "judge_ref", required=True,
              help="Fixed judge snapshot; one added with --role reward compares by reward difference.")
@click.option("--template", type=click.Path(path_type=Path),
              help="Pairwise template with {prompt}, {response_1}, {response_2}.")
@click.option("--judge-mode", type=click.Choice(["forced", "generate"]),
              help="forced: the verdict digit's probabilities; generate: the `Score: 1|2` line the judge writes "
              "(default: generate for a served judge, else forced).")
@click.option("--judge-max-new-tokens", type=INDEX,
              help="Tokens of comparison written before the verdict (default: 0 in forced mode, read it at once; "
              "256 in generate mode).")
@click.option("--judge-temperature", type=NON_NEGATIVE, default=0.7, show_default=True)
@click.option("--bootstrap", "resamples", type=COUNT, default=1000, show_default=True, help="Bootstrap resamples.")
@eval_generation_options
@profile_option
@click.pass_context
def eval_winrate(ctx, a_ref, b_ref, prompts_ref, prompt_set, limit, judge_ref, template, judge_mode,
                 judge_max_new_tokens, judge_temperature, resamples, profile, **flags) -> None:
    """Win, tie and loss rates of A against B, judged in both orders, with bootstrap 95% intervals."""
    from builder.snapshot import get_snapshot
    from builder.stages.prompts import Chunking, check_prompt_file, import_prompts, prompt_chunk
    from builder.stages.winrate import PairwiseJudgeSettings, template_text, winrate

    settings = _eval_settings(profile, flags)
    if judge_mode == "generate" and judge_max_new_tokens == 0:
        raise TsrError("--judge-mode generate with --judge-max-new-tokens 0 leaves the judge no reply to read its "
                       "`Score: 1|2` line from")
    if template:
        template_text(str(template))  # a bad template fails before anything is generated
    if prompts_ref.isascii() and prompts_ref.isdigit():
        if int(prompts_ref) < 1:
            raise TsrError(f"--prompts {prompts_ref}: chunks count from 1")
        _check_chunk(settings, prompt_set, int(prompts_ref), "--prompts")
    elif not Path(prompts_ref).is_file():
        raise TsrError(f"--prompts {prompts_ref}: neither a chunk number (1, 2, ...) nor a prompts file")
    else:
        check_prompt_file(Path(prompts_ref), None, Chunking(chunks=1))  # a bad file fails before the store
    store = _store(ctx, create=True)
    with store.writing():
        a, b, judge_snap = (get_snapshot(store, ref) for ref in (a_ref, b_ref, judge_ref))
        mode = judge_mode or ("generate" if judge_snap.served else "forced")
        judge_settings = PairwiseJudgeSettings(
            template=str(template) if template else None, mode=mode, temperature=judge_temperature,
            max_new_tokens=judge_max_new_tokens if judge_max_new_tokens is not None else
            (256 if mode == "generate" else 0), seed=settings.judge.seed, batch_size=settings.judge.batch_size)
        if prompts_ref.isdigit():
            set_version = _resolve_prompt_set(store, prompt_set, settings.loop.chunks)
            prompts = prompt_chunk(store, set_version, int(prompts_ref), limit)
        else:
            manifest, _ = import_prompts(store, Path(prompts_ref), chunking=Chunking(chunks=1))
            set_version = manifest.version
            prompts = prompt_chunk(store, set_version, 1, limit)
        executor, spec = _stage_models(store, settings)
        snaps = {s.snapshot_id: s for s in (a, b)}
        result = winrate(
            store, snapshot_a=a.snapshot_id, snapshot_b=b.snapshot_id, judge_id=judge_snap.snapshot_id,
            prompts=prompts, prompt_set=set_version, generate_cfg=settings.generate, judge_settings=judge_settings,
            load_generator=lambda sid: spec(snaps[sid]).load(), load_judge=lambda: spec(judge_snap).load(),
            generator_spec=lambda sid: spec(snaps[sid]), judge_spec=lambda: spec(judge_snap), executor=executor,
            reward=judge_snap.role == "reward", resamples=resamples, bootstrap_seed=settings.judge.seed)
    s = result.summary
    click.echo(f"evals {result.version}: {a.name} (A) vs {b.name} (B) on {result.prompts} prompts, judge "
               f"{judge_snap.name} ({s['judge_mode']}; {result.judged} judged, {result.reused} reused)")
    for name in ("win", "tie", "loss"):
        low, high = s[f"{name}_ci"]
        click.echo(f"  {name:<5} {s[f'{name}_rate']:.3f}  95% CI [{low:.3f}, {high:.3f}]")
    low, high = s["score_ci"]
    click.echo(f"  score {s['score']:.3f}  95% CI [{low:.3f}, {high:.3f}]  (win + tie/2)")
    click.echo(f"  mean length: A {s['mean_tokens_a']:.1f} tokens, B {s['mean_tokens_b']:.1f} tokens")
    if "unparsed_verdicts" in s:
        click.echo(f"  unparsed verdicts: {s['unparsed_verdicts']} of {2 * result.prompts} replies had no "
                   "`Score: 1|2` line (each counted as no preference in its order)")
    if "position_1_preference" in s:  # LLM judges only (and versions written before it was recorded lack it)
        click.echo(f"  position bias: the judge gives response 1 P = {s['position_1_preference']:.3f} on average "
                   f"(0.5 = none; judging both orders cancels it)")


@eval_group.command(name="ifeval")
@click.option("--snapshot", "snapshot_ref", required=True, help="Snapshot id, prefix or name.")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path),
              help="JSONL in IFEval's format: key, prompt, instruction_id_list, kwargs.")
@eval_generation_options
@profile_option
@click.pass_context
def eval_ifeval(ctx, snapshot_ref, prompts_file, profile, **flags) -> None:
    """Strict and loose IFEval accuracy at prompt and instruction level (checkers from if-verifiable)."""
    from builder.snapshot import get_snapshot
    from builder.stages.ifeval import ifeval, read_ifeval

    settings = _eval_settings(profile, flags)
    read_ifeval(prompts_file)  # a bad file fails before a store is touched
    store = _store(ctx, create=True)
    with store.writing():
        snap = get_snapshot(store, snapshot_ref)
        executor, spec = _stage_models(store, settings)
        result = ifeval(store, snapshot_id=snap.snapshot_id, path=prompts_file, generate_cfg=settings.generate,
                        load_generator=lambda: spec(snap).load(), spec=lambda: spec(snap), executor=executor)
    s = result.summary
    click.echo(f"evals {result.version}: {snap.name} on {s['prompts']} prompts, {s['instructions']} instructions "
               f"(mean answer {s['mean_tokens']:.1f} tokens)")
    click.echo(f"  prompt level       strict {s['prompt_strict']:.3f}  loose {s['prompt_loose']:.3f}")
    click.echo(f"  instruction level  strict {s['instruction_strict']:.3f}  loose {s['instruction_loose']:.3f}")


def main() -> None:  # pragma: no cover - console entry point alias
    cli(obj={})
