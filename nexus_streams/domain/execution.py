"""Pattern executions: a deterministic state machine that the namespace actor drives.

`ExecutionEngine.start(...)` validates the input and returns an `Execution`: plain, JSON-safe state
(`to_dict()` / `Execution.from_dict()`), so a waiting execution can be kept in a table and resumed by
another worker. `ExecutionEngine.advance(execution, graph, now)` runs every step that is ready and
returns a `Progress`: either `done` (with an `ExecutionOutcome`) or `wait_until` (call again then).
The engine never reads a clock and never sleeps: time is the `now` the actor passes, so within one
call time does not pass, and everything is reproducible with a fake clock and a fixed `rand`.

    engine = ExecutionEngine(resolve_pattern, ExecutionLimits(), random.random)
    execution = engine.start(pattern, {"source": "user:1", "target": "user:2"}, namespace="default",
                             request_id="x-1", principal="alice", execution_id="e-1", now=now)
    progress = engine.advance(execution, graph, now)
    if progress.done:   # write progress.outcome.changes, publish progress.events, answer the request
        ...
    else:               # store execution.to_dict(); call advance again at progress.wait_until
        ...

Call `advance` between commands (no open unit of work on the graph). Calling it again on a finished
execution returns the same finished `Progress` and touches nothing (re-entrant); calling it before
`wait_until` runs nothing and returns the same `wait_until`.

## Steps and order
Steps run in dependency order (the pattern's plan: levels, document order within a level), one
after another, parameters bound from the input, upstream outputs and the context
(`steps.StepKind.bind`). In one `advance`, a single pass runs every step that is ready, repeated
while something changed.
- Step statuses: `pending`, `running` (a `pattern`/`execute` step whose included execution waits),
  `waiting_retry`, `completed`, `failed`, `skipped`, `compensated`, `rolled_back`.
- `optional: true`: the step may fail (after its retries) without failing the execution; the steps
  that depend on it, directly or not, are `skipped` (they would miss its output). Example: with
  `a` (optional, fails) <- `b` <- `c` and an independent `d`, the result is ok with `a: failed`,
  `b: skipped`, `c: skipped`, `d: completed`.
- Any other failure fails the execution at once: steps not yet run are `skipped`, and a step
  waiting for a retry is `skipped` (its retry is cancelled, its last error kept).

## Transaction
An execution is a transaction on its namespace's graph. Relationship steps do not change the graph:
their writes are staged in the execution (`staged_writes`, as records, in the order made). Each
call replays the staged writes into a unit of work on the graph (`savepoint()`, write, ...), runs
the steps on that view, so queries inside the execution see its own writes (`find_path` through a
relationship it created a step earlier), captures what each step wrote, and rolls the graph back
(`rollback(savepoint)`) before returning. Between calls, and while the execution waits, the graph
shows none of the staged writes: other commands neither see nor depend on them.

The read/write set (`read_write_set`) keeps, for every relationship the execution wrote or whose
record or key a step output (get, find_path, traverse, neighbors; not the entity lists of
detect_cycles/resolve_dependencies), the version it had when the execution first touched it
(`None`: absent). Commit validates it: each relationship must still have that version (or still be
absent), else the execution fails with `concurrent_modification` and nothing is kept. Then the
staged writes that add a relationship are checked again against the graph as it is now (namespace
schema, parent/child cycles: a change made while the execution waited can make them invalid; also
`concurrent_modification`). Only then are the staged writes applied in a unit of work and
`graph.commit()` gives the `Change`s (the outcome's `changes`), which the actor makes durable as
for any command. The check is optimistic and covers touched relationships only: a relationship
that appears meanwhile next to what the execution read (a phantom) is not a conflict.

Outputs follow the transaction: the relationship events of the staged writes and the events of
`event`/`publish` steps are published only for what commits.

## Failure and rollback
The failing step's `on_failure` (else the pattern's) decides what a failed execution keeps:
- `rollback_all` (default): nothing. Completed steps that staged writes or events are reported
  `rolled_back`; completed read/control steps stay `completed` (they had no effect).
- `keep_completed`: the writes and events of the steps that completed (none of them is downstream
  of the failing step, which cannot have run) are committed; the result is still `error`.
  Example: `create_a` <- `create_b` <- `check` (fails): `a` and `b` are committed, `check: failed`.
- `compensate`: the `compensation` of every completed step that declares one runs, in reverse
  order of completion, staged like any step (one attempt, no retry, outside the step limits).
  Those steps become `compensated`; then everything completed plus what the compensations staged
  commits. If a compensation fails, nothing commits (`details.compensation_failed`). The failing
  step's own compensation does not run: its writes were never staged.
Example of `compensate`: `reserve` (creates `user:1 member hold:1`, compensation deletes it) then
`charge` fails: the commit applies the create and the delete (net: no hold), with both events, and
`reserve: compensated`.

If the partial commit of `keep_completed`/`compensate` meets a conflict, nothing commits
(`rollback: all`, `details.conflict`); the error stays the failing step's.

## Retries and time
A step failing with a code its `retry` policy retries (`RetryPolicy.should_retry`) waits
`RetryPolicy.backoff_ms(attempt, rand())` ms: the step is `waiting_retry` with `next_attempt_at`,
and `advance` returns `wait_until` = the earliest `next_attempt_at`. Meanwhile the execution's
independent steps go on; its dependants wait. Example: `max_attempts: 3, initial_backoff_ms: 100,
multiplier: 2, jitter: 0.2` with rand() = 0.5 retries at +100 ms and then +200 ms.
- Per step `timeout_ms`, from the step's first attempt: a retry that would start after it fails
  the step with `timeout` at once (the last error in `details.last_error`); `optional` applies.
- Per execution: deadline = start + `timeout_ms` (else `ExecutionLimits.default_timeout_ms`,
  at most `max_timeout_ms`). A retry that would start at or after the deadline, or a call at or
  after it, fails the execution with `timeout` (also an optional step's: the execution is out of
  time). Compensations still run.
- The engine's own `timeout` and `resource_limit` failures are never retried.

## Resource limits (`ExecutionLimits`), for the whole execution including included patterns
- `max_steps_run`: step attempts (retries, included steps; compensations are counted but exempt);
- `max_vertices_visited`: entities in the results of graph steps (path entities, traversed
  entities, neighbours, cycle entities, resolved order); each search also gets at most the
  remaining budget as its visit limit;
- `max_nesting_depth`: `pattern`/`execute` nesting.
Exceeding one fails the execution with `resource_limit` (`optional` does not help).

## Composite patterns
A `pattern`/`execute` step runs the pinned version of the included pattern (input: its `input`
parameter, else this execution's input, validated against the included pattern's schema) inside the
same transaction: it sees the writes staged so far and stages its own. It is a sub-transaction:
- it completes as a whole (output `{pattern_id, version, steps: {step id: output}}`) or fails as a
  whole, leaving nothing staged (its completed steps are reported `rolled_back`); the included
  pattern's own `on_failure` applies only when it runs on its own; the including step's `retry`,
  `timeout_ms`, `optional` and `on_failure` apply to it like to any step;
- while it is in progress (a step inside waits for a retry), the including execution starts no
  other step, so no step ever sees writes that may still be rolled back;
- its steps appear nested in the report (`steps.<id>.steps`), and a failure inside names the
  path in `error.details.step_path` (`"transfer/charge"`).

## The outcome
`ExecutionOutcome.output()` is the result's `output`: `execution_id`, `pattern_id`, `version`,
`status`, `steps` (each `status`, `attempts`, `output`, `error`, and `steps` for composites),
`duration_ms`, `steps_run`, `vertices_visited`, `rollback`, `changes` (how many committed).
`ExecutionOutcome.error` is `{code, message, details}` with `details.step` (the failing top-level
step), `details.step_path` (when inside an included pattern) and `details.rollback`.

## Events
`Progress.events` are to publish now, in order: `execution_started` (first call); with
`step_events`: `step_completed` / `step_failed` / `step_retried` as they happen (nested steps and
compensations too, `data.step` is the path); on finish the committed relationship events and
`event`/`publish` events in the order staged, then `pattern_executed` or `execution_failed`.
A `publish` step's event carries its `data` parameter, or the execution input when it has none
(so the spec's `user_created` says which user). The actor adds namespace, request and pattern ids.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from nexus_streams.domain import algorithms
from nexus_streams.domain.errors import (
    ErrorCode,
    InternalError,
    NexusError,
    NotFound,
    PathNotFound,
    ResourceLimit,
    ValidationFailed,
)
from nexus_streams.domain.graph import (
    Change,
    DomainEvent,
    Graph,
    Outcome,
    Put,
    Remove,
    _hierarchy_cycle,
    plan_create,
    plan_delete,
    plan_delete_entity,
    plan_update,
)
from nexus_streams.domain.patterns import INCLUDE_STEP, OnFailure, Pattern, Plan, Step, plan
from nexus_streams.domain.relationships import (
    Relationship,
    RelationshipKey,
    RelationType,
    check_endpoints,
    check_id,
)
from nexus_streams.domain.steps import (
    AssertParameters,
    Category,
    CreateParameters,
    DeleteEntityParameters,
    DeleteParameters,
    DetectCyclesParameters,
    ExecuteParameters,
    FailParameters,
    FindPathParameters,
    GetParameters,
    NeighborsParameters,
    Parameters,
    PublishParameters,
    ResolveDependenciesParameters,
    TraverseParameters,
    UpdateParameters,
    step_kind,
)
from nexus_streams.domain.templates import Scope
from nexus_streams.domain.times import iso, parse_time
from nexus_streams.domain.validation import validate_input

_log = logging.getLogger(__name__)
_ROLLBACK_OF = {
    OnFailure.ROLLBACK_ALL: "all",
    OnFailure.KEEP_COMPLETED: "keep_completed",
    OnFailure.COMPENSATE: "compensate",
}

#: (pattern id, version or None for the latest) -> the pattern; None or NotFound when there is none
PatternResolver = Callable[[str, int | None], Pattern | None]
#: a compensation's owner is `<step path>#compensation`
COMPENSATION = "#compensation"


class StepStatus(StrEnum):
    PENDING = "pending"
    #: a `pattern`/`execute` step whose included execution is in progress
    RUNNING = "running"
    WAITING_RETRY = "waiting_retry"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATED = "compensated"
    ROLLED_BACK = "rolled_back"


FINISHED = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.COMPENSATED,
        StepStatus.ROLLED_BACK,
    }
)
_DONE_WELL = frozenset({StepStatus.COMPLETED, StepStatus.COMPENSATED})


class ExecutionStatus(StrEnum):
    #: started, not advanced yet
    PENDING = "pending"
    #: advanced at least once, not finished
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Rollback(StrEnum):
    """What a finished execution kept: `none` = it succeeded and committed everything."""

    NONE = "none"
    ALL = "all"
    KEEP_COMPLETED = "keep_completed"
    COMPENSATE = "compensate"


@dataclass(frozen=True, slots=True)
class ExecutionLimits:
    #: step attempts in one execution (included patterns and retries count)
    max_steps_run: int = 1000
    #: entities in graph step results, summed over the execution
    max_vertices_visited: int = 100_000
    #: `pattern`/`execute` nesting below the executed pattern
    max_nesting_depth: int = 4
    #: entities one search may visit (as the queries' visit limit)
    visit_limit: int = 100_000
    #: relationships one `delete_entity` step may remove
    max_delete_entity: int = 10_000
    #: the execution's timeout when the request gives none
    default_timeout_ms: int = 60_000
    #: a request's `timeout_ms` above this is lowered to it
    max_timeout_ms: int = 3_600_000


# -- JSON helpers ------------------------------------------------------------------------------


def _maybe_when(value: str | None) -> datetime | None:
    return None if value is None else parse_time(value)


def _key_list(key: RelationshipKey) -> list[str]:
    return [key.source, key.type.value, key.target]


def _key_of(value: list[str]) -> RelationshipKey:
    return RelationshipKey(value[0], RelationType(value[1]), value[2])


def _key_dict(key: RelationshipKey) -> dict[str, str]:
    return {"source": key.source, "type": key.type.value, "target": key.target}


def _error(code: ErrorCode | str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": str(code), "message": message, "details": details}


def _error_of(exc: NexusError) -> dict[str, Any]:
    return _error(exc.code, exc.message, **_json_safe(exc.details))


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _top(owner: str) -> str:
    """The top-level step of an owner path (`compose/create` -> `compose`, `a#compensation` -> `a`)."""
    return owner.split("/", 1)[0].split("#", 1)[0]


# -- state -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    """An event to publish; the actor adds namespace, request, principal, pattern and execution."""

    type: str
    occurred_at: datetime
    data: dict[str, Any] | None = None
    relationship: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "occurred_at": iso(self.occurred_at),
            "data": self.data,
            "relationship": self.relationship,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionEvent:
        return cls(
            data["type"],
            parse_time(data["occurred_at"]),
            data.get("data"),
            data.get("relationship"),
            data.get("error"),
        )

    @classmethod
    def of(cls, event: DomainEvent, now: datetime) -> ExecutionEvent:
        rest = {k: v for k, v in event.data.items() if k != "relationship"}
        return cls(event.type, now, rest or None, event.data.get("relationship"))


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """One relationship written by a step (value None: removed); `owner` is the step's path."""

    owner: str
    key: RelationshipKey
    value: Relationship | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "key": _key_list(self.key),
            "relationship": None if self.value is None else self.value.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagedWrite:
        value = data.get("relationship")
        return cls(
            data["owner"], _key_of(data["key"]), None if value is None else Relationship.from_dict(value)
        )


@dataclass(frozen=True, slots=True)
class StagedEvent:
    """An event published only if the step that staged it (`owner`) commits."""

    owner: str
    event: ExecutionEvent


@dataclass(frozen=True, slots=True)
class Touch:
    """The version a relationship had when the execution first touched it (None: absent)."""

    version: int | None
    #: the step path that touched it first
    owner: str


@dataclass(slots=True)
class Counters:
    steps_run: int = 0
    vertices_visited: int = 0


@dataclass(slots=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    #: the last error: {code, message, details}
    error: dict[str, Any] | None = None
    next_attempt_at: datetime | None = None
    first_attempt_at: datetime | None = None
    finished_at: datetime | None = None
    #: why a step was skipped or rolled back
    reason: str | None = None
    #: the included execution of a `pattern`/`execute` step (its latest attempt)
    nested: Execution | None = None
    #: {status, output, error} of its compensation, once run
    compensation: dict[str, Any] | None = None
    #: time spent running its attempts (by the engine's `timer`; 0 without one), not waiting
    busy_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "busy_ms": self.busy_ms,
            "status": self.status.value,
            "attempts": self.attempts,
            "output": self.output,
            "error": self.error,
            "next_attempt_at": iso(self.next_attempt_at),
            "first_attempt_at": iso(self.first_attempt_at),
            "finished_at": iso(self.finished_at),
            "reason": self.reason,
            "nested": None if self.nested is None else self.nested.to_dict(),
            "compensation": self.compensation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepState:
        nested = data.get("nested")
        return cls(
            status=StepStatus(data["status"]),
            attempts=int(data.get("attempts", 0)),
            output=data.get("output"),
            error=data.get("error"),
            next_attempt_at=_maybe_when(data.get("next_attempt_at")),
            first_attempt_at=_maybe_when(data.get("first_attempt_at")),
            finished_at=_maybe_when(data.get("finished_at")),
            reason=data.get("reason"),
            nested=None if nested is None else Execution.from_dict(nested),
            compensation=data.get("compensation"),
            busy_ms=float(data.get("busy_ms", 0.0)),
        )

    def report(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "status": self.status.value,
            "attempts": self.attempts,
            "output": self.output,
            "error": self.error,
        }
        if self.busy_ms:  # measured when the engine has a timer (the worker's has)
            found["busy_ms"] = round(self.busy_ms, 3)
        if self.reason is not None:
            found["reason"] = self.reason
        if self.nested is not None:
            found["pattern_id"] = self.nested.pattern_id
            found["version"] = self.nested.pattern_version
            found["steps"] = self.nested.report()
        if self.compensation is not None:
            found["compensation"] = self.compensation
        return found


@dataclass(slots=True)
class Execution:
    """The state of one execution (or of an included one: `depth` > 0, logs kept by the root)."""

    execution_id: str
    request_id: str
    namespace: str
    principal: str
    pattern_id: str
    #: pinned: the version this execution runs, whatever is stored later
    pattern_version: int
    input: dict[str, Any]
    started_at: datetime
    deadline: datetime
    step_events: bool = False
    depth: int = 0
    status: ExecutionStatus = ExecutionStatus.PENDING
    steps: dict[str, StepState] = field(default_factory=dict)
    #: step ids in the order they completed
    completed_order: list[str] = field(default_factory=list)
    #: the relationship writes staged so far, in order (root only)
    staged_writes: list[StagedWrite] = field(default_factory=list)
    #: relationship events and published events, for commit (root only)
    staged_events: list[StagedEvent] = field(default_factory=list)
    #: the version of each relationship touched, when first touched (root only)
    read_write_set: dict[RelationshipKey, Touch] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    finished_at: datetime | None = None
    #: once finished (root only)
    outcome: ExecutionOutcome | None = None

    @property
    def finished(self) -> bool:
        return self.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)

    @property
    def wait_until(self) -> datetime | None:
        """When a waiting execution has something to do again (None: nothing waits)."""
        for state in self.steps.values():
            if state.status is StepStatus.RUNNING and state.nested is not None:
                return state.nested.wait_until  # nothing else runs meanwhile
        times = [
            s.next_attempt_at
            for s in self.steps.values()
            if s.status is StepStatus.WAITING_RETRY and s.next_attempt_at is not None
        ]
        return min(times) if times else None

    def report(self) -> dict[str, Any]:
        return {step_id: state.report() for step_id, state in self.steps.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "request_id": self.request_id,
            "namespace": self.namespace,
            "principal": self.principal,
            "pattern_id": self.pattern_id,
            "pattern_version": self.pattern_version,
            "input": self.input,
            "started_at": iso(self.started_at),
            "deadline": iso(self.deadline),
            "step_events": self.step_events,
            "depth": self.depth,
            "status": self.status.value,
            "steps": {step_id: state.to_dict() for step_id, state in self.steps.items()},
            "completed_order": list(self.completed_order),
            "staged_writes": [w.to_dict() for w in self.staged_writes],
            "staged_events": [{"owner": e.owner, "event": e.event.to_dict()} for e in self.staged_events],
            "read_write_set": [
                {"key": _key_list(key), "version": t.version, "owner": t.owner}
                for key, t in self.read_write_set.items()
            ],
            "counters": {
                "steps_run": self.counters.steps_run,
                "vertices_visited": self.counters.vertices_visited,
            },
            "finished_at": iso(self.finished_at),
            "outcome": None if self.outcome is None else self.outcome.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Execution:
        counters = data.get("counters") or {}
        outcome = data.get("outcome")
        return cls(
            execution_id=data["execution_id"],
            request_id=data["request_id"],
            namespace=data["namespace"],
            principal=data["principal"],
            pattern_id=data["pattern_id"],
            pattern_version=int(data["pattern_version"]),
            input=dict(data.get("input") or {}),
            started_at=parse_time(data["started_at"]),
            deadline=parse_time(data["deadline"]),
            step_events=bool(data.get("step_events", False)),
            depth=int(data.get("depth", 0)),
            status=ExecutionStatus(data["status"]),
            steps={k: StepState.from_dict(v) for k, v in (data.get("steps") or {}).items()},
            completed_order=list(data.get("completed_order") or []),
            staged_writes=[StagedWrite.from_dict(w) for w in data.get("staged_writes") or []],
            staged_events=[
                StagedEvent(e["owner"], ExecutionEvent.from_dict(e["event"]))
                for e in data.get("staged_events") or []
            ],
            read_write_set={
                _key_of(t["key"]): Touch(t["version"], t["owner"]) for t in data.get("read_write_set") or []
            },
            counters=Counters(int(counters.get("steps_run", 0)), int(counters.get("vertices_visited", 0))),
            finished_at=_maybe_when(data.get("finished_at")),
            outcome=None if outcome is None else ExecutionOutcome.from_dict(outcome),
        )


def _change_dict(change: Change) -> dict[str, Any]:
    return {
        "op": "put" if isinstance(change, Put) else "remove",
        "relationship": change.relationship.to_dict(),
    }


def _change_of(data: Mapping[str, Any]) -> Change:
    rel = Relationship.from_dict(data["relationship"])
    return Put(rel) if data["op"] == "put" else Remove(rel)


@dataclass(slots=True)
class ExecutionOutcome:
    """How an execution finished: the result to answer with, the changes to make durable, the
    events to publish (all of the finishing call's events, in order)."""

    status: Literal["ok", "error"]
    execution_id: str
    pattern_id: str
    pattern_version: int
    #: step id -> {status, attempts, output, error, [reason], [steps], [compensation]}
    steps: dict[str, Any]
    duration_ms: float
    #: {code, message, details: {step, step_path?, rollback, ...}} when status is error
    error: dict[str, Any] | None
    #: committed: the caller makes these durable (the graph's index has them already)
    changes: list[Change]
    events: list[ExecutionEvent]
    rollback: Rollback
    steps_run: int
    vertices_visited: int

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def output(self) -> dict[str, Any]:
        """The result's `output` (given for failed executions too: the step report)."""
        return {
            "execution_id": self.execution_id,
            "pattern_id": self.pattern_id,
            "version": self.pattern_version,
            "status": self.status,
            "steps": self.steps,
            "duration_ms": self.duration_ms,
            "steps_run": self.steps_run,
            "vertices_visited": self.vertices_visited,
            "rollback": self.rollback.value,
            "changes": len(self.changes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.output(),
            "error": self.error,
            "changes": [_change_dict(c) for c in self.changes],
            "events": [e.to_dict() for e in self.events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionOutcome:
        return cls(
            status="ok" if data["status"] == "ok" else "error",
            execution_id=data["execution_id"],
            pattern_id=data["pattern_id"],
            pattern_version=int(data["version"]),
            steps=dict(data["steps"]),
            duration_ms=float(data["duration_ms"]),
            error=data.get("error"),
            changes=[_change_of(c) for c in data.get("changes") or []],
            events=[ExecutionEvent.from_dict(e) for e in data.get("events") or []],
            rollback=Rollback(data["rollback"]),
            steps_run=int(data["steps_run"]),
            vertices_visited=int(data["vertices_visited"]),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """What one `advance` did: finished (`done`, `outcome`) or waiting (`wait_until`).

    `events` are to publish now; when done they are `outcome.events`."""

    done: bool
    wait_until: datetime | None
    outcome: ExecutionOutcome | None
    events: tuple[ExecutionEvent, ...] = ()


# -- the engine --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    pattern: Pattern
    plan: Plan
    steps: Mapping[str, Step]


#: patterns (by id and version) the engine keeps compiled
PATTERN_CACHE_SIZE = 512


class ExecutionEngine:
    """Starts and advances executions; holds no per-execution state (that is in `Execution`)."""

    def __init__(
        self,
        resolve_pattern: PatternResolver,
        limits: ExecutionLimits | None = None,
        rand: Callable[[], float] = random.random,
        timer: Callable[[], float] | None = None,
    ) -> None:
        self._resolve = resolve_pattern
        self.limits = limits or ExecutionLimits()
        self.rand = rand
        #: measures how long step attempts run (e.g. time.perf_counter); outcomes never depend on it
        self.timer = timer
        self._patterns: dict[tuple[str, int], _Compiled] = {}

    def start(
        self,
        pattern: Pattern,
        input: Mapping[str, Any],
        *,
        namespace: str,
        request_id: str,
        principal: str,
        execution_id: str,
        now: datetime,
        timeout_ms: int | None = None,
        step_events: bool = False,
    ) -> Execution:
        """A new execution of `pattern` (its version is pinned). Raises `PatternDeprecated`, or
        `InputInvalid` (validation_error) when the input does not match the input schema."""
        pattern.ensure_executable()
        validate_input(pattern, input)
        cached = self._patterns.get((pattern.id, pattern.version))
        if cached is None or cached.pattern is not pattern:
            self._remember(pattern)
        limit = min(timeout_ms or self.limits.default_timeout_ms, self.limits.max_timeout_ms)
        return Execution(
            execution_id=execution_id,
            request_id=request_id,
            namespace=namespace,
            principal=principal,
            pattern_id=pattern.id,
            pattern_version=pattern.version,
            input=dict(input),
            started_at=now,
            deadline=now + timedelta(milliseconds=limit),
            step_events=step_events,
            steps={step.id: StepState() for step in pattern.steps},
        )

    def advance(self, execution: Execution, graph: Graph, now: datetime) -> Progress:
        """Run what is ready; see the module docstring. `graph` is the execution's namespace with
        no open unit of work; on return it holds exactly the committed state (plus, when done,
        the execution's changes, which `outcome.changes` lists for the durable store)."""
        if execution.outcome is not None:
            outcome = execution.outcome
            return Progress(True, None, outcome, tuple(outcome.events))
        if execution.depth != 0:
            raise ValueError("advance runs top-level executions; included ones run inside them")
        if graph.namespace != execution.namespace:
            raise ValueError(f"execution of namespace {execution.namespace!r} on graph {graph.namespace!r}")
        if graph.savepoint() != 0:
            raise RuntimeError("advance needs a graph with no open unit of work")
        call = _Call(self, execution, graph, now)
        try:
            return call.run()
        finally:
            call.close_view()

    def compiled(self, pattern_id: str, version: int | None) -> _Compiled:
        if version is not None:
            found = self._patterns.get((pattern_id, version))
            if found is not None:
                return found
        pattern = self._resolve(pattern_id, version)
        if pattern is None:
            which = f"version {version} of pattern" if version is not None else "pattern"
            raise NotFound(f"{which} {pattern_id!r} does not exist", pattern_id=pattern_id, version=version)
        return self._remember(pattern)

    def _remember(self, pattern: Pattern) -> _Compiled:
        compiled = _Compiled(pattern, plan(pattern), {step.id: step for step in pattern.steps})
        if len(self._patterns) >= PATTERN_CACHE_SIZE:
            self._patterns.pop(next(iter(self._patterns)))
        self._patterns[(pattern.id, pattern.version)] = compiled
        return compiled


# -- one call of advance -----------------------------------------------------------------------


class _Abort(Exception):
    """Ends executions: the root's (target None) or an included one's whose deadline passed."""

    def __init__(self, error: dict[str, Any], target: Execution | None) -> None:
        super().__init__(error["message"])
        self.error = error
        self.target = target
        #: the failing step at the level being unwound
        self.step: str | None = None
        #: the failing step's path from the level being unwound down
        self.path: list[str] = []


class _StepFailed(Exception):
    """A control step's deliberate failure, with the code it chose."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


class _OverBudget(Exception):
    """A search stopped at the execution's remaining vertex budget."""


class _Conflict(Exception):
    def __init__(self, error: dict[str, Any], owner: str | None) -> None:
        super().__init__(error["message"])
        self.error = error
        self.owner = owner


@dataclass(frozen=True, slots=True)
class _Level:
    kind: Literal["done", "waiting", "failed"]
    step: str | None = None


@dataclass(frozen=True, slots=True)
class _Failure:
    #: the failing top-level step (None: the execution as a whole, e.g. out of time before a step)
    step: str | None
    error: dict[str, Any]


@dataclass(slots=True)
class _Ran:
    output: dict[str, Any]
    events: list[DomainEvent] = field(default_factory=list)
    reads: list[RelationshipKey] = field(default_factory=list)
    vertices: int = 0


@dataclass(frozen=True, slots=True)
class _Visits:
    #: the visit limit of one search
    limit: int
    #: True when it is the execution's remaining budget, smaller than the usual limit
    clamped: bool


class _Call:
    """One `advance`: the view of the graph with the staged writes, and the events so far."""

    def __init__(self, engine: ExecutionEngine, root: Execution, graph: Graph, now: datetime) -> None:
        self.engine = engine
        self.limits = engine.limits
        self.root = root
        self.graph = graph
        self.now = now
        self.events: list[ExecutionEvent] = []
        self.base = graph.savepoint()
        self.replayed = False
        self.staged_keys = {w.key for w in root.staged_writes}
        #: (owner, key) first touched in this call; versions are read once the view is closed
        self.new_touches: dict[RelationshipKey, str] = {}
        #: executions being run, root first
        self.chain: list[Execution] = []

    # -- the view --------------------------------------------------------------------------------

    def view(self) -> Graph:
        if not self.replayed:
            for write in self.root.staged_writes:
                self.graph._write(write.key, write.value)
            self.replayed = True
        return self.graph

    def close_view(self) -> None:
        self.graph.rollback(self.base)
        self.replayed = False

    def drop(self, owned: Callable[[str], bool]) -> None:
        """Forget the writes and events of the owners `owned` selects."""
        root = self.root
        kept = [w for w in root.staged_writes if not owned(w.owner)]
        root.staged_events = [e for e in root.staged_events if not owned(e.owner)]
        if len(kept) != len(root.staged_writes):
            root.staged_writes = kept
            self.close_view()
            self.staged_keys = {w.key for w in kept}

    def owners(self) -> set[str]:
        root = self.root
        return {w.owner for w in root.staged_writes} | {e.owner for e in root.staged_events}

    def settle_touches(self) -> None:
        """Record the live version of what this call touched first (the view must be closed)."""
        for key, owner in self.new_touches.items():
            rel = self.graph.get(key)
            self.root.read_write_set.setdefault(key, Touch(None if rel is None else rel.version, owner))
        self.new_touches.clear()

    # -- the call ------------------------------------------------------------------------------

    def run(self) -> Progress:
        root = self.root
        if root.status is ExecutionStatus.PENDING:
            self.emit("execution_started", {"deadline": iso(root.deadline)})
        try:
            compiled = self.engine.compiled(root.pattern_id, root.pattern_version)
        except NotFound as exc:
            return self.finish(None, _Failure(None, _error_of(exc)))
        try:
            level = self.run_execution(root, compiled, "")
        except _Abort as abort:
            return self.finish(compiled, _Failure(abort.step, self.failed_error(abort.step, abort.error)))
        if level.kind == "waiting":
            self.close_view()
            self.settle_touches()
            return Progress(False, root.wait_until, None, tuple(self.events))
        if level.kind == "failed":
            assert level.step is not None
            error = root.steps[level.step].error
            assert error is not None
            return self.finish(compiled, _Failure(level.step, error))
        return self.finish(compiled, None)

    def failed_error(self, step_id: str | None, fallback: dict[str, Any]) -> dict[str, Any]:
        if step_id is None:
            return fallback
        error = self.root.steps[step_id].error
        return fallback if error is None else error

    def run_execution(self, ex: Execution, compiled: _Compiled, prefix: str) -> _Level:
        self.chain.append(ex)
        try:
            return self.run_steps(ex, compiled, prefix)
        except _Abort as abort:
            self.abandon(ex, compiled, prefix, abort)
            raise
        finally:
            self.chain.pop()

    def run_steps(self, ex: Execution, compiled: _Compiled, prefix: str) -> _Level:
        if ex.status is ExecutionStatus.PENDING:
            ex.status = ExecutionStatus.WAITING
        if self.running_step(ex, compiled) is None and self.now >= ex.deadline:
            abort = self.timeout(ex)
            in_flight = self.in_flight(ex, compiled)
            if in_flight is not None:
                abort.step, abort.path = in_flight, [in_flight]
            raise abort
        while True:
            running = self.running_step(ex, compiled)
            if running is not None:
                with _failing_step(running):
                    self.resume(ex, compiled, running, prefix)
                level = self.verdict(ex, compiled, running, prefix)
                if level is not None:
                    return level
            progressed, level = self.run_pass(ex, compiled, prefix)
            if level is not None:
                return level
            if not progressed:
                break
        if all(state.status in FINISHED for state in ex.steps.values()):
            ex.status = ExecutionStatus.SUCCEEDED
            return _Level("done")
        return _Level("waiting")

    def run_pass(self, ex: Execution, compiled: _Compiled, prefix: str) -> tuple[bool, _Level | None]:
        progressed = False
        for step_id in compiled.plan.order:
            state = ex.steps[step_id]
            step = compiled.steps[step_id]
            readiness = self.readiness(ex, step, state)
            if readiness is None:
                continue
            progressed = True
            if readiness == "skip":
                state.status = StepStatus.SKIPPED
                state.reason = "not run: a step it depends on failed or was skipped"
                continue
            path = prefix + step_id
            with _failing_step(step_id):
                self.attempt(ex, compiled, step, state, path)
            level = self.verdict(ex, compiled, step_id, prefix)
            if level is not None:
                return True, level
        return progressed, None

    def readiness(self, ex: Execution, step: Step, state: StepState) -> Literal["run", "skip"] | None:
        if state.status is StepStatus.PENDING:
            upstream = [ex.steps[d].status for d in step.depends_on]
            if any(s in (StepStatus.FAILED, StepStatus.SKIPPED) for s in upstream):
                return "skip"
            return "run" if all(s is StepStatus.COMPLETED for s in upstream) else None
        if state.status is StepStatus.WAITING_RETRY:
            assert state.next_attempt_at is not None
            return "run" if state.next_attempt_at <= self.now else None
        return None

    def verdict(self, ex: Execution, compiled: _Compiled, step_id: str, prefix: str) -> _Level | None:
        """After a step ran: wait (an included execution is in progress), fail, or go on."""
        state = ex.steps[step_id]
        if state.status is StepStatus.RUNNING:
            return _Level("waiting")
        if state.status is StepStatus.FAILED and not compiled.steps[step_id].optional:
            self.skip_rest(ex, prefix, "not run: the execution failed")
            ex.status = ExecutionStatus.FAILED
            return _Level("failed", step_id)
        return None

    @staticmethod
    def running_step(ex: Execution, compiled: _Compiled) -> str | None:
        for step_id in compiled.plan.order:
            if ex.steps[step_id].status is StepStatus.RUNNING:
                return step_id
        return None

    @staticmethod
    def in_flight(ex: Execution, compiled: _Compiled) -> str | None:
        for step_id in compiled.plan.order:
            if ex.steps[step_id].status in (StepStatus.WAITING_RETRY, StepStatus.RUNNING):
                return step_id
        return None

    def abandon(self, ex: Execution, compiled: _Compiled, prefix: str, abort: _Abort) -> None:
        """`ex` ends with `abort`: mark its failing step, skip the rest."""
        if abort.step is not None:
            state = ex.steps[abort.step]
            relative = "/".join(abort.path[1:])
            state.error = _with_path(abort.error, relative) if relative else abort.error
            state.status = StepStatus.FAILED
            state.next_attempt_at = None
            state.finished_at = self.now
            self.emit_step("step_failed", prefix + abort.step, compiled.steps[abort.step], state)
        self.skip_rest(ex, prefix, "not run: the execution failed")
        ex.status = ExecutionStatus.FAILED

    def skip_rest(self, ex: Execution, prefix: str, reason: str) -> None:
        for step_id, state in ex.steps.items():
            if state.status in FINISHED:
                continue
            if state.status is StepStatus.RUNNING and state.nested is not None:
                self.skip_rest(state.nested, f"{prefix}{step_id}/", reason)
                state.nested.status = ExecutionStatus.FAILED
                self.drop_nested(prefix + step_id, state.nested)
            state.status = StepStatus.SKIPPED
            state.reason = reason if state.attempts == 0 else "retry cancelled: the execution failed"
            state.next_attempt_at = None

    # -- one attempt -----------------------------------------------------------------------------

    def attempt(self, ex: Execution, compiled: _Compiled, step: Step, state: StepState, path: str) -> None:
        if self.now >= ex.deadline:
            raise self.timeout(ex)
        step_deadline = _step_deadline(step, state)
        if step_deadline is not None and self.now > step_deadline:
            message = f"step {path!r} did not finish within its timeout_ms ({step.timeout_ms})"
            self.fail(
                ex, step, state, path, _error(ErrorCode.TIMEOUT, message, last_error=state.error), False
            )
            return
        self.count_step()
        state.attempts += 1
        state.first_attempt_at = state.first_attempt_at or self.now
        state.next_attempt_at = None
        if step.kind == INCLUDE_STEP:
            self.start_nested(ex, compiled, step, state, path)
            return
        timer = self.engine.timer
        started = timer() if timer is not None else 0.0
        try:
            output = self.run_kind(ex, step.type, step.action, step.parameters, state.attempts, path, False)
        except _Abort:
            raise
        except Exception as exc:  # NexusError, a control step's failure, or a bug: the step fails
            if timer is not None:
                state.busy_ms += (timer() - started) * 1000
            self.fail(ex, step, state, path, _problem_of(exc, path, self.root.execution_id))
        else:
            if timer is not None:
                state.busy_ms += (timer() - started) * 1000
            self.complete(ex, step, state, path, output)

    def complete(self, ex: Execution, step: Step, state: StepState, path: str, output: Any) -> None:
        state.status = StepStatus.COMPLETED
        state.output = output
        state.error = None
        state.next_attempt_at = None
        state.finished_at = self.now
        ex.completed_order.append(step.id)
        self.emit_step("step_completed", path, step, state)

    def fail(
        self,
        ex: Execution,
        step: Step,
        state: StepState,
        path: str,
        error: dict[str, Any],
        retry: bool = True,
    ) -> None:
        """The attempt failed: schedule a retry, or fail the step (the caller decides what that does)."""
        if retry and step.retry.should_retry(error["code"], state.attempts):
            backoff = step.retry.backoff_ms(state.attempts, self.engine.rand())
            at = self.now + timedelta(milliseconds=backoff)
            step_deadline = _step_deadline(step, state)
            if step_deadline is not None and at > step_deadline:
                error = _error(
                    ErrorCode.TIMEOUT,
                    f"step {path!r} would retry at {iso(at)}, after its timeout_ms ({step.timeout_ms})",
                    last_error=error,
                )
            elif at >= ex.deadline:
                abort = self.timeout(ex)
                abort.error["details"]["last_error"] = error
                raise abort
            else:
                state.status = StepStatus.WAITING_RETRY
                state.next_attempt_at = at
                state.error = error
                self.emit_step("step_retried", path, step, state, next_attempt_at=iso(at), backoff_ms=backoff)
                return
        state.status = StepStatus.FAILED
        state.error = error
        state.next_attempt_at = None
        state.finished_at = self.now
        self.emit_step("step_failed", path, step, state)

    def timeout(self, ex: Execution) -> _Abort:
        owner = None
        for candidate in self.chain:
            if candidate.deadline == ex.deadline:
                owner = candidate
                break
        if owner is None or owner is self.root:
            total = round((self.root.deadline - self.root.started_at).total_seconds() * 1000)
            message = f"the execution did not finish by its deadline {iso(self.root.deadline)} ({total} ms)"
            return _Abort(_error(ErrorCode.TIMEOUT, message, deadline=iso(self.root.deadline)), None)
        message = f"included pattern {owner.pattern_id!r} did not finish within its step's timeout_ms"
        return _Abort(_error(ErrorCode.TIMEOUT, message, deadline=iso(owner.deadline)), owner)

    def count_step(self) -> None:
        counters = self.root.counters
        if counters.steps_run >= self.limits.max_steps_run:
            message = (
                f"the execution ran {counters.steps_run} steps; the limit is {self.limits.max_steps_run}"
            )
            error = _error(
                ErrorCode.RESOURCE_LIMIT, message, limit=self.limits.max_steps_run, counter="steps_run"
            )
            raise _Abort(error, None)
        counters.steps_run += 1

    def over_budget(self) -> _Abort:
        limit = self.limits.max_vertices_visited
        visited = self.root.counters.vertices_visited
        message = f"the execution's graph steps visited {visited} entities; the limit is {limit}"
        return _Abort(
            _error(
                ErrorCode.RESOURCE_LIMIT, message, limit=limit, visited=visited, counter="vertices_visited"
            ),
            None,
        )

    # -- what a step does ----------------------------------------------------------------------

    def scope(self, ex: Execution) -> Scope:
        outputs = {k: s.output for k, s in ex.steps.items() if s.status in _DONE_WELL}
        context = {
            "namespace": self.root.namespace,
            "principal": self.root.principal,
            "request_id": self.root.request_id,
            "execution_id": self.root.execution_id,
            "pattern_id": ex.pattern_id,
            "pattern_version": ex.pattern_version,
        }
        return Scope(ex.input, outputs, context)

    def run_kind(
        self,
        ex: Execution,
        type_: str,
        action: str,
        parameters: Mapping[str, Any],
        attempt: int,
        owner: str,
        exempt: bool,
    ) -> dict[str, Any]:
        kind = step_kind(type_, action)
        bound = kind.bind(parameters, self.scope(ex))
        if kind.category is Category.EVENT:
            return self.publish(ex, bound, parameters, owner)
        if kind.category is Category.CONTROL:
            return _control(bound, attempt)
        if kind.category is Category.WRITE:
            writer = _WRITERS[kind.key]
            return self.on_graph(owner, lambda g: writer(bound, g, self.now, self.limits), exempt)
        if kind.category is Category.READ:
            return self.read(kind.key, bound, owner, exempt)
        raise ValidationFailed(f"{kind.name} cannot run here (a compensation cannot run a pattern)")

    def publish(
        self, ex: Execution, bound: Parameters, parameters: Mapping[str, Any], owner: str
    ) -> dict[str, Any]:
        assert isinstance(bound, PublishParameters)
        data = dict(bound.data) if "data" in parameters else dict(ex.input)
        event = ExecutionEvent(bound.event_type, self.now, data)
        self.root.staged_events.append(StagedEvent(owner, event))
        return {"event_type": bound.event_type, "data": data}

    def read(self, key: tuple[str, str], bound: Parameters, owner: str, exempt: bool) -> dict[str, Any]:
        reader = _READERS[key]
        if exempt:
            visits = _Visits(self.limits.visit_limit, False)
        else:
            remaining = self.limits.max_vertices_visited - self.root.counters.vertices_visited
            if remaining <= 0:
                raise self.over_budget()
            visits = _Visits(min(self.limits.visit_limit, remaining), remaining < self.limits.visit_limit)
        try:
            return self.on_graph(owner, lambda g: reader(bound, g, visits), exempt)
        except _OverBudget:
            raise self.over_budget() from None

    def on_graph(self, owner: str, run: Callable[[Graph], _Ran], exempt: bool) -> dict[str, Any]:
        """Run on the view; keep what the step wrote and touched once it succeeded."""
        graph = self.view()
        mark = graph.savepoint()
        try:
            ran = run(graph)
            self.root.counters.vertices_visited += ran.vertices
            if not exempt and self.root.counters.vertices_visited > self.limits.max_vertices_visited:
                raise self.over_budget()
        except BaseException:
            graph.rollback(mark)
            raise
        written = _written_since(graph, mark)
        for key in [k for k, _ in written] + ran.reads:
            if key not in self.staged_keys and key not in self.root.read_write_set:
                self.new_touches.setdefault(key, owner)
        for key, value in written:
            self.root.staged_writes.append(StagedWrite(owner, key, value))
            self.staged_keys.add(key)
        for event in ran.events:
            self.root.staged_events.append(StagedEvent(owner, ExecutionEvent.of(event, self.now)))
        return ran.output

    # -- included patterns ---------------------------------------------------------------------

    def start_nested(
        self, ex: Execution, compiled: _Compiled, step: Step, state: StepState, path: str
    ) -> None:
        if ex.depth + 1 > self.limits.max_nesting_depth:
            limit = self.limits.max_nesting_depth
            message = f"patterns nest deeper than {limit} levels at step {path!r}"
            raise _Abort(
                _error(ErrorCode.RESOURCE_LIMIT, message, limit=limit, counter="nesting_depth"), None
            )
        try:
            bound = step_kind(*INCLUDE_STEP).bind(step.parameters, self.scope(ex))
            assert isinstance(bound, ExecuteParameters)
            included = self.engine.compiled(bound.pattern_id, bound.version)
            nested_input = bound.input if bound.input is not None else ex.input
            validate_input(included.pattern, nested_input)
        except NexusError as exc:
            self.fail(ex, step, state, path, _error_of(exc))
            return
        deadline = ex.deadline
        if step.timeout_ms is not None and state.first_attempt_at is not None:
            deadline = min(deadline, state.first_attempt_at + timedelta(milliseconds=step.timeout_ms))
        state.nested = Execution(
            execution_id=self.root.execution_id,
            request_id=self.root.request_id,
            namespace=self.root.namespace,
            principal=self.root.principal,
            pattern_id=included.pattern.id,
            pattern_version=included.pattern.version,
            input=dict(nested_input),
            started_at=self.now,
            deadline=deadline,
            step_events=self.root.step_events,
            depth=ex.depth + 1,
            steps={s.id: StepState() for s in included.pattern.steps},
        )
        state.status = StepStatus.RUNNING
        self.resume(ex, compiled, step.id, path[: len(path) - len(step.id)])

    def resume(self, ex: Execution, compiled: _Compiled, step_id: str, prefix: str) -> None:
        """Go on with the included execution of a running `pattern`/`execute` step."""
        state = ex.steps[step_id]
        step = compiled.steps[step_id]
        nested = state.nested
        assert nested is not None
        path = prefix + step_id
        try:
            inner = self.engine.compiled(nested.pattern_id, nested.pattern_version)
        except NexusError as exc:
            self.drop_nested(path, nested)
            self.fail(ex, step, state, path, _error_of(exc))
            return
        try:
            level = self.run_execution(nested, inner, path + "/")
        except _Abort as abort:
            self.drop_nested(path, nested)
            if abort.target is not nested:
                raise
            relative = "/".join(abort.path)
            self.fail(
                ex, step, state, path, _with_path(abort.error, relative) if relative else abort.error, False
            )
            return
        if level.kind == "failed":
            assert level.step is not None
            self.drop_nested(path, nested)
            self.fail(ex, step, state, path, _nested_error(nested, level.step))
        elif level.kind == "done":
            outputs = {k: s.output for k, s in nested.steps.items() if s.status is StepStatus.COMPLETED}
            output = {"pattern_id": nested.pattern_id, "version": nested.pattern_version, "steps": outputs}
            self.complete(ex, step, state, path, output)

    def drop_nested(self, path: str, nested: Execution) -> None:
        prefix = path + "/"
        owners = {o for o in self.owners() if o.startswith(prefix)}
        self.drop(lambda owner: owner.startswith(prefix))
        _mark_rolled_back(nested, prefix, owners, "its included pattern failed")

    # -- finishing -----------------------------------------------------------------------------

    def finish(self, compiled: _Compiled | None, failure: _Failure | None) -> Progress:
        rollback, error = Rollback.NONE, None
        if failure is not None:
            self.skip_rest(self.root, "", "not run: the execution failed")
            rollback = self.policy(compiled, failure)
            error = _root_error(failure)
        kept = self.keep(compiled, failure, rollback, error)
        if rollback is Rollback.COMPENSATE and kept is not None and not kept:
            rollback = Rollback.ALL  # a compensation failed
        effects = self.owners()
        changes: list[Change] = []
        if kept is None or kept:
            if kept is not None:
                self.drop(_not_in(kept))
            try:
                changes = self.commit()
            except _Conflict as conflict:
                kept, rollback, error = set(), Rollback.ALL, self.conflicted(conflict, failure, error)
        if kept is not None:
            self.drop(_not_in(kept))
            for step_id, state in self.root.steps.items():
                if step_id not in kept and state.status in _DONE_WELL and _has_effects(step_id, effects):
                    _roll_back(state, step_id, effects, "rolled back: the execution committed nothing of it")
        if error is not None:
            error["details"]["rollback"] = rollback.value
        return self.close(error, rollback, changes)

    def policy(self, compiled: _Compiled | None, failure: _Failure) -> Rollback:
        if compiled is None:
            return Rollback.ALL
        pattern = compiled.pattern
        if failure.step is None:
            on_failure = pattern.on_failure
        else:
            on_failure = pattern.on_failure_of(compiled.steps[failure.step])
        return Rollback(_ROLLBACK_OF[on_failure])

    def keep(
        self,
        compiled: _Compiled | None,
        failure: _Failure | None,
        rollback: Rollback,
        error: dict[str, Any] | None,
    ) -> set[str] | None:
        """The top-level steps whose effects commit (None: all; empty: none)."""
        root = self.root
        if failure is None:
            return None
        if rollback is Rollback.ALL or compiled is None:
            return set()
        completed = {k for k in root.completed_order if root.steps[k].status is StepStatus.COMPLETED}
        if rollback is Rollback.KEEP_COMPLETED:
            cut = compiled.plan.downstream.get(failure.step, frozenset()) if failure.step else frozenset()
            return completed - cut
        problem = self.compensate(compiled)
        if problem is not None:
            assert error is not None
            error["details"]["compensation_failed"] = problem
            return set()
        return completed | {k for k, s in root.steps.items() if s.status is StepStatus.COMPENSATED}

    def compensate(self, compiled: _Compiled) -> dict[str, Any] | None:
        """Run the compensations of the completed steps, latest first; the first failure, if any."""
        root = self.root
        for step_id in reversed(root.completed_order):
            state = root.steps[step_id]
            step = compiled.steps[step_id]
            compensation = step.compensation
            if compensation is None or state.status is not StepStatus.COMPLETED:
                continue
            owner = step_id + COMPENSATION
            root.counters.steps_run += 1
            try:
                output = self.run_kind(
                    root, compensation.type, compensation.action, compensation.parameters, 1, owner, True
                )
            except Exception as exc:
                problem = _problem_of(exc, owner, self.root.execution_id)
                state.compensation = {"status": StepStatus.FAILED.value, "output": None, "error": problem}
                self.emit_step("step_failed", owner, step, state, error=problem)
                return {"step": step_id, **problem}
            state.compensation = {"status": StepStatus.COMPLETED.value, "output": output, "error": None}
            state.status = StepStatus.COMPENSATED
            self.emit_step("step_completed", owner, step, state)
        return None

    def commit(self) -> list[Change]:
        """Validate the read/write set, apply the staged writes, close the unit of work."""
        self.close_view()
        self.settle_touches()
        graph = self.graph
        for key, touch in self.root.read_write_set.items():
            rel = graph.get(key)
            version = None if rel is None else rel.version
            if version != touch.version:
                raise _Conflict(_conflict_error(key, touch, version), touch.owner)
        for write in self.root.staged_writes:
            if write.value is not None and not graph.index.has(write.key):
                problem = _recheck(graph, write.key)
                if problem is not None:
                    graph.rollback(self.base)
                    raise _Conflict(problem, write.owner)
            graph._write(write.key, write.value)
        return graph.commit()

    def conflicted(
        self, conflict: _Conflict, failure: _Failure | None, error: dict[str, Any] | None
    ) -> dict[str, Any]:
        if failure is not None and error is not None:
            error["details"]["conflict"] = conflict.error
            return error
        found = conflict.error
        if conflict.owner is not None:
            found["details"]["step"] = _top(conflict.owner)
            if "/" in conflict.owner:
                found["details"]["step_path"] = conflict.owner.removesuffix(COMPENSATION)
        return found

    def close(self, error: dict[str, Any] | None, rollback: Rollback, changes: list[Change]) -> Progress:
        root = self.root
        self.events += [e.event for e in root.staged_events]  # only what commits is left
        duration = round((self.now - root.started_at).total_seconds() * 1000, 3)
        summary: dict[str, Any] = {
            "status": "ok" if error is None else "error",
            "duration_ms": duration,
            "steps_run": root.counters.steps_run,
            "vertices_visited": root.counters.vertices_visited,
            "changes": len(changes),
        }
        if error is None:
            self.emit("pattern_executed", summary)
        else:
            step = error["details"].get("step")
            self.emit("execution_failed", {**summary, "step": step, "rollback": rollback.value}, error)
        outcome = ExecutionOutcome(
            status="ok" if error is None else "error",
            execution_id=root.execution_id,
            pattern_id=root.pattern_id,
            pattern_version=root.pattern_version,
            steps=root.report(),
            duration_ms=duration,
            error=error,
            changes=changes,
            events=list(self.events),
            rollback=rollback,
            steps_run=root.counters.steps_run,
            vertices_visited=root.counters.vertices_visited,
        )
        root.status = ExecutionStatus.SUCCEEDED if error is None else ExecutionStatus.FAILED
        root.finished_at = self.now
        root.outcome = outcome
        root.staged_writes.clear()
        root.staged_events.clear()
        root.read_write_set.clear()
        return Progress(True, None, outcome, tuple(outcome.events))

    # -- events --------------------------------------------------------------------------------

    def emit(self, type_: str, data: dict[str, Any] | None, error: dict[str, Any] | None = None) -> None:
        self.events.append(ExecutionEvent(type_, self.now, data, None, error))

    def emit_step(
        self,
        type_: str,
        path: str,
        step: Step,
        state: StepState,
        error: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        if not self.root.step_events:
            return
        data = {"step": path, "type": step.type, "action": step.action, "attempt": state.attempts, **extra}
        if type_ == "step_failed":
            data["optional"] = step.optional
        if type_ != "step_completed":
            error = error or state.error
        self.emit(type_, data, error)


# -- helpers -----------------------------------------------------------------------------------


@contextmanager
def _failing_step(step_id: str) -> Iterator[None]:
    """An abort out of the block names `step_id` as the failing step at this level."""
    try:
        yield
    except _Abort as abort:
        abort.step = step_id
        abort.path.insert(0, step_id)
        raise


def _not_in(kept: set[str]) -> Callable[[str], bool]:
    return lambda owner: _top(owner) not in kept


def _written_since(graph: Graph, mark: int) -> list[tuple[RelationshipKey, Relationship | None]]:
    """What the unit of work wrote after `mark`: each key once, first-written first, final value.

    Reads the graph's undo log (Graph has no public accessor for it yet)."""
    keys = dict.fromkeys(entry[0] for entry in graph._undo[mark:])
    return [(key, graph._pending[key]) for key in keys]


def _problem_of(exc: Exception, path: str, execution_id: str) -> dict[str, Any]:
    if isinstance(exc, _StepFailed):
        return exc.error
    if isinstance(exc, NexusError):
        return _error_of(exc)
    _log.exception("step %s of execution %s failed", path, execution_id)
    return _error_of(InternalError.of(exc))


def _step_deadline(step: Step, state: StepState) -> datetime | None:
    if step.timeout_ms is None or state.first_attempt_at is None:
        return None
    return state.first_attempt_at + timedelta(milliseconds=step.timeout_ms)


def _with_path(error: dict[str, Any], relative: str) -> dict[str, Any]:
    return {**error, "details": {**error.get("details", {}), "step_path": relative}}


def _nested_error(nested: Execution, step_id: str) -> dict[str, Any]:
    """The error of a `pattern`/`execute` step whose included execution failed at `step_id`."""
    inner = nested.steps[step_id].error
    assert inner is not None
    below = inner.get("details", {}).get("step_path")
    relative = f"{step_id}/{below}" if below else step_id
    details = {**inner.get("details", {}), "pattern_id": nested.pattern_id, "version": nested.pattern_version}
    return {**inner, "details": {**details, "step_path": relative}}


def _root_error(failure: _Failure) -> dict[str, Any]:
    details = dict(failure.error.get("details", {}))
    if failure.step is not None:
        details["step"] = failure.step
        below = details.get("step_path")
        if below:
            details["step_path"] = f"{failure.step}/{below}"
    return {"code": failure.error["code"], "message": failure.error["message"], "details": details}


def _conflict_error(key: RelationshipKey, touch: Touch, version: int | None) -> dict[str, Any]:
    def said(v: int | None) -> str:
        return "absent" if v is None else f"at version {v}"

    return _error(
        ErrorCode.CONCURRENT_MODIFICATION,
        f"{key.source} {key.type.value} {key.target} changed while the execution ran: it was "
        f"{said(touch.version)}, now it is {said(version)}; run the execution again",
        relationship=_key_dict(key),
        expected_version=touch.version,
        actual_version=version,
    )


def _recheck(graph: Graph, key: RelationshipKey) -> dict[str, Any] | None:
    """A relationship the execution adds, against the graph as it is at commit."""
    if graph.schema is not None:
        problem = graph.schema.violation(key.source, key.type, key.target)
        if problem is not None:
            return _error(
                ErrorCode.CONCURRENT_MODIFICATION,
                f"the namespace schema changed while the execution ran: {problem}",
                relationship=_key_dict(key),
                reason="schema",
            )
    if key.type is RelationType.PARENT:
        cycle = _hierarchy_cycle(graph, key.source, key.target)
        if cycle is not None:
            return _error(
                ErrorCode.CONCURRENT_MODIFICATION,
                f"{key.source} parent {key.target} would now close a cycle in the hierarchy "
                "(changed while the execution ran): " + " -> ".join(cycle),
                relationship=_key_dict(key),
                reason="cycle",
                cycle=cycle,
            )
    return None


def _has_effects(path: str, owners: Iterable[str]) -> bool:
    return any(o == path or o.startswith((path + "/", path + "#")) for o in owners)


def _roll_back(state: StepState, path: str, owners: set[str], reason: str) -> None:
    state.status = StepStatus.ROLLED_BACK
    state.reason = reason
    if state.nested is not None:
        _mark_rolled_back(state.nested, path + "/", owners, reason)


def _mark_rolled_back(ex: Execution, prefix: str, owners: set[str], reason: str) -> None:
    for step_id, state in ex.steps.items():
        path = prefix + step_id
        if state.status in _DONE_WELL and _has_effects(path, owners):
            _roll_back(state, path, owners, reason)


def _control(bound: Parameters, attempt: int) -> dict[str, Any]:
    if isinstance(bound, AssertParameters):
        if bound.holds():
            return {"value": bound.value}
        message = bound.message or (
            f"assertion failed: {bound.value!r} does not meet {bound.condition.value}"
            + ("" if bound.expected is None else f" {bound.expected!r}")
        )
        raise _StepFailed(
            _error(
                bound.code,
                message,
                **_json_safe(
                    {"value": bound.value, "condition": bound.condition.value, "expected": bound.expected}
                ),
            )
        )
    assert isinstance(bound, FailParameters)
    if bound.times is not None and attempt > bound.times:
        return {"attempt": attempt}
    raise _StepFailed(_error(bound.code, bound.message, attempt=attempt))


def _ran(outcome: Outcome) -> _Ran:
    return _Ran(outcome.output, list(outcome.events))


def _create(bound: Parameters, graph: Graph, now: datetime, limits: ExecutionLimits) -> _Ran:
    assert isinstance(bound, CreateParameters)
    return _ran(
        plan_create(graph, bound.source, bound.type, bound.target, bound.metadata, now, bound.expires_at)
    )


def _update(bound: Parameters, graph: Graph, now: datetime, limits: ExecutionLimits) -> _Ran:
    assert isinstance(bound, UpdateParameters)
    return _ran(
        plan_update(
            graph,
            bound.source,
            bound.type,
            bound.target,
            bound.metadata,
            now,
            bound.expected_version,
            bound.expires_at,
        )
    )


def _delete(bound: Parameters, graph: Graph, now: datetime, limits: ExecutionLimits) -> _Ran:
    assert isinstance(bound, DeleteParameters)
    return _ran(plan_delete(graph, bound.source, bound.type, bound.target))


def _delete_entity(bound: Parameters, graph: Graph, now: datetime, limits: ExecutionLimits) -> _Ran:
    assert isinstance(bound, DeleteEntityParameters)
    return _ran(plan_delete_entity(graph, bound.entity, limits.max_delete_entity))


_WRITERS: Mapping[tuple[str, str], Callable[[Parameters, Graph, datetime, ExecutionLimits], _Ran]] = {
    ("relationship", "create"): _create,
    ("relationship", "update"): _update,
    ("relationship", "delete"): _delete,
    ("relationship", "delete_entity"): _delete_entity,
}


def _record(graph: Graph, key: RelationshipKey) -> dict[str, Any]:
    rel = graph.get(key)
    return rel.to_dict() if rel is not None else _key_dict(key)


def _get(bound: Parameters, graph: Graph, visits: _Visits) -> _Ran:
    assert isinstance(bound, GetParameters)
    rel = graph.require(bound.source, bound.type, bound.target)
    return _Ran({"relationship": rel.to_dict()}, reads=[rel.key])


def _find_path(bound: Parameters, graph: Graph, visits: _Visits) -> _Ran:
    assert isinstance(bound, FindPathParameters)
    check_endpoints(bound.source, bound.target)
    try:
        path = algorithms.find_path(
            graph.index,
            bound.source,
            bound.target,
            max_depth=bound.max_depth,
            direction=bound.direction,
            types=bound.types,
            visit_limit=visits.limit,
        )
    except ResourceLimit:
        if visits.clamped:
            raise _OverBudget from None
        raise
    if path is None:
        raise PathNotFound(
            f"no path from {bound.source} to {bound.target} within {bound.max_depth} relationships",
            source=bound.source,
            target=bound.target,
            max_depth=bound.max_depth,
        )
    output = {
        "found": True,
        "length": len(path.relationships),
        "path": path.entities,
        "relationships": [_record(graph, key) for key in path.relationships],
    }
    return _Ran(output, reads=list(path.relationships), vertices=len(path.entities))


def _traverse(bound: Parameters, graph: Graph, visits: _Visits) -> _Ran:
    assert isinstance(bound, TraverseParameters)
    check_id(bound.start, "start")
    limit = min(bound.limit, visits.limit)
    try:
        walk = algorithms.traverse(
            graph.index,
            bound.start,
            max_depth=bound.max_depth,
            direction=bound.direction,
            types=bound.types,
            limit=limit,
        )
    except ResourceLimit:
        if limit < bound.limit:
            raise _OverBudget from None
        raise
    output = {
        "start": bound.start,
        "count": len(walk.entities),
        "entities": [{"id": e, "depth": d} for e, d in walk.entities],
        "relationships": [_key_dict(k) for k in walk.relationships],
    }
    return _Ran(output, reads=list(walk.relationships), vertices=len(walk.entities))


def _neighbors(bound: Parameters, graph: Graph, visits: _Visits) -> _Ran:
    assert isinstance(bound, NeighborsParameters)
    check_id(bound.entity, "entity")
    found = graph.index.neighbors(bound.entity, bound.direction, bound.types)
    if len(found) > bound.limit:
        raise ResourceLimit(
            f"{bound.entity} has {len(found)} matching relationships; the limit is {bound.limit}: "
            "narrow `types`/`direction` or raise `limit`",
            count=len(found),
            limit=bound.limit,
        )
    output = {
        "entity": bound.entity,
        "count": len(found),
        "neighbors": [{"entity": other, "relationship": _record(graph, key)} for other, key in found],
    }
    return _Ran(output, reads=[key for _, key in found], vertices=len(found))


def _detect_cycles(bound: Parameters, graph: Graph, visits: _Visits) -> _Ran:
    assert isinstance(bound, DetectCyclesParameters)
    if bound.entity is None:
        raise ValidationFailed(
            "detect_cycles in a pattern needs `entity`: the whole namespace is analysed on a snapshot "
            "by the detect_cycles query, not inside an execution",
            field="entity",
        )
    check_id(bound.entity, "entity")
    try:
        cycles = algorithms.detect_cycles_from(
            graph.index,
            bound.entity,
            types=bound.types,
            max_cycles=bound.max_cycles,
            visit_limit=visits.limit,
        )
    except ResourceLimit:
        if visits.clamped:
            raise _OverBudget from None
        raise
    output = {"scope": "entity", "entity": bound.entity, "count": len(cycles), "cycles": cycles}
    return _Ran(output, vertices=len({e for cycle in cycles for e in cycle}))


def _resolve_dependencies(bound: Parameters, graph: Graph, visits: _Visits) -> _Ran:
    assert isinstance(bound, ResolveDependenciesParameters)
    check_id(bound.entity, "entity")
    try:
        order = algorithms.resolve_dependencies(
            graph.index, bound.entity, types=bound.types, visit_limit=visits.limit
        )
    except ResourceLimit:
        if visits.clamped:
            raise _OverBudget from None
        raise
    return _Ran({"entity": bound.entity, "count": len(order), "order": order}, vertices=len(order))


_READERS: Mapping[tuple[str, str], Callable[[Parameters, Graph, _Visits], _Ran]] = {
    ("graph", "get"): _get,
    ("graph", "find_path"): _find_path,
    ("graph", "traverse"): _traverse,
    ("graph", "neighbors"): _neighbors,
    ("graph", "detect_cycles"): _detect_cycles,
    ("graph", "resolve_dependencies"): _resolve_dependencies,
}


__all__ = [
    "COMPENSATION",
    "Counters",
    "Execution",
    "ExecutionEngine",
    "ExecutionEvent",
    "ExecutionLimits",
    "ExecutionOutcome",
    "ExecutionStatus",
    "PatternResolver",
    "Progress",
    "Rollback",
    "StagedEvent",
    "StagedWrite",
    "StepState",
    "StepStatus",
    "Touch",
]
