"""Fair sharing between tenants in real worker processes on a real Redis: one namespace's single job
starts while another's burst of thousands still waits on the same queue."""

from __future__ import annotations

from shared.errors import FieldError
from shared.job import Job, JobStatus
from shared.submission.validation import Submission, build_job
from tests.services.worker.test_flow import FlowWorkers, workers  # noqa: F401 - the fixture

BURST = 3000


def jobs_of(run: FlowWorkers, namespace: str, count: int) -> list[Job]:
    built = []
    for _ in range(count):
        errors: list[FieldError] = []
        job = build_job(
            {"task": "flow.brief", "args": {"record": str(run.events.path)}},
            "",
            run.submitter.registry,
            Submission(namespace=namespace),
            errors,
        )
        assert job is not None, errors
        built.append(job)
    return built


def test_a_tenants_single_job_starts_while_another_tenants_burst_waits(workers: FlowWorkers) -> None:  # noqa: F811
    # Given: namespace a's burst of 3,000 jobs on queue flow, published before b's one job
    burst = jobs_of(workers, "a", BURST)
    for start in range(0, BURST, 500):
        workers.submitter.submit(burst[start : start + 500])
    [single] = jobs_of(workers, "b", 1)
    workers.submitter.submit([single])

    # When: b's job has run
    [done] = workers.wait([single.id], lambda job: job.status.is_final, timeout_s=120)

    # Then: it ran while most of a's burst was still waiting (without fair sharing it would be last)
    assert done.status is JobStatus.SUCCEEDED
    started = workers.events.starts()
    assert single.id in started
    a_started_before = sum(1 for job in burst if job.id in started and started[job.id][0] < started[single.id][0])
    assert a_started_before < BURST // 2, a_started_before
    assert workers.store.count_waiting("a") > BURST // 4
