"""The console's buttons: each calls the shared code the API's resource for the same operation calls.

Cancel as ``POST /v1/jobs/{id}/cancel``, retry as ``/retry``, requeue dead letters
as ``/v1/queues/{q}/dead/requeue``, pause and resume a schedule as ``PUT
/v1/schedules/{id}`` with ``enabled``, a queue as ``POST /v1/queues/{q}/pause`` and
``/resume``. Never HTTP to ourselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.broker.pausing import mirror_pause, mirror_resume
from shared.broker.queues import drop_dead_letters
from shared.errors import Conflict, FieldError, InvalidInput, JobrelayError, NotFound
from shared.job import utcnow
from shared.schedules.definition import next_run_after_change, parse_schedule
from shared.store.pauses import QueuePauses
from shared.store.schedules import DEFINITION_FIELDS, Schedule, ScheduleSource, ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.workflows import WorkflowEngine


@dataclass
class Outcome:
    """What a (bulk) action did: how many it changed and why the others were left."""

    done: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = f"{self.done} done"
        if self.skipped:
            text += f", {len(self.skipped)} left as they were ({'; '.join(self.skipped[:3])}"
            text += ", …)" if len(self.skipped) > 3 else ")"
        return text


def cancel_jobs(submitter: Submitter, engine: WorkflowEngine, job_ids: list[str]) -> Outcome:
    outcome = Outcome()
    for job_id in job_ids:
        try:
            job = submitter.store.cancel(job_id)
        except JobrelayError as exc:
            outcome.skipped.append(exc.detail)
            continue
        if job.workflow_id and job.status.is_final:
            engine.advance(job.workflow_id)
        outcome.done += 1
    return outcome


def retry_jobs(submitter: Submitter, job_ids: list[str]) -> Outcome:
    """Failed, cancelled or expired jobs run again; their dead letters go from Redis."""
    outcome = Outcome()
    store = submitter.store
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        requeued = store.requeue(chunk)
        by_queue: dict[str, list[str]] = {}
        for job in requeued:
            by_queue.setdefault(job.queue, []).append(job.id)
        for queue, ids in by_queue.items():
            drop_dead_letters(submitter.broker.client, queue, ids)
        submitter.publish(requeued, new=False)
        outcome.done += len(requeued)
        done = {job.id for job in requeued}
        outcome.skipped.extend(
            f"{job_id} is not failed, cancelled or expired" for job_id in chunk if job_id not in done
        )
    return outcome


def requeue_dead(submitter: Submitter, queue: str, job_ids: list[str]) -> int:
    """As ``DeadRequeueResource``: only dead letters of ``queue`` go back."""
    done = 0
    for start in range(0, len(job_ids), 500):
        jobs = submitter.store.requeue(job_ids[start : start + 500], queue=queue, dead_only=True)
        drop_dead_letters(submitter.broker.client, queue, [job.id for job in jobs])
        submitter.publish(jobs, new=False)
        done += len(jobs)
    return done


def change_schedule(
    schedules: ScheduleStore, registry: TaskRegistry, current: Schedule, body: dict[str, object]
) -> Schedule:
    """As ``PUT /v1/schedules/{id}``: the fields given change, the rest keep their values."""
    if current.source == ScheduleSource.BUILTIN:
        raise Conflict(f"schedule {current.id!r} is built in and read-only")
    errors: list[FieldError] = []
    updated = parse_schedule(body, registry=registry, errors=errors, current=current)
    if updated is None:
        raise InvalidInput("the schedule is invalid", errors)
    if current.source == ScheduleSource.FILE:
        locked = [
            FieldError(f"/{name}", "is set by the schedules file; change it there")
            for name in DEFINITION_FIELDS
            if name != "enabled" and getattr(updated, name) != getattr(current, name)
        ]
        if locked:
            raise Conflict(f"schedule {current.id!r} comes from the schedules file; here it can only be paused", locked)
    if updated.definition() == current.definition():
        return current
    updated.next_run_at = next_run_after_change(updated, current, utcnow())
    return schedules.replace(updated, expected_version=current.version)


def switch_queue(submitter: Submitter, pauses: QueuePauses, queue: str, *, pause: bool, by: str) -> None:
    """As ``QueuePauseResource`` and ``QueueResumeResource``: the store first, then the Redis mirror."""
    registry = submitter.registry
    if not registry.knows_queue(queue):
        raise NotFound(f"no queue named {queue!r}; the known queues: {', '.join(registry.queues()) or 'none'}")
    if pause:
        pauses.pause(queue, paused_by=by)
        mirror_pause(submitter.broker.client, queue)
    else:
        pauses.resume(queue)
        mirror_resume(submitter.broker.client, queue)
