"""A real Prometheus scrapes the real stack: every dashboard query returns data, every alert expression evaluates.

Needs the `prometheus` server binary (Debian's `prometheus` package); a
missing one fails the test with what to install, it never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.redis_server import free_port
from tests.e2e.conftest import Stack, start_stack, stop_stack

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "monitoring"
#: What Grafana sends for the variables and macros with "All" selected (the local series have no namespace).
GRAFANA_VALUES = {
    "namespace": ".*",
    "queue": ".*",
    "task": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
}
#: How long the data may take to show up once the jobs are done (the queue gauges wait for the
#: scheduler's first `maintenance.queue_gauges` tick, every 15 s).
DATA_WAIT_S = 30.0
FINAL = {"succeeded", "failed", "cancelled", "expired"}


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def query(self, expr: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(error, series) of an instant query."""
        status, body = self.get("/api/v1/query", query=expr)
        if status != 200 or body.get("status") != "success":
            return f"HTTP {status}: {body.get('errorType')}: {body.get('error')}", []
        return None, body["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def prometheus_binary() -> str:
    path = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not path:
        pytest.fail(
            "the prometheus server binary is not on PATH (set PROMETHEUS to use another one). Install Debian's "
            "`prometheus` package (apt-get install prometheus) or a release from https://prometheus.io/download/.",
            pytrace=False,
        )
    return path


def start_prometheus(workdir: Path, targets: dict[str, str]) -> Prometheus:
    """Prometheus on a free loopback port scraping ``targets`` (job -> metrics URL) every second, with our rules."""
    workdir.mkdir(parents=True)
    rules = workdir / "jobrelay.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    scrape_configs = []
    for job, url in targets.items():
        parsed = urllib.parse.urlsplit(url)
        scrape_configs.append(
            {"job_name": job, "metrics_path": parsed.path, "static_configs": [{"targets": [parsed.netloc]}]}
        )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return prometheus
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            prometheus.stop()
            raise AssertionError(f"prometheus not ready in 15s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((MONITORING / "prometheusrules.yaml").read_text())["spec"]["groups"]
    return groups


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VALUES, f"unknown dashboard variable ${name} in {expr}"
        return GRAFANA_VALUES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries() -> dict[str, str]:
    """'dashboard / panel / refId' -> the query Grafana would send."""
    queries = {}
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries[f"{dashboard['title']} / {panel['title']} / {target['refId']}"] = substitute(target["expr"])
    return queries


def variable_queries() -> dict[str, tuple[str, str]]:
    """'dashboard / $name' -> (PromQL with the variable's series, label) for every label_values() variable."""
    found = {}
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, f"{path.name}: ${variable['name']} is not label_values(selector, label)"
            found[f"{dashboard['title']} / ${variable['name']}"] = (
                f"count by ({match.group(2)}) ({substitute(match.group(1))})",
                match.group(2),
            )
    return found


def run_jobs_of_every_outcome(stack: Stack) -> None:
    """Given the stack, jobs that succeed, retry then succeed, fail, get cancelled (waiting and running), expire."""

    def submit(body: dict[str, Any]) -> str:
        status, job = stack.request("POST", "/v1/jobs", body)
        assert status == 202, job
        return str(job["id"])

    running = submit({"task": "diagnostics.sleep", "args": {"seconds": 30}})
    # Cancelled while waiting: final at once; its message, once due, is skipped as a duplicate.
    waiting = submit({"task": "diagnostics.echo", "args": {"message": "later"}, "delay_s": 1})
    wanted = {
        submit({"task": "diagnostics.echo", "args": {"message": "hi"}}): ("succeeded", 1),
        submit({"task": "diagnostics.fail", "args": {"succeed_on_attempt": 2}}): ("succeeded", 2),
        submit({"task": "diagnostics.fail", "args": {}, "max_retries": 0}): ("failed", 1),
        # The age counts from creation: publishing and claiming alone take longer than 1 ms.
        submit({"task": "diagnostics.echo", "args": {"message": "too late"}, "max_age_s": 0.001}): ("expired", 0),
        running: ("cancelled", 1),
        waiting: ("cancelled", 0),
    }
    status, problem = stack.request("POST", "/v1/jobs", {"task": "diagnostics.sleep", "args": {"seconds": "x"}})
    assert status == 422, problem
    assert stack.request("POST", f"/v1/jobs/{waiting}/cancel")[0] == 202
    stack.wait_job(running, {"running"})
    assert stack.request("POST", f"/v1/jobs/{running}/cancel")[0] == 202
    for job_id, (status_wanted, attempts) in wanted.items():
        job = stack.wait_job(job_id, FINAL, timeout_s=15)
        assert (job["status"], job["attempts"]) == (status_wanted, attempts), job


def wait_for_data(prometheus: Prometheus, queries: dict[str, str], deadline: float) -> dict[str, str]:
    """Poll every query until it returns a series; what still does not by ``deadline``, with why."""
    missing = dict.fromkeys(queries, "not run")
    while True:
        for key in list(missing):
            error, result = prometheus.query(queries[key])
            if error is None and result:
                del missing[key]
            else:
                missing[key] = error or "no series"
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bjobrelay_[a-z0-9_]+\b", expr))


def known_metric(prometheus: Prometheus, name: str) -> bool:
    """Scraped as a series, or at least described (HELP/TYPE) by a target: a labelled counter not incremented yet.

    Prometheus scrapes OpenMetrics, where a counter's or histogram's family has no ``_total``/``_bucket`` suffix.
    """
    base = re.sub(r"_(bucket|sum|count|total)$", "", name)
    if name in prometheus.metadata or base in prometheus.metadata:
        return True
    error, result = prometheus.query(f'count({{__name__="{name}"}})')
    return error is None and bool(result)


@pytest.mark.timeout(90)
def test_dashboards_and_alerts_work_on_the_real_metrics(tmp_path: Path) -> None:
    scheduler_port = free_port()
    stack = start_stack(tmp_path, {"SCHEDULER_METRICS_BIND": f"127.0.0.1:{scheduler_port}"})
    prometheus = None
    try:
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            {
                "jobrelay-api": stack.base_url + "/metrics",
                "jobrelay-worker": stack.worker_metrics_url,
                "jobrelay-scheduler": f"http://127.0.0.1:{scheduler_port}/metrics",
            },
        )
        deadline = time.monotonic() + 10
        while True:
            _, up = prometheus.query("up == 1")
            if len(up) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(s["metric"]["job"] for s in up) == ["jobrelay-api", "jobrelay-scheduler", "jobrelay-worker"], (
            f"targets up: {up}\n{prometheus.log_path.read_text()[-2000:]}"
        )

        # When jobs of every outcome have run
        run_jobs_of_every_outcome(stack)

        # Then every panel query and every variable of both dashboards returns data
        deadline = time.monotonic() + DATA_WAIT_S
        queries = panel_queries()
        variables = variable_queries()
        missing = wait_for_data(prometheus, queries | {k: q for k, (q, _) in variables.items()}, deadline)
        assert not missing, "dashboard queries without data:\n" + "\n".join(
            f"- {key}: {why}\n    {queries.get(key) or variables[key][0]}" for key, why in sorted(missing.items())
        )
        for key, (expr, label) in variables.items():
            _, result = prometheus.query(expr)
            values = {series["metric"].get(label, "") for series in result}
            assert label == "namespace" or values - {""}, f"{key}: no values of {label} in {result}"

        # And every alert expression evaluates, on metrics the services really expose
        status, body = prometheus.get("/api/v1/metadata")
        assert status == 200, body
        prometheus.metadata = body["data"]
        problems = []
        for group in rule_groups():
            for rule in group["rules"]:
                error, _ = prometheus.query(rule["expr"])
                if error:
                    problems.append(f"{rule['alert']}: {error}")
                problems += [
                    f"{rule['alert']}: {name} is neither scraped nor described by any target"
                    for name in sorted(metric_names(rule["expr"]))
                    if not known_metric(prometheus, name)
                ]
        unknown = {name for expr in queries.values() for name in metric_names(expr)}
        problems += [f"dashboards: {name} is unknown" for name in sorted(unknown) if not known_metric(prometheus, name)]
        assert not problems, "\n".join(problems)

        # And Prometheus itself evaluates the loaded rules without errors
        status, body = prometheus.get("/api/v1/rules")
        assert status == 200, body
        loaded = {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
        assert set(loaded) == {rule["alert"] for group in rule_groups() for rule in group["rules"]}
        unhealthy = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
        assert not unhealthy, f"rules failing in Prometheus: {unhealthy}"
    finally:
        if prometheus is not None:
            prometheus.stop()
        code = stop_stack(stack)
    assert code == 0, stack.log_path.read_text()[-4000:]
