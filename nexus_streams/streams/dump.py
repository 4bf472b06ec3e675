"""What `kill -USR1` writes besides the asyncio tasks: the consumer's and producer's state, read
from Faust's and aiokafka's internals on purpose (a diagnostic; its errors are only logged)."""

from __future__ import annotations

from typing import Any, cast

import faust


def consumer_state(app: faust.App) -> str:
    """Which partitions the worker reads, and where: Faust's view and its Kafka consumer's."""
    consumer: Any = app.consumer
    lines = [
        f"consumer: flow_active={consumer.flow_active} in_recovery={app.in_recovery} "
        f"active={sorted(map(tuple, consumer._active_partitions or ()))} "  # noqa: SLF001
        f"paused={sorted(map(tuple, consumer._paused_partitions))} "  # noqa: SLF001
        f"buffered={sorted(map(tuple, consumer._buffered_partitions))}",  # noqa: SLF001
    ]
    for name, agent in app.agents.items():
        channel: Any = agent.channel
        lines.append(f"agent {name}: queued={channel.queue.qsize()} unacked={len(consumer.unacked)}")
    producer: Any = cast(Any, app.producer)._producer  # noqa: SLF001
    if producer is not None:
        sender, accumulator = producer._sender, producer._message_accumulator  # noqa: SLF001
        waiting = {f"{tp.topic}[{tp.partition}]": len(b) for tp, b in accumulator._batches.items()}  # noqa: SLF001
        lines.append(
            f"producer: in_flight={sorted(sender._in_flight)} muted={len(sender._muted_partitions)} "  # noqa: SLF001
            f"pending={len(accumulator._pending_batches)} waiting={waiting}"  # noqa: SLF001
        )
    kafka = consumer._thread._consumer  # noqa: SLF001
    assignment = kafka._subscription.subscription.assignment if kafka is not None else None  # noqa: SLF001
    if assignment is not None:
        for tp in sorted(assignment.tps):
            state = assignment.state_value(tp)
            lines.append(
                f"  {tp.topic}[{tp.partition}] position={state._position} paused={state.paused} "  # noqa: SLF001
                f"read={consumer._read_offset.get(tp)} committed={consumer._committed_offset.get(tp)} "  # noqa: SLF001
                f"acked={_offsets(consumer._acked.get(tp))} "  # noqa: SLF001
                f"gaps={sorted((i.begin, i.end) for i in consumer._gap.get(tp) or ())[:5]} "  # noqa: SLF001
                f"unacked={_offsets(m.offset for m in consumer.unacked if m.tp == tp)}"
            )
    return "\n".join(lines)


def _offsets(offsets: Any) -> str:
    """How many offsets, and the span and first few of them: enough to see a hole."""
    found = sorted(offsets or ())
    if not found:
        return "0"
    return f"{len(found)} [{found[0]}..{found[-1]}] first {found[:5]}"
