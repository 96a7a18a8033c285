"""Clients that keep submitting while a fault hits, and remember every answer they got.

Each submission carries its own idempotency key and, like a careful client,
is sent again with the same key after a 503 or after no answer at all, until
it is accepted. That makes "nothing half-written" checkable: a retry after a
plain 503 must create the job (202); a 200 there would mean the 503 had stored it.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.cluster import Cluster, Http

PROBLEM_JSON = "application/problem+json"
NO_ANSWER = "no answer"


@dataclass
class Submission:
    """One job a client wants accepted, and every answer it got on the way."""

    key: str
    body: dict[str, Any]
    answers: list[str] = field(default_factory=list)
    #: Seconds each answer took, in the order of ``answers``.
    durations: list[float] = field(default_factory=list)
    job_id: str | None = None
    accepted_at: float | None = None
    violations: list[str] = field(default_factory=list)


def check_503(headers: dict[str, str], raw: bytes) -> str | None:
    """Why a 503 is not the clear problem+json the API promises, or None when it is."""
    if headers.get("content-type", "").split(";")[0] != PROBLEM_JSON:
        return f"503 with content type {headers.get('content-type')!r}"
    try:
        problem = json.loads(raw)
    except ValueError:
        return "503 whose body is not JSON"
    if problem.get("status") != 503 or not problem.get("title") or not problem.get("detail"):
        return f"503 problem without status/title/detail: {problem}"
    return None


class Load:
    """``count`` submissions of ``reliability.effect`` at ``rate_per_s`` from ``threads`` client threads."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        prefix: str,
        count: int,
        work_ms: int,
        rate_per_s: float,
        threads: int = 4,
        request_timeout_s: float = 10.0,
        give_up_s: float = 120.0,
        fail_every: int = 0,
        retry_after_s: float | None = None,
    ) -> None:
        """``fail_every``: every n-th job fails its first attempt (and asks to run again after
        ``retry_after_s``, from the delay queue), so retries happen during a fault too."""
        self.cluster = cluster
        self.submissions = []
        for i in range(count):
            key = f"{prefix}-{i:05d}"
            args: dict[str, Any] = {"key": key, "work_ms": work_ms}
            if fail_every and i % fail_every == 0:
                # Long enough that some are mid-attempt whenever a fault starts.
                args.update(fail_first=1, work_ms=max(work_ms, 500))
                if retry_after_s is not None:
                    args["retry_after_s"] = retry_after_s
            body = {"task": "reliability.effect", "args": args, "idempotency_key": key}
            self.submissions.append(Submission(key=key, body=body))
        self.rate_per_s = rate_per_s
        self.threads = threads
        self.request_timeout_s = request_timeout_s
        self.give_up_s = give_up_s
        self._next = 0
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.started = 0.0
        self.finished = 0.0

    def start(self) -> Load:
        self.started = time.monotonic()
        self._workers = [threading.Thread(target=self._client, daemon=True) for _ in range(self.threads)]
        for thread in self._workers:
            thread.start()
        return self

    def join(self, timeout_s: float | None = None) -> Load:
        """Wait for every submission to be accepted or given up (bounded by ``give_up_s`` each)."""
        deadline = time.monotonic() + (timeout_s or self.give_up_s + len(self.submissions) / self.rate_per_s + 30)
        for thread in self._workers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise AssertionError("the load's clients did not finish in time")
        self.finished = time.monotonic()
        return self

    def _take(self) -> tuple[int, Submission] | None:
        with self._lock:
            if self._next >= len(self.submissions):
                return None
            index = self._next
            self._next += 1
        return index, self.submissions[index]

    def _client(self) -> None:
        http_client = Http(self.cluster.api_port, timeout_s=self.request_timeout_s)
        headers = {"Authorization": f"Bearer {self.cluster.keys.write}", "Content-Type": "application/json"}
        while (taken := self._take()) is not None:
            index, submission = taken
            due = self.started + index / self.rate_per_s
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            self._submit(http_client, headers, submission)
        http_client.close()

    def _submit(self, http_client: Http, headers: dict[str, str], submission: Submission) -> None:
        body = json.dumps(submission.body).encode()
        give_up = time.monotonic() + self.give_up_s
        while time.monotonic() < give_up:
            sent = time.monotonic()
            try:
                status, answer_headers, raw = http_client.request("POST", "/v1/jobs", body, headers)
            except (OSError, http.client.HTTPException):
                submission.durations.append(time.monotonic() - sent)
                submission.answers.append(NO_ANSWER)
                time.sleep(0.2)
                continue
            submission.durations.append(time.monotonic() - sent)
            submission.answers.append(str(status))
            if status in (200, 202):
                if status == 200 and "503" in submission.answers and NO_ANSWER not in submission.answers:
                    submission.violations.append(f"{submission.key}: a 503 answer had stored the job")
                submission.job_id = json.loads(raw)["id"]
                submission.accepted_at = time.time()
                return
            if status == 503:
                why = check_503(answer_headers, raw)
                if why:
                    submission.violations.append(f"{submission.key}: {why}")
                time.sleep(0.2)
                continue
            submission.violations.append(f"{submission.key}: answered {status}: {raw[:300]!r}")
            if status < 500:
                return
            time.sleep(0.2)
        submission.violations.append(f"{submission.key}: not accepted within {self.give_up_s}s ({submission.answers})")

    # -- what happened -------------------------------------------------------

    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id is not None]

    def answers(self) -> Counter[str]:
        return Counter(answer for s in self.submissions for answer in s.answers)

    def violations(self) -> list[str]:
        return [v for s in self.submissions for v in s.violations]

    def slowest_s(self) -> float:
        return max((d for s in self.submissions for d in s.durations), default=0.0)

    def done_count(self) -> int:
        with self._lock:
            return self._next
