"""The `nexus-streams` command: commands parse arguments and call into the package."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from nexus_streams.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="nexus-streams: relationship graphs and pattern workflows on Kafka.",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn the errors a user can fix into one line and exit code 1."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from nexus_streams.streams.admin import TopicMismatch

    try:
        return asyncio.run(coro)
    except TopicMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
    except (KafkaConnectionError, ConnectionRefusedError) as exc:
        console.print(
            f"[red]error:[/red] cannot reach Kafka at {Settings().kafka_bootstrap} ({exc}); "
            "start the local stack with `make stack-up` or set NEXUS_KAFKA_BOOTSTRAP"
        )
    except KafkaError as exc:
        console.print(f"[red]error:[/red] Kafka: {exc}")
    except TimeoutError:
        console.print("[red]error:[/red] no answer in time; is a worker running (`nexus-streams worker`)?")
    raise typer.Exit(1)


@app.command()
def worker(
    loglevel: Annotated[str | None, typer.Option(help="overrides NEXUS_LOG_LEVEL")] = None,
) -> None:
    """Run a worker: create the topics if missing, then process until SIGTERM/SIGINT."""
    from faust import Worker

    from nexus_streams.streams.admin import ensure_topics
    from nexus_streams.streams.app import create_app

    settings = Settings()
    level = (loglevel or settings.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_async(ensure_topics(settings))
    from nexus_streams.metrics import Metrics

    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    faust_app = create_app(settings, metrics)
    Worker(faust_app, loglevel=level, quiet=True).execute_from_commandline()


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
) -> None:
    """Send one command and print its result (a request_id is added when missing)."""
    from nexus_streams.client import NexusClient

    try:
        payload = json.loads(command)
    except json.JSONDecodeError as exc:
        console.print(f"[red]the command is not JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    payload.setdefault("request_id", f"cli-{uuid.uuid4()}")
    payload.setdefault("principal", "cli")

    async def run() -> dict[str, object]:
        async with NexusClient(Settings()) as client:
            return await client.request(topic, key, payload, timeout_s=timeout)

    result = run_async(run())
    print(json.dumps(result, indent=2))
    if result.get("status") != "ok":
        raise typer.Exit(1)


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
