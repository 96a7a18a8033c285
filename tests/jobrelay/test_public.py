"""``jobrelay``, the public face: every documented name, a user's task module on it alone, a cheap import.

The user-side checks run in a fresh interpreter whose working directory is a
user project, as ``jobrelay worker`` would run there; that also keeps their
tasks out of this process's catalog.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jobrelay
from services.worker import retry_policy
from services.worker.context import CurrentJob, job_view, report_progress, report_progress_async, result_file
from shared import client
from shared.catalog import task
from shared.client.aio import AsyncClient
from shared.client.calls import RetryPolicy
from shared.client.handles import AsyncJobHandle, JobHandle
from shared.client.sync import Client
from shared.lifespans import resources, worker_lifespan
from shared.schema import Schema

REPO_ROOT = Path(__file__).resolve().parents[2]
USER_DOCS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))

#: What a task module imports.
FOR_TASKS = {
    "task": task,
    "Schema": Schema,
    "report_progress": report_progress,
    "report_progress_async": report_progress_async,
    "result_file": result_file,
    "current_job": job_view,
    "CurrentJob": CurrentJob,
    "worker_lifespan": worker_lifespan,
    "resources": resources,
}
#: What a client script imports: the client, ``job_request`` and every error it raises.
FOR_CLIENTS = {
    "JobrelayClient": client.JobrelayClient,
    "job_request": client.job_request,
    "ClientError": client.ClientError,
    "ApiBadRequest": client.ApiBadRequest,
    "ApiUnauthorized": client.ApiUnauthorized,
    "ApiForbidden": client.ApiForbidden,
    "ApiNotFound": client.ApiNotFound,
    "ApiConflict": client.ApiConflict,
    "ApiPayloadTooLarge": client.ApiPayloadTooLarge,
    "ApiInvalidRequest": client.ApiInvalidRequest,
    "ApiUnavailable": client.ApiUnavailable,
    "ApiServerError": client.ApiServerError,
    "ConnectionFailed": client.ConnectionFailed,
    "WaitTimeout": client.WaitTimeout,
    "Client": Client,
    "AsyncClient": AsyncClient,
    "JobHandle": JobHandle,
    "AsyncJobHandle": AsyncJobHandle,
    "RetryPolicy": RetryPolicy,
}
#: Modules ``import jobrelay`` must not load: each would cost time or hold a connection pool.
HEAVY = ("redis", "sqlalchemy", "dramatiq", "falcon", "gunicorn", "gevent", "psycopg", "boto3", "apscheduler")


def run_python(code: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter started in ``cwd`` (a user project), jobrelay importable from the repo."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_documented_name_is_exported_as_the_object_the_worker_uses() -> None:
    documented = {**FOR_TASKS, **FOR_CLIENTS, "Retry": retry_policy.Retry}

    assert sorted(jobrelay.__all__) == sorted(documented)
    for name, obj in documented.items():
        assert getattr(jobrelay, name) is obj, name


def test_retry_is_the_exception_the_worker_decides_on() -> None:
    decision = retry_policy.decide(None, jobrelay.Retry(after_s=7.0), attempts=1, max_retries=3)

    assert decision.retry and decision.delay_s == 7.0


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_user_facing_examples_import_only_from_jobrelay() -> None:
    problems = []
    for path in USER_DOCS:
        for block in _python_blocks(path):
            for module, names in re.findall(r"^from ([\w.]+) import (.+)$", block, flags=re.MULTILINE):
                if module.split(".")[0] in ("shared", "services"):
                    problems.append(f"{path.name}: from {module} import {names} (use jobrelay)")
                elif module == "jobrelay":
                    missing = {n.strip() for n in names.split(",")} - set(jobrelay.__all__)
                    problems += [f"{path.name}: jobrelay does not export {name}" for name in sorted(missing)]

    assert not problems, "\n".join(problems)
    assert any("from jobrelay import" in block for block in _python_blocks(REPO_ROOT / "README.md"))


def test_importing_jobrelay_loads_no_driver_broker_or_web_framework(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import sys
        import jobrelay
        print([name for name in {HEAVY!r} if name in sys.modules])
        """,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


USER_TASKS = '''
"""A user's task module: it imports jobrelay and nothing else of ours."""

from typing import Annotated

from jobrelay import Retry, Schema, report_progress, result_file, task


@task(name="acme.thumbnails", queue="images", max_retries=2, non_retryable=(ValueError,))
def thumbnails(sizes: list[int], quality: Annotated[int, Schema(minimum=1, maximum=100)] = 85) -> dict:
    """Render thumbnails."""
    with result_file("text/plain") as handle:
        for done, size in enumerate(sizes, 1):
            handle.write(f"{size}px@{quality}\\n".encode())
            report_progress(done, len(sizes), f"{size}px")
    return {"made": len(sizes)}


@task(name="acme.later", queue="images")
def later() -> None:
    """Ask to run again in a minute."""
    raise Retry(after_s=60)
'''

LOAD_AND_RUN = """
import json
from pathlib import Path

from services.worker.context import JobContext, enter_job, leave_job
from services.worker.retry_policy import decide
from services.worker.tasks import load_task_modules
from shared.results import DirectoryStorage


class Sink:
    def __init__(self):
        self.calls = []

    def report_progress(self, job_id, progress):
        self.calls.append(progress)


catalog = load_task_modules(["acme_tasks"])
thumbnails, later = catalog.get("acme.thumbnails"), catalog.get("acme.later")
results, sink = DirectoryStorage(Path("results")), Sink()
context = JobContext(job_id="job-1", task="acme.thumbnails", attempt=1, sink=sink, results=results)
token = enter_job(context)
try:
    returned = thumbnails.fn(sizes=[64, 128], quality=90)
    try:
        later.fn()
    except Exception as exc:
        decision = decide(later, exc, attempts=1, max_retries=later.spec.max_retries)
finally:
    leave_job(token)
body, content_type = results.open("job-1")
print(json.dumps({
    "spec": thumbnails.spec.as_dict(),
    "queues": catalog.queues(),
    "returned": returned,
    "progress": sink.calls[-1],
    "file": [body.decode(), content_type, context.result_file_type],
    "retry": [decision.retry, decision.delay_s],
}))
"""


def test_a_task_module_on_jobrelay_alone_loads_and_runs_in_the_worker(tmp_path: Path) -> None:
    # Given: a user project whose task module imports only jobrelay
    (tmp_path / "acme_tasks.py").write_text(USER_TASKS)

    # When: the worker's task loader imports it (TASK_MODULES=acme_tasks), and its tasks run in a job
    result = run_python(LOAD_AND_RUN, cwd=tmp_path)

    # Then: declared with its schema and options, progress, result file and Retry all reach the worker
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    spec = seen["spec"]
    assert (spec["name"], spec["queue"], spec["max_retries"]) == ("acme.thumbnails", "images", 2)
    assert spec["non_retryable"] == ["builtins.ValueError"]
    assert spec["args_schema"]["properties"]["quality"]["maximum"] == 100
    assert spec["args_schema"]["required"] == ["sizes"]
    assert "images" in seen["queues"]
    assert seen["returned"] == {"made": 2}
    assert seen["progress"] == {"current": 2, "total": 2, "message": "128px"}
    assert seen["file"] == ["64px@90\n128px@90\n", "text/plain", "text/plain"]
    assert seen["retry"] == [True, 60.0]


def test_a_project_with_its_own_shared_package_is_told_why_jobrelay_cannot_load(tmp_path: Path) -> None:
    # Given: a user project with a top-level package named like one of jobrelay's internals
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text('"""The user\'s own shared code."""\n')

    # When: it imports jobrelay
    result = run_python("import jobrelay", cwd=tmp_path)

    # Then: one clear error naming the package and where the foreign one is
    assert result.returncode != 0
    assert "ImportError: jobrelay needs its own top-level package 'shared'" in result.stderr
    assert str(tmp_path / "shared") in result.stderr
