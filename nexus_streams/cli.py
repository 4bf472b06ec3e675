"""The `nexus-streams` command: commands parse arguments and call into the package."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from typing import Annotated

import typer
from rich.console import Console

from nexus_streams.settings import Settings

app = typer.Typer(help="nexus-streams: relationship graphs and pattern workflows on Kafka.")
console = Console()


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
    asyncio.run(ensure_topics(settings))
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

    found = asyncio.run(ensure_topics(Settings()))
    for name, partitions in sorted(found.items()):
        console.print(f"{name}\t{partitions} partitions")


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

    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    if result.get("status") != "ok":
        raise typer.Exit(1)


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 60.0,
) -> None:
    """Start a worker, create a relationship, print its result and event, stop the worker."""
    from nexus_streams.demo import run_demo

    sys.exit(asyncio.run(run_demo(Settings(), timeout)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
