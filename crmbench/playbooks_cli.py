"""`crmbench playbooks ...`: list, show, export, import and retire the entries of the
playbook memory (`agent_runner.learning.memory.PlaybookStore`, migration 0006).

Every command works on DATABASE_URL, else the embedded Postgres, and brings the schema to
head first. Only `import` embeds (cue texts of versions the file has no vector for, with
the embedder of `--embedder` or `--embedding-config`); the other commands neither embed
nor search, so they load no model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from crmbench.errors import fail, friendly_errors
from crmbench.postgres import resolve_database_url

if TYPE_CHECKING:
    from pydantic import ValidationError

    from agent_runner.learning.memory import ImportSummary, PlaybookStore
    from crmbench_contracts.playbooks import (
        EntryStatus,
        PlaybookCounters,
        PlaybookEntry,
        PlaybookExport,
        PlaybookRetirement,
        PlaybookVersion,
    )
    from crmbench_learning.embeddings import Embedder, EmbeddingConfig

T = TypeVar("T")

playbooks_app = typer.Typer(
    help="Playbook memory: list, show, export, import, retire entries.", no_args_is_help=True
)


class AudienceChoice(StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"


class StatusChoice(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    ALL = "all"


class EmbedderChoice(StrEnum):
    LOCAL = "local"
    HASHING = "hashing"
    OPENAI = "openai"


NO_EMBEDDER = ("none: this command neither embeds nor searches", 1)
"""The (embedder, dimension) a store is opened with by the commands that only read,
export or retire: those never touch the store's own embedder, and no model is loaded."""

EMBED_BATCH = 32
"""Cue texts per `embed` call when importing (the batch size of bench/embedding_bench.py)."""

EXCERPT = 56
"""Characters of the cue text shown by `list`."""


def _store_call(
    action: Callable[[PlaybookStore], Coroutine[Any, Any, T]],
    embedder: tuple[str, int] = NO_EMBEDDER,
) -> T:
    """Runs `action` on a store over the migrated database (DATABASE_URL, else the
    embedded Postgres); the memory's refusals become one-line errors."""
    import asyncpg

    from agent_runner.learning.memory import PlaybookError, PlaybookStore
    from crm_api.migrate import upgrade_schema

    url = resolve_database_url()
    upgrade_schema(url)

    async def call() -> T:
        name, dimension = embedder
        store = await PlaybookStore.connect(url, embedder=name, dimension=dimension, pool_size=1)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(call())
    except PlaybookError as exc:
        raise fail(str(exc)) from None
    except asyncpg.PostgresError as exc:
        raise fail(f"database error: {str(exc).splitlines()[0]}") from None


def _excerpt(text: str, width: int = EXCERPT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _problems(exc: ValidationError, limit: int = 5) -> str:
    """A validation error in one line: where and what, for its first `limit` errors."""
    errors = exc.errors()
    shown = [
        f"{'.'.join(str(part) for part in error['loc']) or 'document'}: {error['msg']}"
        for error in errors[:limit]
    ]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(shown) + more


# ---------------------------------------------------------------------------- list


@playbooks_app.command("list")
@friendly_errors
def playbooks_list(
    audience: Annotated[
        AudienceChoice | None, typer.Option(help="Only entries for this audience.")
    ] = None,
    status: Annotated[StatusChoice, typer.Option(help="Which entries to list.")] = (
        StatusChoice.ALL
    ),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the entries and counters as JSON.")
    ] = False,
) -> None:
    """The entries at their current versions, oldest first, with their counters."""

    async def read(
        store: PlaybookStore,
    ) -> tuple[list[PlaybookEntry], dict[str, PlaybookCounters]]:
        entries = await store.list_entries(
            status=None if status is StatusChoice.ALL else cast("EntryStatus", status.value),
            audience=None if audience is None else audience.value,
        )
        return entries, await store.counters_of([entry.entry_id for entry in entries])

    entries, counters = _store_call(read)
    if as_json:
        rows = [
            {
                "entry": entry.model_dump(mode="json"),
                "counters": counters[entry.entry_id].model_dump(mode="json"),
            }
            for entry in entries
        ]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not entries:
        typer.echo("no playbook entries" + ("" if status is StatusChoice.ALL else f" {status}"))
        return
    typer.echo(
        f"{'id':<19} {'ver':>3} {'audience':<8} {'level':<9} {'status':<7} "
        f"{'retr':>5} {'inj':>5} {'foll':>5}  cue"
    )
    for entry in entries:
        count = counters[entry.entry_id]
        typer.echo(
            f"{entry.entry_id:<19} {entry.version:>3} {entry.audience:<8} {entry.level:<9} "
            f"{entry.status:<7} {count.retrieved:>5} {count.injected:>5} {count.followed:>5}  "
            f"{_excerpt(entry.cue.text)}"
        )
    retired = sum(entry.status == "retired" for entry in entries)
    noun = "entry" if len(entries) == 1 else "entries"
    typer.echo(f"\n{len(entries)} {noun} ({len(entries) - retired} active, {retired} retired)")


# ---------------------------------------------------------------------------- show


def _print_content(content: PlaybookEntry | PlaybookVersion, indent: str) -> None:
    typer.echo(f"{indent}cue:      {content.cue.text}")
    for pattern in content.cue.patterns:
        typer.echo(f"{indent}  pattern: {pattern}")
    typer.echo(f"{indent}action:   {content.action.text}")
    if content.action.tools:
        typer.echo(f"{indent}tools:    {', '.join(content.action.tools)}")
    for rule in content.action.argument_rules:
        checked = f" (fullmatch {rule.pattern})" if rule.pattern is not None else ""
        typer.echo(f"{indent}rule:     {rule.tool}.{rule.argument}: {rule.rule}{checked}")
    typer.echo(f"{indent}effect:   {content.expected_effect}")


def _mean(total: float, count: int) -> str:
    return f"{total / count:.3f}" if count else "-"


def _print_entry(
    entry: PlaybookEntry,
    versions: list[PlaybookVersion],
    counters: PlaybookCounters,
    retirement: PlaybookRetirement | None,
) -> None:
    typer.echo(
        f"{entry.entry_id}  version {entry.version}  {entry.audience}  {entry.level}  "
        f"{entry.status}"
    )
    typer.echo(f"hash:     {entry.content_hash}")
    typer.echo(f"created:  {entry.created_at.isoformat()}  updated: {entry.updated_at.isoformat()}")
    _print_content(entry, "")
    provenance = entry.provenance
    typer.echo("provenance:")
    typer.echo(f"  episodes:      {', '.join(provenance.episode_ids) or '-'}")
    typer.echo(f"  runs:          {', '.join(provenance.run_ids) or '-'}")
    typer.echo(f"  teacher calls: {', '.join(provenance.teacher_call_ids) or '-'}")
    typer.echo(
        f"counters: retrieved {counters.retrieved}, injected {counters.injected}, "
        f"followed {counters.followed}"
    )
    typer.echo(
        f"  with it:    {counters.episodes_with} episodes, mean reward "
        f"{_mean(counters.reward_sum_with, counters.episodes_with)}, tokens "
        f"{counters.tokens_sum_with}"
    )
    typer.echo(
        f"  without it: {counters.episodes_without} episodes, mean reward "
        f"{_mean(counters.reward_sum_without, counters.episodes_without)}, tokens "
        f"{counters.tokens_sum_without}"
    )
    if retirement is not None:
        run = f" in run {retirement.run_id}" if retirement.run_id else ""
        typer.echo(
            f"retired:  {retirement.retired_at.isoformat()} at version {retirement.version}"
            f"{run} ({retirement.code}): {retirement.reason}"
        )
    elif entry.status == "retired":  # imported retired, without its retirement record
        typer.echo(f"retired:  {entry.retired_reason}")
    typer.echo(f"versions ({len(versions)}):")
    for version in versions:
        typer.echo(
            f"  v{version.version}  {version.created_at.isoformat()}  {version.content_hash[:16]}"
        )
        if version.version != entry.version:  # the current one is printed above
            _print_content(version, "    ")


@playbooks_app.command("show")
@friendly_errors
def playbooks_show(
    entry_id: Annotated[str, typer.Argument(help="The entry's id (pb-...), as `list` shows.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """One entry: its current content, every version, provenance, counters, retirement."""

    async def read(
        store: PlaybookStore,
    ) -> tuple[PlaybookEntry, list[PlaybookVersion], PlaybookCounters, PlaybookRetirement | None]:
        entry = await store.get(entry_id)
        return (
            entry,
            await store.versions(entry_id),
            await store.counters(entry_id),
            await store.retirement(entry_id),
        )

    entry, versions, counters, retirement = _store_call(read)
    if as_json:
        shown = {
            "entry": entry.model_dump(mode="json"),
            "versions": [version.model_dump(mode="json") for version in versions],
            "counters": counters.model_dump(mode="json"),
            "retirement": None if retirement is None else retirement.model_dump(mode="json"),
        }
        typer.echo(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    _print_entry(entry, versions, counters, retirement)


# ---------------------------------------------------------------------------- export


@playbooks_app.command("export")
@friendly_errors
def playbooks_export(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """The whole memory as JSON (format crmbench.playbooks/1): every entry with its
    versions, embeddings, counters and retirement. `import` reads it back."""

    async def read(store: PlaybookStore) -> PlaybookExport:
        return await store.export()

    document = _store_call(read)
    text = document.model_dump_json(indent=2)
    if out is None:
        typer.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    count = len(document.entries)
    typer.echo(f"wrote {count} {'entry' if count == 1 else 'entries'} to {out}", err=True)


# ---------------------------------------------------------------------------- import


def _read_export(file: Path) -> PlaybookExport:
    from pydantic import ValidationError

    from crmbench_contracts.playbooks import PlaybookExport

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"no file {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"{file} is not JSON: {exc}") from None
    try:
        return PlaybookExport.model_validate(data)
    except ValidationError as exc:
        raise fail(
            f"{file} is not a playbook export (crmbench.playbooks/1): {_problems(exc)}"
        ) from None


def _embedding_config(embedder: EmbedderChoice | None, config_file: Path | None) -> EmbeddingConfig:
    """The embedder to use: `--embedding-config FILE` (its `embeddings:` mapping, the
    shape of docs/learning.md), else `--embedder` (default local)."""
    import yaml
    from pydantic import ValidationError

    from crmbench_learning.embeddings import EmbeddingConfig

    if config_file is None:
        if embedder is EmbedderChoice.OPENAI:
            raise fail(
                "the openai embedder needs a model and dimensions: give its `embeddings:` "
                "settings with --embedding-config FILE"
            )
        return EmbeddingConfig(provider=(embedder or EmbedderChoice.LOCAL).value)
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(f"no file {config_file}") from None
    except yaml.YAMLError as exc:
        raise fail(f"{config_file} is not YAML: {exc}") from None
    section = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise fail(f"{config_file} has no `embeddings:` mapping")
    try:
        config = EmbeddingConfig.model_validate(section)
    except ValidationError as exc:
        raise fail(f"{config_file}: embeddings: {_problems(exc)}") from None
    if embedder is not None and embedder.value != config.provider:
        raise fail(
            f"--embedder {embedder.value} disagrees with {config_file} "
            f"(provider {config.provider}); give one of them"
        )
    return config


def _embed_missing(document: PlaybookExport, embedder: Embedder) -> int:
    """Adds, in `document`, a vector of `embedder` for every version that has none (the
    embedding of its cue text); returns how many it computed."""
    missing = [
        (item, version)
        for item in document.entries
        for version in item.versions
        if version.version not in item.embeddings.get(embedder.name, {})
    ]
    for start in range(0, len(missing), EMBED_BATCH):
        batch = missing[start : start + EMBED_BATCH]
        vectors = embedder.embed([version.cue.text for _, version in batch])
        for (item, version), vector in zip(batch, vectors, strict=True):
            item.embeddings.setdefault(embedder.name, {})[version.version] = vector
    return len(missing)


@playbooks_app.command("import")
@friendly_errors
def playbooks_import(
    file: Annotated[Path, typer.Argument(help="A playbook export (crmbench.playbooks/1).")],
    embedder: Annotated[
        EmbedderChoice | None,
        typer.Option(
            help="Embedder for the cue texts the file has no vector for (default local; "
            "openai needs --embedding-config)."
        ),
    ] = None,
    embedding_config: Annotated[
        Path | None,
        typer.Option(
            "--embedding-config",
            help="A YAML file whose `embeddings:` mapping configures the embedder "
            "(provider, model, dimensions, base_url...; see docs/learning.md).",
        ),
    ] = None,
) -> None:
    """Add a playbook export's entries to the memory, all or nothing.

    What the memory has is kept (importing a file twice adds nothing); versions without a
    vector of the configured embedder get one from their cue text, so the entries are
    searchable. A file that is not JSON or not an export, or whose content hashes belong
    to other entries here, is refused whole.
    """
    from crmbench_learning.embeddings import EmbeddingError, make_embedder
    from crmbench_llm.base import LLMError

    document = _read_export(file)
    config = _embedding_config(embedder, embedding_config)
    try:
        model = make_embedder(config)
        computed = _embed_missing(document, model)
    except (EmbeddingError, LLMError) as exc:
        raise fail(f"embedding the cue texts failed: {exc}") from None
    versions = sum(len(item.versions) for item in document.entries)
    vectors = sum(len(v) for item in document.entries for v in item.embeddings.values())

    async def write(store: PlaybookStore) -> ImportSummary:
        return await store.import_entries(document)

    summary = _store_call(write, (model.name, model.dimensions))
    counts = (
        ("entries", len(document.entries), summary.entries_added),
        ("versions", versions, summary.versions_added),
        ("embeddings", vectors, summary.embeddings_added),
    )
    typer.echo(
        f"imported {file}: "
        + "; ".join(
            f"{name}: {added} added, {total - added} skipped" for name, total, added in counts
        )
        + f" (skipped: in the memory already; {computed} vectors computed with {model.name})"
    )


# ---------------------------------------------------------------------------- retire


@playbooks_app.command("retire")
@friendly_errors
def playbooks_retire(
    entry_id: Annotated[str, typer.Argument(help="The entry's id (pb-...).")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept with the retirement.")],
) -> None:
    """Retire an entry by hand: searches skip it from now on; its counters at this moment
    and the reason are kept (code `manual`). An entry retired already stays as it was."""
    if not reason.strip():
        raise fail("--reason is empty; say why the entry is retired")

    async def retire(store: PlaybookStore) -> tuple[PlaybookEntry, bool]:
        before = await store.get(entry_id)
        after = await store.retire(entry_id, reason)
        return after, before.status == "active"

    entry, changed = _store_call(retire)
    if changed:
        typer.echo(f"retired {entry.entry_id} (version {entry.version}): {entry.retired_reason}")
    else:
        typer.echo(
            f"{entry.entry_id} was retired already ({entry.retired_reason}); nothing changed"
        )
