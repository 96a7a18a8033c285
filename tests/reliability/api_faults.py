"""Scenarios 7 and 8 against the running API: hostile input, slow clients, and the token checks.

Bad input must never cause a 5xx, a crashed gunicorn worker or a stored row.
Slow clients (a body sent byte by byte) must not hold up other requests.
Every endpoint must refuse a missing or wrong token (401) and a token
without its scope (403), and no token may show up in a log or a metric.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from pathlib import Path

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.settings import Settings
from shared.store.tasks import TaskRegistry
from tests.reliability.audit import Report
from tests.reliability.cluster import Cluster, Http
from tests.reliability.load import PROBLEM_JSON

JOB = b'{"task": "reliability.effect", "args": {"key": "hostile"}}'


def raw_exchange(port: int, data: bytes, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes, read the answer until the server closes; returns (status or 0, the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        # The server may answer and close before it has read everything.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    answer = b"".join(chunks)
    try:
        return int(answer.split(b" ", 2)[1]), answer
    except (IndexError, ValueError):
        return 0, answer


def _post(token: str, body: bytes, content_type: str = "application/json", path: str = "/v1/jobs") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _chunked(token: str, body: bytes) -> bytes:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    chunks = b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces)
    return head.encode() + chunks + b"0\r\n\r\n"


def hostile_requests(token: str) -> list[tuple[str, bytes, set[int]]]:
    """(what, raw request, acceptable statuses): each must be refused with a 4xx and store nothing."""
    big_key = b'{"task": "reliability.effect", "args": {"key": "' + b"x" * (2 << 20) + b'"}}'
    headers_flood = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(500))
    hang = b'{"task": "reliability.hang", "args": {"seconds": %s}}'
    batch = b'{"jobs": [' + b",".join([JOB] * 1001) + b"]}"
    smuggle = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    return [
        ("a 2 MiB body (over the 1 MiB limit)", _post(token, big_key), {413}),
        ("a 2 MiB chunked body without Content-Length", _chunked(token, big_key), {413}),
        ("100,000 nested brackets", _post(token, b"[" * 100_000 + b"]" * 100_000), {400}),
        ("objects nested 100 deep", _post(token, b'{"a":' * 100 + b"1" + b"}" * 100), {400}),
        ("invalid UTF-8", _post(token, b'{"task": "reliability.effect", "args": {"key": "\xff\xfe"}}'), {400}),
        ("a lone surrogate", _post(token, b'{"task": "reliability.effect", "args": {"key": "\\ud800"}}'), {400}),
        ("NaN", _post(token, hang % b"NaN"), {400}),
        ("1e999 (a float out of range)", _post(token, hang % b"1e999"), {400}),
        ("a 5,000-digit integer", _post(token, hang % (b"1" + b"0" * 5000)), {400}),
        ("text/plain", _post(token, JOB, content_type="text/plain"), {415}),
        ("an empty body", _post(token, b""), {400}),
        ("a JSON array instead of an object", _post(token, b"[1, 2, 3]"), {400, 422}),
        ("an unknown task", _post(token, b'{"task": "no.such_task", "args": {}}'), {422}),
        ("a batch of 1,001 jobs", _post(token, batch, path="/v1/jobs/batch"), {413, 422}),
        ("500 headers", f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n{headers_flood}\r\n".encode(), {400, 431}),
        ("a 64 kB header", f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: {'y' * 65536}\r\n\r\n".encode(), {400, 431}),
        ("a 10 kB request line", f"GET /v1/jobs?{'q' * 10000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), {400, 414}),
        ("a garbage request line", b"\x00\x01\x02 nonsense\r\n\r\n", {400}),
        ("a negative Content-Length", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", {400}),
        ("both Content-Length and chunked (request smuggling)", smuggle, {400}),
    ]


def gunicorn_workers(cluster: Cluster) -> set[int]:
    """The gunicorn worker processes: children of the API's master process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(cluster.api.pid):
                    found.add(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def _count_jobs(cluster: Cluster) -> int:
    return sum(cluster.store.count_by_status().values())


def bad_input(cluster: Cluster, slow_clients: int = 4, slow_body_s: float = 3.0) -> Report:
    """Hostile requests (no 5xx, no crash, nothing stored), then slow clients beside fast ones."""
    report = Report("bad input at the API")
    started = time.monotonic()
    workers = gunicorn_workers(cluster)
    before = _count_jobs(cluster)
    for what, request, acceptable in hostile_requests(cluster.keys.admin):
        status, answer = raw_exchange(cluster.api_port, request)
        report.fault(what)
        report.answers[str(status)] += 1
        if status not in acceptable:
            report.violations.append(f"{what}: answered {status}, expected {sorted(acceptable)}: {answer[:300]!r}")
        head, _, body = answer.partition(b"\r\n\r\n")
        if status >= 400 and b"jobrelay.dev/problems" in body and PROBLEM_JSON.encode() not in head.lower():
            report.violations.append(f"{what}: a problem body without the problem+json type")
    report.submitted = len(report.faults)
    if _count_jobs(cluster) != before:
        report.violations.append(f"hostile requests stored {_count_jobs(cluster) - before} job(s)")
    if not cluster.api.alive() or gunicorn_workers(cluster) != workers:
        report.violations.append(f"gunicorn workers changed from {workers} to {gunicorn_workers(cluster)}")
    slowest_s = _slow_clients(cluster, report, slow_clients, slow_body_s)
    report.recovery_s = slowest_s
    report.recovery_what = f"slowest other request while {slow_clients} clients sent bodies byte by byte"
    report.runtime_s = time.monotonic() - started
    return report


def measure_slow_clients(cluster: Cluster, count: int, body_s: float) -> tuple[float, list[int]]:
    """``count`` clients trickle a valid job one byte at a time while another keeps reading.

    Returns the slowest of the other client's requests and what the slow ones were answered.
    """
    answers: list[int] = []

    def trickle() -> None:
        request = _post(cluster.keys.write, JOB)
        head, body = request[: -len(JOB)], request[-len(JOB) :]
        with socket.create_connection(("127.0.0.1", cluster.api_port), timeout=body_s + 60) as sock:
            sock.sendall(head)
            for byte in body:
                sock.sendall(bytes([byte]))
                time.sleep(body_s / len(body))
            answer = sock.recv(65536)
        answers.append(int(answer.split(b" ", 2)[1]))

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    http = Http(cluster.api_port, timeout_s=body_s + 60)
    auth = {"Authorization": f"Bearer {cluster.keys.admin}"}
    slowest = 0.0
    deadline = time.monotonic() + body_s
    while time.monotonic() < deadline:
        sent = time.monotonic()
        status, _, _ = http.request("GET", "/v1/jobs?limit=1", None, auth)
        slowest = max(slowest, time.monotonic() - sent)
        if status != 200:
            answers.append(-status)
        time.sleep(0.05)
    http.close()
    for thread in threads:
        thread.join(timeout=body_s + 60)
    return slowest, answers


def _slow_clients(cluster: Cluster, report: Report, count: int, body_s: float) -> float:
    report.fault(f"{count} clients sending a job body byte by byte over {body_s:g}s")
    slowest, answers = measure_slow_clients(cluster, count, body_s)
    if sorted(answers) != [202] * count:
        report.violations.append(f"the slow clients (and the reads beside them) got {answers}, not {count} x 202")
    report.submitted += count
    report.accepted += answers.count(202)
    if slowest > 1.0:
        report.violations.append(f"a request beside the slow clients took {slowest:.2f}s")
    return slowest


def slow_client_capacity(cluster: Cluster, counts: tuple[int, ...] = (4, 8, 15, 24), body_s: float = 4.0) -> Report:
    """How many byte-by-byte clients the API takes before others wait (one greenlet per slow body)."""
    report = Report("slow clients against the API")
    started = time.monotonic()
    for count in counts:
        report.fault(f"{count} clients sending a job body byte by byte over {body_s:g}s")
        slowest, answers = measure_slow_clients(cluster, count, body_s)
        report.submitted += count
        report.accepted += answers.count(202)
        report.notes.append(f"{count} slow clients: the slowest other request took {slowest:.2f}s")
        if sorted(answers) != [202] * count:
            report.violations.append(f"{count} slow clients: answers {answers}")
    report.runtime_s = time.monotonic() - started
    return report


# -- 8. tokens and scopes ------------------------------------------------------------------


def _routes(cluster: Cluster) -> list[tuple[str, str, str | None]]:
    """(method, concrete path, scope needed or None when public) for every operation in /openapi.json."""
    status, document = cluster.call("GET", "/openapi.json", token=None)
    assert status == 200, document
    settings = Settings(redis_url=cluster.redis.url, database_url=cluster.database_url, data_dir=cluster.data_dir)
    assert cluster.engine is not None
    registry = TaskRegistry(cluster.engine)
    app = create_app(settings, store=cluster.store, registry=registry, broker=build_broker(cluster.redis.url))
    found = []
    for template, operations in document["paths"].items():
        path = template
        for name in ("job_id", "workflow_id", "schedule_id", "id"):
            path = path.replace("{" + name + "}", "01a20c76-0050-7167-8644-a3d18baa66dd")
        path = path.replace("{name}", "default")
        route = app._router.find(path)
        assert route is not None, f"{template} is in /openapi.json but not routed"
        resource = route[0]
        for method in operations:
            if method.upper() not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                continue
            public = getattr(resource, "public", False)
            scope = None if public else getattr(resource, "scopes", {}).get(method.upper(), "admin")
            found.append((method.upper(), path, scope))
    return found


def security(cluster: Cluster) -> Report:
    """Every endpoint: 401 without a valid bearer token, 403 without its scope; no token in logs or metrics."""
    report = Report("tokens and scopes")
    started = time.monotonic()
    keys = cluster.keys
    lacking = {"read": keys.write, "write": keys.read, "admin": keys.read_write}
    wrong_tokens = [
        "Bearer not-a-token",
        f"Bearer {keys.admin}x",
        f"Bearer {keys.admin[:-1]}",
        f"Basic {keys.admin}",
        f"bearer{keys.admin}",
        "Bearer ",
    ]
    http = Http(cluster.api_port)
    body = b"{}"
    routes = _routes(cluster)
    for method, path, scope in routes:
        if scope is None:
            status, _, _ = http.request(method, path)
            report.answers[str(status)] += 1
            if status >= 500 or status in (401, 403):
                report.violations.append(f"public {method} {path} answered {status}")
            continue
        attempts: list[tuple[str, dict[str, str], int]] = [("no token", {}, 401)]
        attempts += [(f"a wrong token ({h.split()[0]})", {"Authorization": h}, 401) for h in wrong_tokens]
        attempts.append((f"a token without the {scope} scope", {"Authorization": f"Bearer {lacking[scope]}"}, 403))
        for what, headers, expected in attempts:
            headers = {**headers, "Content-Type": "application/json"}
            payload = body if method in ("POST", "PUT") else None
            status, answer_headers, _ = http.request(method, path, payload, headers)
            report.answers[str(status)] += 1
            report.submitted += 1
            if status != expected:
                report.violations.append(f"{method} {path} with {what} answered {status}, not {expected}")
            elif not answer_headers.get("content-type", "").startswith(PROBLEM_JSON):
                report.violations.append(f"{method} {path} with {what}: {status} is not problem+json")
            if status == 401 and "bearer" not in answer_headers.get("www-authenticate", "").lower():
                report.violations.append(f"{method} {path}: 401 without WWW-Authenticate: Bearer")
    report.fault(
        f"{len(routes)} operations tried without a token, with {len(wrong_tokens)} wrong ones "
        "and with a key lacking the scope"
    )
    http.close()
    _no_token_leaks(cluster, report, [*keys.all(), "not-a-token"])
    report.runtime_s = time.monotonic() - started
    return report


def _metrics_texts(cluster: Cluster) -> list[str]:
    urls = [
        f"{cluster.stack.base_url}/metrics",
        cluster.stack.worker_metrics_url,
        *(f"http://127.0.0.1:{port}/metrics" for port in cluster.scheduler_ports),
    ]
    texts = []
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:
            texts.append(resp.read().decode())
    return texts


def _no_token_leaks(cluster: Cluster, report: Report, secrets: list[str]) -> None:
    logs = cluster.logs_text()
    metrics = "\n".join(_metrics_texts(cluster))
    for secret in secrets:
        if secret in logs:
            report.violations.append(f"a token ({secret[:4]}...) appears in the logs")
        if secret in metrics:
            report.violations.append(f"a token ({secret[:4]}...) appears in the metrics")
    if "authorization" in logs.lower():
        report.violations.append("an Authorization header appears in the logs")
    report.notes.append(f"searched {len(logs):,} bytes of logs and {len(metrics):,} bytes of metrics for tokens")
