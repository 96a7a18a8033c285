"""Scenarios 5 and 6: messages a worker cannot run, and tasks that cannot finish.

Poison messages go straight into Redis (as a buggy producer, an older
image or a message queued before a deploy would leave them): a payload that
does not decode, a task this worker does not have, arguments the function
no longer takes, a message whose job row is gone. Each must end in the
dead-letter queue with a clear error, and the worker must go on as if
nothing happened. Then a task stuck in C code (the hard time limit replaces
its process) and result storage that is full (ENOSPC, from a file that
points at ``/dev/full``, not from real disk pressure).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import redis
from dramatiq import Message
from dramatiq.errors import DecodeError

from shared.broker.publishing import build_broker, message_for, publish
from shared.catalog import TaskSpec
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.store.tasks import TaskRegistry
from tests.reliability.audit import Report, audit
from tests.reliability.cluster import Cluster
from tests.reliability.load import Load
from tests.reliability.scenarios import Size, prefix

QUEUE = "dramatiq:default"
DEAD = "dramatiq:default.dead"
WAKE = "jobrelay:wake:default"


def new_job(task: str, args: dict[str, Any], *, max_retries: int = 3) -> Job:
    """A job row as the API would commit it, for messages the API would never send."""
    now = utcnow()
    return Job(
        id=new_id(),
        task=task,
        queue="default",
        status=JobStatus.QUEUED,
        args=args,
        max_retries=max_retries,
        created_at=now,
        updated_at=now,
        time_limit_s=60,
    )


def dead_letters(client: redis.Redis) -> dict[str, bytes]:
    """The default queue's dead letters by job id (by Redis message id when they do not decode)."""
    found: dict[str, bytes] = {}
    raw: dict[bytes, bytes] = client.hgetall(DEAD + ".msgs")  # type: ignore[assignment]
    for redis_id, data in raw.items():
        try:
            found[Message.decode(data).message_id] = data
        except DecodeError:
            found[redis_id.decode()] = data
    return found


def wait_for(what: str, check: Any, *, timeout_s: float, report: Report) -> Any:
    """Poll ``check`` until it returns something truthy; a violation when it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            report.violations.append(f"{what}: not within {timeout_s:g}s")
            return value
        time.sleep(0.1)


def _final(cluster: Cluster, job_id: str) -> Job | None:
    job = cluster.store.get(job_id)
    return job if job.status.is_final else None


def _expect_dead(cluster: Cluster, report: Report, job_id: str, *, error_type: str, mentions: str) -> None:
    job = wait_for(f"job {job_id} final", lambda: _final(cluster, job_id), timeout_s=20, report=report)
    if not job:
        return
    error = job.error or {}
    if job.status is not JobStatus.FAILED or not job.dead:
        report.violations.append(f"job {job_id} ended {job.status.value} (dead={job.dead}), not failed and dead")
    if error.get("type") != error_type or mentions not in str(error.get("message")):
        report.violations.append(f"job {job_id}: error {error} is not a {error_type} naming {mentions!r}")
    client = cluster.redis_client()
    in_dead_letters = wait_for(
        f"job {job_id} in the dead-letter queue", lambda: job_id in dead_letters(client), timeout_s=10, report=report
    )
    if not in_dead_letters:
        report.notes.append(f"dead letters: {list(dead_letters(client))}")
    client.close()


def poison(cluster: Cluster, size: Size) -> Report:
    """Four kinds of poison among good messages; each dead-lettered, the worker unharmed."""
    report = Report("poison messages")
    started = time.monotonic()
    client = cluster.redis_client()
    pids = cluster.worker_pids()
    store = cluster.store
    took_s: list[float] = []  # from each poison's arrival to its dead letter

    # An undecodable payload, in one transaction with 30 good messages, so they share a prefetch.
    good = [new_job("reliability.effect", {"key": f"{prefix('neighbour')}", "work_ms": 5}) for _ in range(30)]
    sent = time.monotonic()
    store.insert(good)
    garbage_id = str(uuid.uuid4())
    pipe = client.pipeline(transaction=True)
    pipe.hset(QUEUE + ".msgs", garbage_id, b"\xff\xfe this is not a dramatiq message")
    pipe.rpush(QUEUE, garbage_id)
    for job in good:
        message = message_for(job).copy(options={"redis_message_id": str(uuid.uuid4())})
        pipe.hset(QUEUE + ".msgs", message.options["redis_message_id"], message.encode())
        pipe.rpush(QUEUE, message.options["redis_message_id"])
    pipe.lpush(WAKE, 1)
    pipe.execute()
    store.mark_published([job.id for job in good])
    report.fault("an undecodable payload among 30 good messages")
    wait_for(
        "the undecodable payload dead-lettered",
        lambda: garbage_id in dead_letters(client),
        timeout_s=10,
        report=report,
    )
    took_s.append(time.monotonic() - sent)

    # A task some worker image registered, but not the one consuming the queue.
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    retired = TaskSpec(name="reliability.retired", queue="default", max_retries=0, args_schema=schema)
    TaskRegistry(cluster.engine).register([retired], registered_by="an older worker image")  # type: ignore[arg-type]
    sent = time.monotonic()
    status, body = cluster.call("POST", "/v1/jobs", {"task": "reliability.retired", "args": {}})
    if status != 202:
        report.violations.append(f"submitting a registered task answered {status}: {body}")
    else:
        report.fault("a job for a task this worker does not have")
        _expect_dead(cluster, report, body["id"], error_type="ActorNotFound", mentions="reliability.retired")
        took_s.append(time.monotonic() - sent)

    # Arguments the function no longer takes (queued before a deploy changed its signature).
    stale = new_job("reliability.effect", {"key": prefix("stale"), "colour": "red"})
    sent = time.monotonic()
    store.insert([stale])
    store.mark_published(publish(build_broker(cluster.redis.url), [stale]))
    report.fault("arguments the task's signature no longer accepts")
    _expect_dead(cluster, report, stale.id, error_type="TypeError", mentions="colour")
    took_s.append(time.monotonic() - sent)

    # A message whose job row is gone (pruned, or a store restored from an older backup).
    orphan = new_job("reliability.effect", {"key": prefix("orphan")})
    sent = time.monotonic()
    publish(build_broker(cluster.redis.url), [orphan])
    report.fault("a message whose job row does not exist")
    wait_for(
        "the message without a row dead-lettered",
        lambda: orphan.id in dead_letters(client),
        timeout_s=10,
        report=report,
    )
    took_s.append(time.monotonic() - sent)
    report.recovery_s = max(took_s)
    report.recovery_what = "longest time from a poison message's arrival to its dead letter"

    # The worker is unharmed: the same processes, and fresh work runs.
    load = Load(cluster, prefix=prefix("after-poison"), count=min(size.jobs, 100), work_ms=5, rate_per_s=200)
    load.start().join()
    if cluster.worker_pids() != pids:
        report.violations.append(f"worker processes changed from {pids} to {cluster.worker_pids()}")
    report.submitted = len(good) + 3 + len(load.submissions)
    report.accepted = len(good) + 2 + len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    job_ids = [job.id for job in good] + [s.job_id for s in load.accepted() if s.job_id]
    audit(cluster, report, job_ids, settle_timeout_s=size.settle_s)
    client.close()
    report.runtime_s = time.monotonic() - started
    return report


def stuck_tasks(cluster: Cluster, size: Size) -> Report:
    """A task hung in C code past its hard limit, and a result that cannot be stored (disk full)."""
    report = Report("hung task and result storage full")
    started = time.monotonic()
    pids = set(cluster.worker_pids())
    load = Load(cluster, prefix=prefix("beside-hang"), count=min(size.jobs, 60), work_ms=300, rate_per_s=20).start()
    sent = time.monotonic()
    status, hung = cluster.call("POST", "/v1/jobs", {"task": "reliability.hang", "args": {"seconds": 120}})
    assert status == 202, hung
    report.fault("a task blocked in one C call past its 1 s time limit")

    results = Path(cluster.data_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    big_job = {"task": "reliability.big_result", "args": {"size": 5000, "work_ms": 1000}}
    status, big = cluster.call("POST", "/v1/jobs", big_job)
    assert status == 202, big
    # The worker writes the result to a temporary file first: make that file /dev/full.
    (results / f".{big['id']}.tmp").symlink_to("/dev/full")
    report.fault("result storage full (ENOSPC) when a 5 kB result is stored")

    done = wait_for("the hung job recorded", lambda: _final(cluster, hung["id"]), timeout_s=20, report=report)
    if done and (done.status is not JobStatus.FAILED or (done.error or {}).get("type") != "HardTimeLimitExceeded"):
        report.violations.append(f"the hung job ended {done.status.value}: {done.error}")
    report.notes.append(f"the hung job was recorded failed {time.monotonic() - sent:.1f}s after it was submitted")

    def replaced() -> bool:
        now = set(cluster.worker_pids())
        return len(now) == cluster.worker_processes and bool(pids - now)

    wait_for("the hung job's process replaced", replaced, timeout_s=20, report=report)
    report.recovery_s = time.monotonic() - sent
    report.recovery_what = "from submitting the hung job to a new process in place of the one it blocked"
    full = wait_for(
        "the job whose result hit a full disk final", lambda: _final(cluster, big["id"]), timeout_s=20, report=report
    )
    if full and (full.status is not JobStatus.FAILED or "No space left" not in str((full.error or {}).get("message"))):
        report.violations.append(f"the result-storage job ended {full.status.value}: {full.error}")
    (results / f".{big['id']}.tmp").unlink(missing_ok=True)
    if full:
        # Space is back: an operator's retry stores the result.
        answer, _ = cluster.call("POST", f"/v1/jobs/{big['id']}/retry")
        again = wait_for("the retried job final", lambda: _final(cluster, big["id"]), timeout_s=20, report=report)
        status, stored = cluster.call("GET", f"/v1/jobs/{big['id']}/result")
        if not again or again.status is not JobStatus.SUCCEEDED or stored != "x" * 5000:
            seen = cluster.store.get(big["id"])
            report.violations.append(
                f"after space came back the retry (answered {answer}) did not store the result ({status}): "
                f"the job is {seen.status.value} after {seen.attempts} attempt(s), lease {seen.lease_owner}, "
                f"published {seen.published_at}, error {(seen.error or {}).get('message')}"
            )
    load.join()
    report.submitted = len(load.submissions) + 2
    report.accepted = len(load.accepted()) + 2
    report.answers = load.answers()
    report.violations.extend(load.violations())
    audit(cluster, report, [s.job_id for s in load.accepted() if s.job_id], settle_timeout_s=size.settle_s)
    cluster.wait_worker_pids(cluster.worker_processes, timeout_s=20)
    report.runtime_s = time.monotonic() - started
    return report
