"""Pattern executions inside the namespace actor, without Faust.

An execution request starts an `Execution` and advances it at once. If it finishes, its
committed changes, result and events are the reply. If it must wait (a retry's backoff), its state
is kept in the `executions` table (so it survives a restart) and the actor is asked to wake it at
`wait_until` with a `resume` message on the executions topic: the resume is ordered with the other
commands of the namespace, and the partition keeps processing meanwhile. Duplicates of a request
that is still running get no second execution; its one result comes when it finishes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from nexus_streams.domain.access import AccessPolicy
from nexus_streams.domain.auth import Grant
from nexus_streams.domain.errors import NexusError, NotFound
from nexus_streams.domain.execution import (
    Execution,
    ExecutionEngine,
    ExecutionEvent,
    ExecutionLimits,
    ExecutionOutcome,
    Progress,
)
from nexus_streams.domain.graph import Change
from nexus_streams.domain.patterns import Pattern
from nexus_streams.domain.relationships import SEP
from nexus_streams.messages import ErrorBody, Event, ExecutionRequest, Inbound

#: execution ids are derived from (namespace, request_id): the same request, the same execution
EXECUTION_NAMESPACE = uuid.UUID("5b0f6c1e-9a44-4c8e-9a8e-2f64a3b1c7d2")


class ResumeExecution(Inbound):
    """Sent by the worker itself to wake a waiting execution (harmless if repeated)."""

    action: Literal["resume"]
    execution: str = Field(description="the request_id of the waiting execution")


@dataclass(frozen=True)
class ExecutionStats:
    """What to count once an execution finished (Redis statistics, Prometheus)."""

    pattern_id: str
    version: int
    status: Literal["ok", "error"]
    duration_ms: float
    error_code: str | None
    error_message: str | None
    execution_id: str
    step_failures: int
    step_retries: int
    rollback: str
    #: ("type/action", seconds its attempts ran) per step that ran
    step_durations: tuple[tuple[str, float], ...] = ()


@dataclass
class Ran:
    """What advancing an execution produced, for the service to turn into a reply."""

    execution: Execution
    events: list[Event]
    #: finished
    outcome: ExecutionOutcome | None = None
    changes: list[Change] = field(default_factory=list)
    #: waiting: store this state and wake the execution at `wait_until`
    state: dict[str, Any] | None = None
    wait_until: datetime | None = None
    stats: ExecutionStats | None = None


class PatternLookup:
    """Patterns fetched (asynchronously) before the message is handled; the engine reads them.
    `grant`: what the message's verified token grants (None: authentication is off), which
    decides who may execute them and what their steps may do."""

    def __init__(
        self, patterns: Iterable[Pattern] = (), error: NexusError | None = None, grant: Grant | None = None
    ) -> None:
        self.error = error
        self.grant = grant
        self.by_version: dict[tuple[str, int], Pattern] = {}
        self.latest: dict[str, Pattern] = {}
        for pattern in patterns:
            self.add(pattern, latest=False)

    def add(self, pattern: Pattern, latest: bool) -> None:
        self.by_version[(pattern.id, pattern.version)] = pattern
        if latest:
            self.latest[pattern.id] = pattern

    def get(self, pattern_id: str, version: int | None) -> Pattern:
        if self.error is not None:
            raise self.error
        found = self.latest.get(pattern_id) if version is None else self.by_version.get((pattern_id, version))
        if found is None:
            suffix = "" if version is None else f" version {version}"
            raise NotFound(
                f"pattern {pattern_id!r}{suffix} not found", pattern_id=pattern_id, version=version
            )
        return found


class Executions:
    """The executions of the namespaces this worker owns: starting, advancing, waiting."""

    def __init__(self, policy: AccessPolicy, limits: ExecutionLimits | None = None) -> None:
        self.policy = policy
        self.lookup = PatternLookup()
        self.engine = ExecutionEngine(self._resolve, limits, timer=time.perf_counter)
        #: (namespace, request_id) -> the waiting execution
        self.waiting: dict[tuple[str, str], Execution] = {}

    def _resolve(self, pattern_id: str, version: int | None) -> Pattern:
        return self.lookup.get(pattern_id, version)

    def reset(self) -> None:
        self.waiting.clear()

    def load(self, stored_key: str, state: dict[str, Any]) -> None:
        execution = Execution.from_dict(state)
        self.waiting[(execution.namespace, execution.request_id)] = execution

    def pattern_of(self, namespace: str, request_id: str) -> tuple[str, int] | None:
        """The pinned pattern of a waiting execution (so the actor can fetch it before resuming)."""
        execution = self.waiting.get((namespace, request_id))
        return None if execution is None else (execution.pattern_id, execution.pattern_version)

    def due(self, now: datetime) -> list[tuple[str, str]]:
        return [key for key, ex in self.waiting.items() if (at := ex.wait_until) is not None and at <= now]

    @staticmethod
    def stored_key(namespace: str, request_id: str) -> str:
        return f"{namespace}{SEP}{request_id}"

    def start(self, request: ExecutionRequest, namespace: str, graph: Any, now: datetime) -> Ran | None:
        """None when the same request is already running (its result comes when it finishes)."""
        if (namespace, request.request_id) in self.waiting:
            return None
        pattern = self.lookup.get(request.pattern_id, request.version)
        grant = self.lookup.grant
        (self.policy if grant is None else grant.pattern_policy()).check_execute(request.principal, pattern)
        if grant is not None:  # the steps run with the executor's rights
            grant.require_steps(pattern, namespace, self.lookup.get)
        execution = self.engine.start(
            pattern,
            request.input,
            namespace=namespace,
            request_id=request.request_id,
            principal=request.principal,
            execution_id=str(uuid.uuid5(EXECUTION_NAMESPACE, f"{namespace}/{request.request_id}")),
            now=now,
            timeout_ms=request.timeout_ms,
            step_events=request.step_events,
        )
        return self._advance(execution, graph, now)

    def resume(self, namespace: str, request_id: str, graph: Any, now: datetime) -> Ran | None:
        execution = self.waiting.get((namespace, request_id))
        if execution is None:
            return None  # finished meanwhile: a late or repeated resume
        return self._advance(execution, graph, now)

    def _advance(self, execution: Execution, graph: Any, now: datetime) -> Ran:
        progress: Progress = self.engine.advance(execution, graph, now)
        key = (execution.namespace, execution.request_id)
        events = [self._event(execution, e) for e in progress.events]
        if not progress.done:
            self.waiting[key] = execution
            return Ran(execution, events, state=execution.to_dict(), wait_until=progress.wait_until)
        self.waiting.pop(key, None)
        outcome = progress.outcome
        assert outcome is not None
        error = outcome.error or {}
        return Ran(
            execution,
            events,
            outcome=outcome,
            changes=outcome.changes,
            stats=ExecutionStats(
                pattern_id=outcome.pattern_id,
                version=outcome.pattern_version,
                status=outcome.status,
                duration_ms=outcome.duration_ms,
                error_code=error.get("code"),
                error_message=error.get("message"),
                execution_id=outcome.execution_id,
                step_failures=sum(1 for s in outcome.steps.values() if s.get("status") == "failed"),
                step_retries=sum(max(0, int(s.get("attempts") or 0) - 1) for s in outcome.steps.values()),
                rollback=outcome.rollback.value,
                step_durations=self._step_durations(outcome),
            ),
        )

    def _step_durations(self, outcome: ExecutionOutcome) -> tuple[tuple[str, float], ...]:
        try:
            pattern = self.lookup.get(outcome.pattern_id, outcome.pattern_version)
        except NexusError:
            return ()
        kinds = {step.id: f"{step.type}/{step.action}" for step in pattern.steps}
        return tuple(
            (kinds[step_id], float(report.get("busy_ms") or 0.0) / 1000)
            for step_id, report in outcome.steps.items()
            if step_id in kinds and int(report.get("attempts") or 0) > 0
        )

    @staticmethod
    def _event(execution: Execution, event: ExecutionEvent) -> Event:
        return Event(
            type=event.type,
            namespace=execution.namespace,
            occurred_at=event.occurred_at,
            request_id=execution.request_id,
            principal=execution.principal,
            pattern_id=execution.pattern_id,
            pattern_version=execution.pattern_version,
            execution_id=execution.execution_id,
            relationship=event.relationship,
            error=ErrorBody.model_validate(event.error) if event.error else None,
            data=event.data,
        )
