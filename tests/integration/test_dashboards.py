"""Proof that every Grafana panel and every alert rule shows data.

Debian's `prometheus` (installed by scripts/prometheus.sh when missing) runs on 127.0.0.1 with the
repository's prometheus.yml (scrape target and rule paths pointed at this run, 1 s intervals) and
scrapes a real worker of its own (own topics, Redis prefix, metrics port). The worker gets traffic
of every kind, failures included, in two rounds: the first creates every series, the second
makes every counter and histogram move between two scrapes, so rates and quantiles have values.

Then every target `expr` of every panel in grafana/dashboards/*.json and every alert `expr` in
prometheus/rules/*.yml is read from those files (never copied here) and evaluated through
/api/v1/query: each must return at least one sample, and at least one finite one.

- Grafana's `$__rate_interval` (and `$__interval`, `$__range`) are replaced by `RANGES`, as
  Grafana would for a 1 s scrape interval and a short time range.
- Alert expressions are `<query> <comparison> <threshold>` (the convention of the rules file):
  the comparison filters everything out while healthy, so `<query>` is what is evaluated.

`promtool check rules` and `promtool test rules` (the alerts' own unit tests) must pass too.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    LOG_DIR,
    REPO,
    WorkerProcess,
    create_topics,
    free_port,
    wait_until_answering,
    worker_env,
)
from tests.integration.wire import Wire

DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO / "prometheus" / "tests").glob("*.test.yml"))
PROMETHEUS_SH = REPO / "scripts" / "prometheus.sh"
RANGES = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "5m"}
ALERT_EXPR = re.compile(r"^(?P<query>.+?)\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$", re.S)
SECRET = "metadata-sentinel-7f3a"
#: the first run on a fresh machine installs Prometheus with apt inside the module's fixture
pytestmark = pytest.mark.timeout(900)
#: deadlines (seconds)
READY_S, SCRAPE_S, PANELS_S = 60.0, 60.0, 90.0


def panel_queries() -> list[tuple[str, str]]:
    """(dashboard / panel / refId, expr) of every target of every panel, rows' panels included."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        panels = [p for panel in board["panels"] for p in [panel, *panel.get("panels", [])]]
        for panel in panels:
            for t in panel.get("targets", []):
                found.append((f"{board['title']} / {panel['title']} / {t['refId']}", grafana_expr(t["expr"])))
    return found


def grafana_expr(expr: str) -> str:
    for variable, value in RANGES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}: add it to RANGES"
    return expr


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def alert_queries() -> list[tuple[str, str]]:
    found = []
    for rule in alert_rules():
        match = ALERT_EXPR.match(rule["expr"].strip())
        assert match, f"{rule['alert']}: expr is not `<query> <comparison> <threshold>`: {rule['expr']!r}"
        found.append((rule["alert"], match["query"]))
    return found


# -- Prometheus ------------------------------------------------------------------------------------


def ensure_prometheus() -> None:
    """The project's script installs Debian's package when missing; failing that, the test fails."""
    done = subprocess.run(
        ["bash", str(PROMETHEUS_SH), "install"], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0 or not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.fail(f"Prometheus could not be installed by {PROMETHEUS_SH}:\n{done.stdout}\n{done.stderr}")


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:  # noqa: S310
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await asyncio.to_thread(self._get, "/api/v1/query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return data["result"]

    async def rules(self) -> list[dict[str, Any]]:
        data = await asyncio.to_thread(self._get, "/api/v1/rules")
        return [rule for group in data["groups"] for rule in group["rules"]]

    async def value(self, expr: str) -> float:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan

    async def wait_ready(self) -> None:
        deadline = asyncio.get_running_loop().time() + READY_S
        while True:
            assert self.proc.poll() is None, f"prometheus exited; see {self.log_path}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            assert asyncio.get_running_loop().time() < deadline, f"prometheus not ready; see {self.log_path}"
            await asyncio.sleep(0.2)

    async def wait_for(self, expr: str, minimum: float, what: str) -> None:
        """Until `expr` (one sample) is at least `minimum`: a scrape has seen it."""
        deadline = asyncio.get_running_loop().time() + SCRAPE_S
        while (value := await self.value(expr)) < minimum or math.isnan(value):
            assert asyncio.get_running_loop().time() < deadline, (
                f"{what}: {expr} = {value}, expected >= {minimum} within {SCRAPE_S}s; see {self.log_path}"
            )
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def prometheus_config(metrics_port: int) -> dict[str, Any]:
    """The repository's prometheus.yml, pointed at this run's worker and rule files."""
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(path) for path in RULE_FILES]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    return config


# -- the worker and its traffic ----------------------------------------------------------------


def worker_metrics(port: str) -> dict[str, float]:
    """Sums by metric sample name of the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


@dataclass
class Observed:
    prometheus: Prometheus
    worker: WorkerProcess
    wire: Wire
    namespace: str
    failed_request_ids: dict[str, str]


async def traffic(
    wire: Wire, redis_url: str, env: dict[str, str], run_id: str, namespace: str, round_: int
) -> dict[str, str]:
    """Requests of every kind, failures included; returns {request_id: error code} of failures."""
    failed: dict[str, str] = {}
    n = round_

    async def request(topic: str, key: str, payload: dict[str, Any], expect: str = "ok") -> dict[str, Any]:
        result = await wire.request(topic, key, payload)
        assert result["status"] == "ok" if expect == "ok" else result["error"]["code"] == expect, result
        if expect != "ok":
            failed[result["request_id"]] = expect
        return result

    def create(type_: str, source: str, target: str, **fields: Any) -> dict[str, Any]:
        return {"action": "create", "type": type_, "source": source, "target": target, **fields}

    # a standing query the first create matches (the standing-query panel)
    await request(
        "queries",
        namespace,
        {
            "action": "subscribe",
            "subscription_id": f"panel-{n}",
            "query": {"action": "neighbors", "entity": f"user:{n}", "count_over": 0},
        },
    )
    # relationships: ok, batch, update, delete, and refused ones
    await request("relationships", namespace, create("member", f"user:{n}", f"group:{n}"))
    await request(
        "relationships",
        namespace,
        create("owner", f"user:{n}", f"wallet:{n}", metadata={"wallet_type": SECRET}),
    )
    await request(
        "relationships",
        namespace,
        {
            "action": "batch",
            "commands": [
                create("linked", f"user:{n}", f"user:{n}b"),
                create("parent", f"org:{n}", f"team:{n}"),
                create("member", f"user:{n}b", f"group:{n}"),
                create("member", f"user:{n}c", f"group:{n}c"),
            ],
        },
    )
    await request(
        "relationships",
        namespace,
        {"action": "update", "type": "owner", "source": f"user:{n}", "target": f"wallet:{n}", "metadata": {}},
    )
    await request(
        "relationships",
        namespace,
        {"action": "delete", "type": "member", "source": f"user:{n}c", "target": f"group:{n}c"},
    )
    await request(
        "relationships", namespace, create("member", f"user:{n}", f"group:{n}"), "duplicate_relationship"
    )
    await request(
        "relationships",
        namespace,
        {"action": "create", "type": "member", "source": "user:x"},
        "validation_error",
    )
    await request("relationships", namespace, {"action": "explode"}, "unknown_action")
    # garbage and a command without a request_id: dead letters
    await wire.send("relationships", namespace, b"\x00 not json")
    await wire.send("queries", namespace, b"{")
    await wire.send("relationships", namespace, {"principal": "tests", "action": "create"})

    # queries, the deferred analysis ones included (the second round reuses the snapshot)
    await request(
        "queries",
        namespace,
        {"action": "get", "type": "member", "source": f"user:{n}", "target": f"group:{n}"},
    )
    await request(
        "queries",
        namespace,
        {"action": "get", "type": "owner", "source": "nobody:1", "target": "nothing:1"},
        "not_found",
    )
    await request("queries", namespace, {"action": "neighbors", "entity": f"user:{n}"})
    await request(
        "queries", namespace, {"action": "find_path", "source": f"user:{n}", "target": f"user:{n}b"}
    )
    await request("queries", namespace, {"action": "traverse", "start": f"user:{n}", "max_depth": 2})
    await request("queries", namespace, {"action": "stats"})
    await request(
        "queries", namespace, {"action": "analyze", "top": 3, **({"max_age_ms": 0} if n == 1 else {})}
    )
    await request("queries", namespace, {"action": "detect_cycles"})

    # patterns: a retried step (fails once, then succeeds) and an invalid pattern
    flaky = f"flaky_{run_id}"
    await request(
        "patterns",
        flaky,
        {
            "principal": "alice",
            "action": "store",
            "pattern": {
                "id": flaky,
                "name": "Flaky",
                "description": "fails once, then succeeds",
                "steps": [
                    {
                        "type": "control",
                        "action": "fail",
                        "parameters": {"code": "timeout", "message": "slow", "times": 1},
                        "retry": {"max_attempts": 3, "initial_backoff_ms": 200, "jitter": 0},
                    },
                    {
                        "type": "relationship",
                        "action": "create",
                        "parameters": {"type": "member"},
                        "depends_on": ["fail"],
                    },
                ],
            },
        },
    )
    await request(
        "patterns",
        "bad",
        {"principal": "alice", "action": "store", "pattern": {"id": "bad", "steps": "none"}},
        "validation_error",
    )

    # executions: ok, failed with a rollback, retried, and the pattern store failing
    await request(
        "executions",
        namespace,
        {"pattern_id": "user_onboarding", "input": {"source": f"new:{n}", "target": f"w:{n}"}},
    )
    await request(
        "executions",
        namespace,
        {"pattern_id": "financial_transaction", "input": {"source": f"user:{n}", "target": "island:1"}},
        "path_not_found",
    )
    retried = await request(
        "executions",
        namespace,
        {"pattern_id": flaky, "input": {"source": f"user:r{n}", "target": f"group:r{n}"}},
    )
    assert retried["output"]["steps"]["fail"]["attempts"] == 2, retried
    # a pattern key of the wrong type: Redis answers WRONGTYPE, the execution store_unavailable
    broken = f"broken_{run_id}"
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{env['NEXUS_REDIS_KEY_PREFIX']}pattern:{broken}", "not a hash")
    finally:
        await client.aclose()
    await request("executions", namespace, {"pattern_id": broken}, "store_unavailable")
    await wire.wait_for("deadletter", lambda r: True, count=3 * round_)
    return failed


@pytest.fixture(scope="module")
async def observed(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Observed]:
    ensure_prometheus()
    run_id = f"dash{uuid.uuid4().hex[:8]}"
    env = {**worker_env(kafka_bootstrap, redis_url, run_id), "NEXUS_LOG_JSON": "true"}
    await create_topics(kafka_bootstrap, env)
    worker = WorkerProcess(env, f"worker-{run_id}")
    worker.start()

    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(int(env["NEXUS_METRICS_PORT"]))))
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"prometheus-{run_id}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["bash", str(PROMETHEUS_SH), "run", str(config), str(port), str(workdir / "data")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(proc, f"http://127.0.0.1:{port}", log_path)
    wire = Wire(kafka_bootstrap, env["NEXUS_TOPIC_PREFIX"])
    try:
        await prometheus.wait_ready()
        await wire.start()
        await wait_until_answering(wire, worker)
        await prometheus.wait_for('up{job="nexus-streams"}', 1, "worker scraped")
        namespace = f"ns-{run_id}"
        failed: dict[str, str] = {}
        for round_ in (1, 2):
            failed |= await traffic(wire, redis_url, env, run_id, namespace, round_)
            # every published result is counted right after it is published: wait for the worker,
            # then for a scrape that saw it
            answered = len(wire.records["results"])
            deadline = asyncio.get_running_loop().time() + SCRAPE_S
            while (
                counted := worker_metrics(env["NEXUS_METRICS_PORT"]).get("nexus_requests_total", 0)
            ) < answered:
                assert asyncio.get_running_loop().time() < deadline, f"worker counted {counted} of {answered}"
                await asyncio.sleep(0.2)
            await prometheus.wait_for("sum(nexus_requests_total)", counted, f"round {round_} scraped")
        yield Observed(prometheus, worker, wire, namespace, failed)
    finally:
        await wire.stop()
        worker.stop()
        worker.remove_data()
        prometheus.stop()


# -- the proof ---------------------------------------------------------------------------------


def describe(results: dict[str, list[dict[str, Any]]], names: list[str]) -> str:
    return "\n".join(f"  {name}: {results.get(name)}" for name in names)


async def evaluate_until_shown(prometheus: Prometheus, queries: list[tuple[str, str]]) -> None:
    """Every query returns a sample, at least one finite; re-evaluated until the deadline (series
    refreshed by a timer, a scrape not taken yet), then the ones without data are reported."""
    deadline = asyncio.get_running_loop().time() + PANELS_S
    while True:
        results = {name: await prometheus.query(expr) for name, expr in queries}
        blank = [
            name
            for name, result in results.items()
            if not any(math.isfinite(float(sample["value"][1])) for sample in result)
        ]
        if not blank:
            return
        if asyncio.get_running_loop().time() > deadline:
            exprs = dict(queries)
            raise AssertionError(
                f"{len(blank)} of {len(queries)} queries show no data:\n"
                + "\n".join(f"  {name}\n    {exprs[name]}\n    -> {results[name]}" for name in blank)
            )
        await asyncio.sleep(1)


async def test_dashboards__every_panel_query_returns_data(observed: Observed) -> None:
    queries = panel_queries()
    assert len(DASHBOARDS) >= 2 and len(queries) >= 20, (DASHBOARDS, len(queries))
    await evaluate_until_shown(observed.prometheus, queries)


async def test_alerts__every_rule_query_returns_data_and_every_rule_is_healthy(observed: Observed) -> None:
    queries = alert_queries()
    assert {
        "NexusServerErrors",
        "NexusConsumerLagGrowing",
        "NexusDeadletters",
        "NexusExecutionFailureRate",
    } <= {name for name, _ in queries}
    await evaluate_until_shown(observed.prometheus, queries)
    # the rules Prometheus loaded are those of the files, and each evaluates without error
    deadline = asyncio.get_running_loop().time() + SCRAPE_S
    while True:
        loaded = {rule["name"]: rule for rule in await observed.prometheus.rules()}
        if set(loaded) >= {name for name, _ in queries} and all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in loaded.values()
        ):
            break
        assert asyncio.get_running_loop().time() < deadline, f"rules not loaded or unhealthy: {loaded}"
        await asyncio.sleep(0.5)
    assert {name for name, _ in queries} == set(loaded)


async def test_failures__are_counted_not_only_exported(observed: Observed) -> None:
    """The panels of failures show real failures of the traffic, not only zero series."""
    p = observed.prometheus
    assert await p.value("sum(nexus_deadletters_total)") >= 6
    assert await p.value('sum(nexus_errors_total{code="store_unavailable"})') >= 2
    assert await p.value('sum(nexus_errors_total{code="validation_error"})') >= 4
    assert await p.value('sum(nexus_pattern_executions_total{status="error"})') >= 2
    assert await p.value("sum(nexus_pattern_step_retries_total)") >= 2
    assert await p.value("sum(nexus_pattern_rollbacks_total)") >= 2
    assert await p.value('sum(nexus_redis_errors_total{operation="get", error="response"})') >= 2
    assert await p.value('sum(nexus_requests_total{topic="queries", action="analyze", status="ok"})') >= 2
    # the graph gauges are refreshed by the maintenance timer (at most every 5 s)
    await p.wait_for(f'sum(nexus_graph_relationships{{namespace="{observed.namespace}"}})', 8, "graph size")


def test_promtool__rules_check_and_unit_tests_pass() -> None:
    ensure_prometheus()
    check = subprocess.run(
        ["promtool", "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr
    assert RULE_TESTS
    tested = subprocess.run(
        ["promtool", "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


async def test_logs__one_json_line_per_failure_and_no_metadata(observed: Observed) -> None:
    """The worker runs with NEXUS_LOG_JSON=true: each failed request has one JSON line with its
    request_id, namespace and code; relationship metadata appears nowhere."""
    deadline = asyncio.get_running_loop().time() + SCRAPE_S
    while True:
        lines = []
        for line in observed.worker.log_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        by_request: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            if line.get("message", "").startswith("request failed"):
                by_request.setdefault(line.get("request_id"), []).append(line)
        if set(by_request) >= set(observed.failed_request_ids):
            break
        assert asyncio.get_running_loop().time() < deadline, (
            f"no failure line for {set(observed.failed_request_ids) - set(by_request)}"
        )
        await asyncio.sleep(0.5)
    for request_id, code in observed.failed_request_ids.items():
        (line,) = by_request[request_id]
        assert line["code"] == code
        assert {"ts", "level", "logger", "topic"} <= set(line)
        if line["topic"] != "patterns":
            assert line["namespace"] == observed.namespace
    store_failures = [line for line in lines if line.get("code") == "store_unavailable"]
    assert store_failures and all(line["level"] == "WARNING" and line["pattern"] for line in store_failures)
    assert SECRET not in observed.worker.log_text()


async def test_cli_stats__prints_graph_and_pattern_statistics(observed: Observed) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus_streams",
            "stats",
            *args,
            env=observed.worker.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("--namespace", observed.namespace)
    assert code == 0, err
    assert "relationships" in out and "user_onboarding" in out and "financial_transaction" in out
    code, out, err = await cli("--namespace", observed.namespace, "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["graph"]["namespace"] == observed.namespace
    assert stats["graph"]["relationships"] >= 8
    patterns = {row["id"]: row for row in stats["patterns"]}
    assert patterns["financial_transaction"]["failures"] >= 2
    assert patterns["user_onboarding"]["successes"] >= 2
