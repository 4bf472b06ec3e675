"""The `nexus-streams` command: commands parse arguments and call into the package."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from nexus_streams.settings import Settings

if TYPE_CHECKING:
    from nexus_streams.client import NexusClient

T = TypeVar("T")

app = typer.Typer(
    help="nexus-streams: relationship graphs and pattern workflows on Kafka.",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
#: the token the request commands send; NEXUS_TOKEN when not given
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="a token to send (`authorization: Bearer ...`); default: NEXUS_TOKEN"),
]


def output_console() -> Console:
    """Tables on stdout; piped output gets a wide fixed width instead of being cut at 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn the errors a user can fix into one line and exit code 1."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from nexus_streams.client import NexusRequestError
    from nexus_streams.domain.errors import NexusError
    from nexus_streams.streams.admin import TopicMismatch

    try:
        return asyncio.run(coro)
    except TopicMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
    except (KafkaConnectionError, ConnectionRefusedError) as exc:
        settings = Settings()
        if settings.kafka_security_protocol == "PLAINTEXT":
            console.print(
                f"[red]error:[/red] cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); "
                "start the local stack with `make stack-up` or set NEXUS_KAFKA_BOOTSTRAP"
            )
        else:  # aiokafka logs why (e.g. SaslAuthenticationFailed) and raises only "Unable to bootstrap"
            who = f" as {settings.kafka_sasl_username}" if settings.kafka_sasl_username else ""
            console.print(
                f"[red]error:[/red] cannot connect to Kafka at {settings.kafka_bootstrap}{who} over "
                f"{settings.kafka_security_protocol} ({exc}); check NEXUS_KAFKA_BOOTSTRAP, the credentials "
                "(NEXUS_KAFKA_SASL_*) and the certificates (NEXUS_KAFKA_SSL_*)"
            )
    except KafkaError as exc:
        console.print(f"[red]error:[/red] Kafka: {exc}")
    except NexusError as exc:
        console.print(f"[red]error:[/red] {exc.code.value}: {exc.message}")
        if exc.code.value in ("unknown_format_version", "invalid_backup"):
            raise typer.Exit(2) from None
    except NexusRequestError as exc:
        console.print(f"[red]error:[/red] {exc.code}: {exc.message}")
    except TimeoutError:
        console.print("[red]error:[/red] no answer in time; is a worker running (`nexus-streams worker`)?")
    raise typer.Exit(1)


@app.command()
def worker(
    loglevel: Annotated[str | None, typer.Option(help="overrides NEXUS_LOG_LEVEL")] = None,
) -> None:
    """Run a worker: create the topics if missing, then process until SIGTERM/SIGINT."""
    from faust import Worker

    from nexus_streams import logs
    from nexus_streams.streams.admin import ensure_topics, leave_for_previous_run
    from nexus_streams.streams.app import create_app

    settings = Settings()
    level = (loglevel or settings.log_level).upper()
    log_config = logs.configure(level, settings.log_json)  # text, or JSON lines with NEXUS_LOG_JSON
    run_async(ensure_topics(settings))
    run_async(leave_for_previous_run(settings))  # after a crash: no wait for its session timeout
    from nexus_streams.metrics import Metrics

    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    faust_app = create_app(settings, metrics)
    Worker(faust_app, loglevel=level, quiet=True, logging_config=log_config).execute_from_commandline()


@app.command()
def topics() -> None:
    """Create the public topics (idempotent) and print them with their partition counts."""
    from nexus_streams.streams.admin import ensure_topics

    found = run_async(ensure_topics(Settings()))
    for name, partitions in sorted(found.items()):
        print(f"{name}\t{partitions} partitions")


@app.command()
def send(
    topic: Annotated[str, typer.Argument(help="relationships | queries | executions | patterns")],
    command: Annotated[str, typer.Argument(help="the command as a JSON object")],
    key: Annotated[str, typer.Option(help="namespace (or pattern id for patterns)")] = "default",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 30.0,
    token: TokenOption = None,
) -> None:
    """Send one command and print its result (a request_id is added when missing, and the
    principal: the token's subject, else `cli`)."""
    try:
        payload = json.loads(command)
    except json.JSONDecodeError as exc:
        console.print(f"[red]the command is not JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    payload.setdefault("request_id", f"cli-{uuid.uuid4()}")

    async def run() -> dict[str, object]:
        async with _client(token) as client:
            return await client.request(topic, key, payload, timeout_s=timeout)

    result = run_async(run())
    print(json.dumps(result, indent=2))
    if result.get("status") != "ok":
        raise typer.Exit(1)


def _client(token: str | None, principal: str | None = None) -> NexusClient:
    """A NexusClient sending `token` (else NEXUS_TOKEN); requests name `principal`, else the
    token's subject, else `cli`."""
    from nexus_streams.client import NexusClient
    from nexus_streams.domain.auth import token_subject

    settings = Settings()
    sent = token or (settings.token.get_secret_value() if settings.token else None)
    return NexusClient(
        settings, token=sent, principal=principal or (token_subject(sent) if sent else None) or "cli"
    )


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="the principal the token is for (its `sub`)")],
    scope: Annotated[
        str,
        typer.Option(help='space-separated scopes, e.g. "relationships:write:alice queries:read:alice"'),
    ] = "",
    ttl: Annotated[str, typer.Option(help="how long it is valid: 90, 45s, 30m, 1h, 7d")] = "1h",
) -> None:
    """Print a development token signed with NEXUS_AUTH_HS256_SECRET (with NEXUS_AUTH_ISSUER and
    NEXUS_AUTH_AUDIENCE, when set). Use it as `--token` or NEXUS_TOKEN; see docs/security.md."""
    import time

    from nexus_streams.auth import development_token, parse_ttl

    try:
        print(development_token(Settings(), sub, scope, parse_ttl(ttl), now=time.time()))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _progress(label: str) -> Any:
    """A rich progress bar on stderr: items, bytes, rate."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _print_summary(summary: Any, unit: str) -> None:
    """The summary: counts, bytes, seconds (stderr: stdout may be the export)."""
    offset = "" if summary.offset is None else f", as of offset {summary.offset}"
    console.print(
        f"{summary.what}ed {summary.items:,} {unit} ({summary.bytes:,} bytes) in "
        f"{summary.seconds:.2f}s: {summary.rate:,.0f} {unit}/s{offset}"
    )


@app.command("export")
def export_(
    namespace: Annotated[str, typer.Option(help="the namespace to export")] = "default",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="the file to write; stdout when absent")
    ] = None,
    chunk_bytes: Annotated[
        int | None, typer.Option(help="the largest chunk the worker sends (default NEXUS_EXPORT_CHUNK_BYTES)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the next chunk")] = 60.0,
    token: TokenOption = None,
) -> None:
    """Write a snapshot of a namespace as of one input offset (NDJSON, docs/backups.md)."""
    from nexus_streams import backup

    async def run() -> Any:
        with _progress(f"export {namespace}") as bar:
            task = bar.add_task("export", total=None)

            def progress(done: int, total: int | None, size: int) -> None:
                bar.update(task, completed=done, total=total)

            async with _client(token) as client:
                if output is None:
                    return await backup.export_namespace(
                        client, namespace, sys.stdout.buffer, progress, chunk_bytes, timeout
                    )
                return await backup.export_namespace_to(
                    client, namespace, output, progress, chunk_bytes=chunk_bytes, timeout_s=timeout
                )

    _print_summary(run_async(run()), "relationships")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="a file written by `nexus-streams export`", exists=True)],
    namespace: Annotated[str, typer.Option(help="the namespace to restore into")] = "default",
    batch_size: Annotated[int, typer.Option(help="relationships per batch (at most NEXUS_MAX_BATCH)")] = 1000,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each batch's result")] = 60.0,
    token: TokenOption = None,
) -> None:
    """Restore an export into a namespace (the same or another): schema, then relationships in
    batches; running it again after an interruption doubles nothing."""
    from nexus_streams import backup

    async def run() -> Any:
        with _progress(f"import {namespace}") as bar:
            task = bar.add_task("import", total=None)

            def progress(done: int, total: int | None, size: int) -> None:
                bar.update(task, completed=done, total=total)

            async with _client(token) as client:
                return await backup.import_namespace(client, file, namespace, progress, batch_size, timeout)

    _print_summary(run_async(run()), "relationships")


patterns_app = typer.Typer(help="Store and inspect patterns.", pretty_exceptions_enable=False)
app.add_typer(patterns_app, name="patterns")


def _pattern_store() -> Any:
    from nexus_streams.store.redis import RedisPatternStore

    return RedisPatternStore.from_settings(Settings())


async def _with_store(call: Callable[[Any], Awaitable[T]]) -> T:
    store = _pattern_store()
    try:
        return await call(store)
    finally:
        await store.close()


@patterns_app.command("push")
def patterns_push(
    file: Annotated[Path, typer.Argument(help="a pattern document, YAML or JSON", exists=True)],
    principal: Annotated[
        str | None,
        typer.Option(help="who stores it (its owner if new); default: the token's subject, else cli"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 30.0,
    token: TokenOption = None,
) -> None:
    """Store a pattern through the patterns topic; print the result (exit 1 on an error)."""
    from nexus_streams.domain.errors import NexusError
    from nexus_streams.domain.patterns import load_document

    try:
        document = load_document(file.read_bytes())
    except NexusError as exc:
        console.print(f"[red]error:[/red] {file}: {exc.message}")
        raise typer.Exit(2) from None
    pattern_id = str(document.get("id") or "")
    command = {"request_id": f"cli-{uuid.uuid4()}", "action": "store", "pattern": document}

    async def run() -> dict[str, Any]:
        async with _client(token, principal) as client:
            return await client.request("patterns", pattern_id, command, timeout_s=timeout)

    result = run_async(run())
    print(json.dumps(result, indent=2))
    if result.get("status") != "ok":
        raise typer.Exit(1)


@patterns_app.command("list")
def patterns_list() -> None:
    """Every stored pattern, with its latest version, kind and owner."""
    from rich.table import Table

    summaries = run_async(_with_store(lambda store: store.list()))
    table = Table("id", "name", "kind", "version", "owner", "deprecated", "updated")
    for s in summaries:
        table.add_row(
            s.id,
            s.name,
            s.kind.value,
            str(s.latest_version),
            s.owner or "",
            "yes" if s.deprecated else "",
            s.updated_at.isoformat() if s.updated_at else "",
        )
    output_console().print(table)


@patterns_app.command("show")
def patterns_show(
    pattern_id: Annotated[str, typer.Argument(help="pattern id")],
    version: Annotated[int | None, typer.Option(help="a version; the latest when absent")] = None,
) -> None:
    """A pattern's document (JSON), as `patterns push` takes it back."""
    pattern = run_async(_with_store(lambda store: store.get(pattern_id, version)))
    print(json.dumps(pattern.to_document(), indent=2))


@patterns_app.command("stats")
def patterns_stats(pattern_id: Annotated[str, typer.Argument(help="pattern id")]) -> None:
    """Executions, successes, failures and durations of a pattern, in total and per version."""
    from rich.table import Table

    stats = run_async(_with_store(lambda store: store.stats(pattern_id))).to_dict()
    columns = {"all versions": stats["total"], **{f"v{v}": row for v, row in stats["versions"].items()}}
    table = Table("", *columns)
    for name in stats["total"]:
        table.add_row(name, *("" if row.get(name) is None else str(row[name]) for row in columns.values()))
    output_console().print(table)


@patterns_app.command("export")
def patterns_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="the file; stdout when absent")
    ] = None,
    with_stats: Annotated[bool, typer.Option(help="include each pattern's execution statistics")] = False,
) -> None:
    """Write every user pattern (every version, owner, deprecation; statistics with --with-stats)."""
    from nexus_streams import backup

    async def run() -> Any:
        with _progress("export patterns") as bar:
            task = bar.add_task("export", total=None)

            def progress(done: int, total: int | None, size: int) -> None:
                bar.update(task, completed=done, total=total)

            async def write(store: Any) -> Any:
                if output is None:
                    return await backup.export_patterns(store, sys.stdout.buffer, with_stats, progress)
                with output.open("wb") as out:
                    return await backup.export_patterns(store, out, with_stats, progress)

            return await _with_store(write)

    _print_summary(run_async(run()), "pattern versions")


@patterns_app.command("import")
def patterns_import(
    file: Annotated[Path, typer.Argument(help="a file written by `patterns export`", exists=True)],
    token: TokenOption = None,
) -> None:
    """Store every pattern version of the file through nexus.patterns; a rerun doubles nothing."""
    from nexus_streams import backup

    async def run() -> Any:
        with _progress("import patterns") as bar:
            task = bar.add_task("import", total=None)

            def progress(done: int, total: int | None, size: int) -> None:
                bar.update(task, completed=done, total=total)

            async with _client(token) as client:
                return await backup.import_patterns(client, file, progress)

    _print_summary(run_async(run()), "pattern versions")


@app.command()
def execute(
    pattern_id: Annotated[str, typer.Argument(help="the pattern to run")],
    input_json: Annotated[str, typer.Option("--input", help="the execution input, a JSON object")] = "{}",
    namespace: Annotated[str, typer.Option(help="the namespace it runs in")] = "default",
    version: Annotated[int | None, typer.Option(help="a pinned version; the latest when absent")] = None,
    principal: Annotated[
        str | None, typer.Option(help="who executes; default: the token's subject, else cli")
    ] = None,
    step_events: Annotated[bool, typer.Option(help="publish step_completed/failed/retried")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 60.0,
    token: TokenOption = None,
) -> None:
    """Execute a pattern and print its result (exit 1 if the execution failed)."""
    from nexus_streams.client import NexusRequestError

    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        console.print(f"[red]error:[/red] --input is not JSON: {exc}")
        raise typer.Exit(2) from None

    async def run() -> dict[str, Any]:
        async with _client(token, principal) as client:
            try:
                return await client.execute_pattern(
                    pattern_id,
                    data,
                    namespace=namespace,
                    version=version,
                    step_events=step_events,
                    timeout_s=timeout,
                )
            except NexusRequestError as exc:
                return exc.result

    result = run_async(run())
    print(json.dumps(result, indent=2))
    if result.get("status") != "ok":
        raise typer.Exit(1)


@app.command()
def events(
    pattern: Annotated[str | None, typer.Option(help="only events of this pattern")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="only events of this type")] = None,
    count: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
) -> None:
    """Follow nexus.events from now on, one JSON line per event (filtered by headers)."""
    from nexus_streams.client import NexusClient

    async def run() -> None:
        seen = 0
        async with NexusClient(Settings()) as client:
            console.print("following nexus.events from now on")  # stderr: stdout is the events
            async for event in client.subscribe_events(pattern, event_type):
                print(json.dumps(event), flush=True)
                seen += 1
                if count is not None and seen >= count:
                    return

    try:
        run_async(run())
    except KeyboardInterrupt:
        pass


@app.command()
def stats(
    namespace: Annotated[str, typer.Option(help="the namespace whose graph is shown")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the graph statistics")] = 30.0,
    token: TokenOption = None,
) -> None:
    """Graph statistics of a namespace (a `stats` query to the worker) and execution statistics of
    every pattern (from the pattern store), as tables."""
    from rich.table import Table

    async def graph() -> dict[str, Any]:
        async with _client(token) as client:
            query = {"request_id": f"cli-{uuid.uuid4()}", "action": "stats"}
            return await client.request("queries", namespace, query, timeout_s=timeout)

    async def patterns(store: Any) -> list[tuple[Any, Any]]:
        from nexus_streams.domain.errors import NotFound

        found = []
        for summary in await store.list():
            try:
                found.append((summary, await store.stats(summary.id)))
            except NotFound:
                continue  # deleted meanwhile
        return found

    result = run_async(graph())
    found = run_async(_with_store(patterns))
    if result.get("status") != "ok":
        print(json.dumps(result, indent=2))
        raise typer.Exit(1)
    g = result["output"]
    if as_json:
        rows = [{"id": s.id, "latest_version": s.latest_version, **st.total.to_dict()} for s, st in found]
        print(json.dumps({"graph": g, "patterns": rows}, indent=2))
        return
    out = output_console()
    table = Table("graph", namespace, title="Graph")
    table.add_row("relationships", str(g["relationships"]))
    table.add_row("entities", str(g["entities"]))
    for type_, count in g["by_type"].items():
        table.add_row(f"  {type_}", str(count))
    degree = g["degree"]
    table.add_row(
        "degree min / median / mean / max",
        f"{degree['min']} / {degree['median']} / {degree['mean']} / {degree['max']}",
    )
    table.add_row("schema", "yes" if g.get("schema") else "none")
    out.print(table)
    table = Table(
        "pattern",
        "version",
        "executions",
        "ok",
        "failed",
        "success",
        "mean ms",
        "max ms",
        "last error",
        title="Patterns",
    )
    for summary, st in found:
        t = st.total
        rate, mean = t.success_rate, t.duration_mean_ms
        table.add_row(
            summary.id + (" (deprecated)" if summary.deprecated else ""),
            str(summary.latest_version),
            str(t.executions),
            str(t.successes),
            str(t.failures),
            "" if rate is None else f"{rate:.0%}",
            "" if mean is None else f"{mean:.2f}",
            f"{t.duration_max_ms:.2f}" if t.executions else "",
            t.last_error_code or "",
        )
    out.print(table)


deadletter_app = typer.Typer(
    help="Dead letters: list and show them, redrive (re-send) or discard them (docs/deadletters.md).",
    pretty_exceptions_enable=False,
)
app.add_typer(deadletter_app, name="deadletter")

Since = Annotated[
    str | None, typer.Option(help="dead-lettered since: a duration ago (90s, 15m, 2h, 7d) or an ISO time")
]
Reasons = Annotated[list[str] | None, typer.Option("--reason", help="nexus-error-code (repeatable)")]
Topics = Annotated[
    list[str] | None, typer.Option("--topic", help="original topic, e.g. relationships (repeatable)")
]
Partition = Annotated[int | None, typer.Option(help="the partition of OFFSET (needed when several have it)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="say what would be done; send and record nothing")]
Principal = Annotated[str, typer.Option(help="who does it, recorded in nexus.deadletter-handled")]


def _filters(
    since: str | None,
    reasons: list[str] | None,
    topics: list[str] | None,
    offset: int | None = None,
    partition: int | None = None,
) -> Any:
    from nexus_streams.deadletters import filters_of

    return filters_of(
        Settings().topic_prefix,
        since=since,
        reasons=reasons or (),
        topics=topics or (),
        offset=offset,
        partition=partition,
    )


def _source(letter: Any) -> str:
    source = letter.source
    return f"{source.topic}[{source.partition}]@{source.offset}" if source else ""


@deadletter_app.command("list")
def deadletter_list(
    since: Since = None,
    reason: Reasons = None,
    topic: Topics = None,
    limit: Annotated[int, typer.Option(help="show the oldest N that match")] = 50,
    waiting: Annotated[
        bool, typer.Option("--waiting", help="only those neither redriven nor discarded")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters on nexus.deadletter with their reason headers and state, oldest first."""
    from rich.table import Table

    from nexus_streams.deadletters import describe, preview
    from nexus_streams.streams.deadletters import list_deadletters

    async def run() -> Any:
        filters = _filters(since, reason, topic)
        return await list_deadletters(Settings(), filters, limit=limit, waiting_only=waiting)

    listing = run_async(run())
    if as_json:
        rows = [describe(row.letter, row.handled, size=row.size) for row in listing.rows]
        print(json.dumps({"matched": listing.matched, "deadletters": rows}, indent=2))
        return
    table = Table("partition", "offset", "time", "state", "code", "source", "redrives", "key", "value")
    for row in listing.rows:
        letter = row.letter
        table.add_row(
            str(letter.partition),
            str(letter.offset),
            letter.at.strftime("%Y-%m-%d %H:%M:%S"),
            "waiting" if row.handled is None else row.handled.outcome,
            letter.code,
            _source(letter),
            str(letter.redrive_count),
            preview(letter.key or b"", 24),
            preview(letter.value),
        )
    if listing.rows:
        output_console().print(table)
    more = listing.matched - len(listing.rows)
    console.print(f"{listing.matched} matched" + (f", {more} more not shown (--limit)" if more else ""))


@deadletter_app.command("show")
def deadletter_show(
    offset: Annotated[int, typer.Argument(help="its offset on nexus.deadletter")],
    partition: Partition = None,
    as_json: AsJson = False,
) -> None:
    """One dead letter: every header, what was done with it, and its value."""
    from rich.table import Table

    from nexus_streams.deadletters import describe, preview, shown_value
    from nexus_streams.streams.deadletters import show_deadletter

    letter, handled = run_async(show_deadletter(Settings(), offset, partition))
    if as_json:
        print(json.dumps(describe(letter, handled, value=True), indent=2))
        return
    table = Table("", f"{letter.partition}:{letter.offset}", show_header=True)
    table.add_row("time", letter.at.isoformat())
    table.add_row("state", "waiting" if handled is None else handled.outcome)
    if handled is not None:
        table.add_row("handled", f"{handled.handled_at.isoformat()} by {handled.principal}")
        if handled.sent_to is not None:
            sent = handled.sent_to
            table.add_row("sent to", f"{sent.topic}[{sent.partition}]@{sent.offset}")
    table.add_row("key", "(none)" if letter.key is None else preview(letter.key, 128))
    for name, value in letter.headers:
        table.add_row(name, value.decode("utf-8", errors="replace"))
    table.add_row("value", f"{len(letter.value)} bytes")
    out = output_console()
    out.print(table)
    out.print(shown_value(letter.value), markup=False, highlight=False)


def _print_report(report: Any, as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    table = Table("partition", "offset", "code", "source", "action", "redrives", "sent to")
    for o in report.outcomes:
        sent = f"{o.sent_to.topic}[{o.sent_to.partition}]@{o.sent_to.offset}" if o.sent_to else ""
        action = o.action + (" (edited)" if o.edited else "")
        count = "" if o.count is None else str(o.count)
        table.add_row(
            str(o.letter.partition),
            str(o.letter.offset),
            o.letter.code,
            _source(o.letter),
            action,
            count,
            sent,
        )
    if report.outcomes:
        output_console().print(table)
    summary = ", ".join(f"{action} {n}" for action, n in sorted(report.counts.items())) or "nothing matched"
    if report.counts.get("handled") and not any(o.action == "handled" for o in report.outcomes):
        summary += " (handled: redriven or discarded before, not listed)"
    console.print(("dry run: " if report.dry_run else "") + summary)


def _editor(text: str) -> str | None:
    """$VISUAL or $EDITOR on the value; None when it is closed without a change."""
    import click

    edited: str | None = click.edit(text, extension=".json", require_save=True)
    return edited


@deadletter_app.command("redrive")
def deadletter_redrive(
    offset: Annotated[int | None, typer.Argument(help="only this dead letter (its offset)")] = None,
    partition: Partition = None,
    since: Since = None,
    reason: Reasons = None,
    topic: Topics = None,
    limit: Annotated[int | None, typer.Option(help="re-send N at most")] = None,
    edit: Annotated[
        bool, typer.Option("--edit", help="edit the value in $EDITOR first (needs OFFSET)")
    ] = False,
    dry_run: DryRun = False,
    principal: Principal = "cli",
    as_json: AsJson = False,
) -> None:
    """Re-send waiting dead letters to their topics, nexus-redrive-count + 1 (at most NEXUS_REDRIVE_MAX)."""
    import click

    from nexus_streams.streams.deadletters import redrive

    async def run() -> Any:
        filters = _filters(since, reason, topic, offset, partition)
        editor = _editor if edit else None
        return await redrive(
            Settings(), filters, dry_run=dry_run, limit=limit, edit=editor, principal=principal
        )

    try:
        report = run_async(run())
    except click.ClickException as exc:  # the editor could not be run
        console.print(f"[red]error:[/red] {exc.format_message()}; nothing was sent")
        raise typer.Exit(1) from None
    _print_report(report, as_json)


@deadletter_app.command("discard")
def deadletter_discard(
    offset: Annotated[int | None, typer.Argument(help="only this dead letter (its offset)")] = None,
    partition: Partition = None,
    since: Since = None,
    reason: Reasons = None,
    topic: Topics = None,
    every: Annotated[bool, typer.Option("--all", help="every waiting dead letter (no filter given)")] = False,
    dry_run: DryRun = False,
    principal: Principal = "cli",
    as_json: AsJson = False,
) -> None:
    """Mark waiting dead letters as dealt with, without re-sending them (no longer waiting)."""
    from nexus_streams.streams.deadletters import discard

    async def run() -> Any:
        filters = _filters(since, reason, topic, offset, partition)
        return await discard(Settings(), filters, every=every, dry_run=dry_run, principal=principal)

    _print_report(run_async(run()), as_json)


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 60.0,
) -> None:
    """Start a worker, create a relationship, print its result and event, stop the worker."""
    from nexus_streams.demo import run_demo

    sys.exit(run_async(run_demo(Settings(), timeout)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
