"""Every console page over a real store and Redis: what it shows, and what its buttons do."""

from __future__ import annotations

import os
import re
import socket

import redis

from shared.broker.workers import describe_worker
from shared.job import JobStatus, utcnow
from shared.store.attempts import ClaimRequest, FinishRequest
from shared.store.jobs import JobFilter, JobStore
from shared.store.schedules import ScheduleStore
from tests.services.api.conftest import ADMIN
from tests.services.api.console.conftest import Browser
from tests.shared.store.test_jobs import make_job

BEARER = {"Authorization": f"Bearer {ADMIN}"}
NIGHTLY = {"id": "nightly-echo", "task": "diagnostics.echo", "args": {"message": "good night"},
           "cron": "0 2 * * *", "timezone": "Europe/Berlin"}  # fmt: skip


def failed(**overrides: object):  # type: ignore[no-untyped-def]
    now = utcnow()
    values: dict[str, object] = {
        "status": JobStatus.FAILED,
        "dead": True,
        "started_at": now,
        "finished_at": now,
        "attempts": 1,
        "error": {"type": "ValueError", "message": "bad", "retryable": False},
    }
    return make_job(**{**values, **overrides})


def test_overview_shows_queues_workers_scheduler_and_totals(
    admin: Browser, store: JobStore, redis_client: redis.Redis
) -> None:
    # Given jobs in several states, a worker's heartbeat and a scheduler leader
    store.insert([make_job(), make_job(), failed()])
    redis_client.zadd("dramatiq:__heartbeats__", {"hostA-0-abcdef123456": int(utcnow().timestamp() * 1000)})
    describe_worker(redis_client, "hostA-0-abcdef123456", queues=["emails", "default"], processes=2, threads=4)
    redis_client.set("jobrelay:scheduler:leader", "sched-1")
    # When the overview and its live part are fetched
    page = admin.get("/console/")
    live = admin.get("/console/", part="live")
    # Then both show them; the live part is the fragment the page polls
    for text in (page.text, live.text):
        assert re.search(r'id="total-queued">2<', text)
        assert re.search(r'id="total-failed">1<', text)
        assert "hostA-0-abcdef123456" in text
        described = f"<td>{socket.gethostname()}</td><td>{os.getpid()}</td><td>default, emails</td>"
        assert described + "<td>2 \N{MULTIPLICATION SIGN} 4</td>" in text
        assert "sched-1" in text
        assert '<td><a href="/console/jobs?queue=default">default</a></td>' in text
    assert 'data-live="/console/?part=live"' in page.text
    assert "<html" not in live.text


def test_job_list_filters_searches_and_pages(admin: Browser, store: JobStore) -> None:
    jobs = [make_job(args={"message": f"m{i}"}) for i in range(60)]
    special = make_job(task="diagnostics.sleep", args={"seconds": 1}, idempotency_key="order-42")
    store.insert([*jobs, special, failed()])
    first = admin.get("/console/jobs")
    assert first.text.count('name="ids"') == 50
    older = re.search(r'href="(/console/jobs\?cursor=[^"]+)" id="older"', first.text)
    assert older
    second = admin.get(older.group(1).replace("&amp;", "&"))
    assert second.text.count('name="ids"') == 12
    assert admin.get("/console/jobs", status="failed").text.count('name="ids"') == 1
    assert admin.get("/console/jobs", task="diagnostics.sleep").text.count('name="ids"') == 1
    assert special.id in admin.get("/console/jobs", q="order-42").text
    assert jobs[7].id in admin.get("/console/jobs", q="m7").text
    bad = admin.get("/console/jobs", status="nonsense")
    assert bad.status_code == 422 and "must be one of" in bad.text


def test_bulk_cancel_of_everything_matching_counts_then_confirms(writer: Browser, store: JobStore) -> None:
    # Given 3 queued echo jobs and one sleep job
    echoes = [make_job() for _ in range(3)]
    other = make_job(task="diagnostics.sleep", args={"seconds": 1})
    store.insert([*echoes, other])
    csrf = writer.csrf()
    form = {"csrf": csrf, "action": "cancel", "every": "1", "task": "diagnostics.echo"}
    # When the bulk form is sent: a confirmation with the count, nothing changed yet
    asked = writer.post("/console/jobs/bulk", form)
    assert asked.status_code == 200
    assert "Cancel 3 jobs?" in asked.text
    assert all(store.get(job.id).status == JobStatus.QUEUED for job in echoes)
    # Then confirming cancels exactly the matching ones
    done = writer.post("/console/jobs/bulk", {**form, "confirm": "1"})
    assert "3 done" in done.text
    assert all(store.get(job.id).status == JobStatus.CANCELLED for job in echoes)
    assert store.get(other.id).status == JobStatus.QUEUED


def test_bulk_retry_of_ticked_jobs(writer: Browser, store: JobStore) -> None:
    gone, kept = failed(), failed()
    store.insert([gone, kept])
    done = writer.post(
        "/console/jobs/bulk", {"csrf": writer.csrf(), "action": "retry", "ids": [gone.id], "confirm": "1"}
    )
    assert "1 done" in done.text
    assert store.get(gone.id).status == JobStatus.QUEUED and not store.get(gone.id).dead
    assert store.get(kept.id).status == JobStatus.FAILED


def test_job_page_shows_arguments_progress_error_and_result(admin: Browser, store: JobStore) -> None:
    running = make_job(status=JobStatus.RUNNING, started_at=utcnow(), attempts=1, lease_owner="hostA-0-x",
                       progress={"current": 3, "total": 4, "message": "sleeping"})  # fmt: skip
    done = make_job(status=JobStatus.SUCCEEDED, result={"answer": 42}, started_at=utcnow(), finished_at=utcnow())
    store.insert([running, done])
    page = admin.get(f"/console/jobs/{running.id}")
    assert 'id="progress" max="100" value="75"' in page.text and "sleeping" in page.text
    assert "&#34;message&#34;: &#34;hi&#34;" in page.text
    assert 'id="cancel"' in page.text
    live = admin.get(f"/console/jobs/{running.id}", part="live")
    assert 'data-state="live"' in live.text
    shown = admin.get(f"/console/jobs/{done.id}")
    assert "&#34;answer&#34;: 42" in shown.text and 'data-state="final"' in shown.text
    assert admin.get(f"/console/jobs/{done.id}/result").json == {"answer": 42}
    assert admin.get("/console/jobs/0193aaaa-0000-7000-8000-000000000000").status_code == 404


def test_job_page_timeline_shows_each_attempt_its_error_and_the_backoff_between(
    admin: Browser, reader: Browser, store: JobStore
) -> None:
    # Given a job whose first attempt failed on one worker and was retried, then succeeded on another
    job = make_job()
    store.insert([job])
    error = {"type": "OSError", "message": "mail server down", "retryable": True,
             "traceback": "Traceback (most recent call last):\n  File task.py\nOSError: mail server down"}  # fmt: skip
    ends = ((JobStatus.RETRYING, "hostA:11", {"error": error}), (JobStatus.SUCCEEDED, "hostB:22", {"result": 1}))
    for status, owner, fields in ends:
        [claim], _ = store.commit_batch([ClaimRequest(job.id, owner, 30)], [])
        assert claim.job is not None
        store.commit_batch(
            [], [FinishRequest(job.id, owner, status, attempt=claim.job.attempts, started_at=claim.job.started_at,
                               **fields)]  # type: ignore[arg-type]
        )  # fmt: skip
    # When an admin opens its page
    page = admin.get(f"/console/jobs/{job.id}").text
    # Then each attempt is on the timeline with its worker, outcome and error, and the backoff between them
    assert re.search(r'id="attempt-1" data-outcome="retrying">\s*attempt 1 on <code>hostA:11</code>', page)
    assert re.search(r'id="attempt-2" data-outcome="succeeded">\s*attempt 2 on <code>hostB:22</code>', page)
    assert "<b>OSError</b>: mail server down" in page
    assert "backoff: waited" in page and "before attempt 2" in page
    assert 'class="traceback"' in page
    # A read key sees the error, not the traceback
    shown = reader.get(f"/console/jobs/{job.id}").text
    assert "<b>OSError</b>: mail server down" in shown and 'class="traceback"' not in shown


def test_cancel_and_retry_buttons(writer: Browser, store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    csrf = writer.csrf()
    assert writer.post(f"/console/jobs/{job.id}/cancel", {"csrf": csrf}).status_code == 303
    assert store.get(job.id).status == JobStatus.CANCELLED
    again = writer.post(f"/console/jobs/{job.id}/cancel", {"csrf": csrf})
    assert again.status_code == 409 and "already cancelled" in again.text
    assert writer.post(f"/console/jobs/{job.id}/retry", {"csrf": csrf}).status_code == 303
    assert store.get(job.id).status == JobStatus.QUEUED


def test_dead_letters_grouped_and_requeued_by_group_one_or_all(admin: Browser, store: JobStore) -> None:
    value_errors = [failed() for _ in range(3)]
    timeout = failed(error={"type": "TimeoutError", "message": "slow"})
    lone = failed(task="diagnostics.fail", args={})
    store.insert([*value_errors, timeout, lone])
    page = admin.get("/console/dead")
    assert 'id="dead-total">5<' in page.text
    assert "<td><b>ValueError</b></td><td>3</td>" in page.text
    csrf = admin.csrf("/console/dead")
    group = {"csrf": csrf, "scope": "group", "queue": "default", "task": "diagnostics.echo", "error_type": "ValueError"}
    assert "3 requeued" in admin.post("/console/dead", group).text
    assert all(not store.get(job.id).dead for job in value_errors)
    assert store.get(timeout.id).dead
    assert "1 requeued" in admin.post("/console/dead", {"csrf": csrf, "scope": "one", "id": lone.id}).text
    assert "1 requeued" in admin.post("/console/dead", {"csrf": csrf, "scope": "all"}).text
    assert store.get(timeout.id).status == JobStatus.QUEUED


def test_schedules_in_words_next_fires_pause_resume_trigger_and_edit(
    admin: Browser,
    store: JobStore,
    engine,  # type: ignore[no-untyped-def]
) -> None:
    assert admin.client.simulate_post("/v1/schedules", json=NIGHTLY, headers=BEARER).status_code == 201
    listing = admin.get("/console/schedules")
    assert "At 02:00 (Europe/Berlin)" in listing.text
    page = admin.get("/console/schedules/nightly-echo")
    assert page.text.count("<li>20") == 5  # the next five fires
    csrf = admin.csrf("/console/schedules/nightly-echo")
    schedules = ScheduleStore(engine)
    assert admin.post("/console/schedules/nightly-echo", {"csrf": csrf, "action": "pause"}).status_code == 303
    assert not schedules.get("nightly-echo").enabled
    assert "none while paused" in admin.get("/console/schedules/nightly-echo").text
    assert admin.post("/console/schedules/nightly-echo", {"csrf": csrf, "action": "resume"}).status_code == 303
    assert schedules.get("nightly-echo").enabled
    fired = admin.post("/console/schedules/nightly-echo", {"csrf": csrf, "action": "trigger"})
    job_id = fired.headers["Location"].rsplit("/", 1)[1]
    assert store.get(job_id).schedule_id == "nightly-echo"
    edit = {"csrf": csrf, "action": "edit", "cron": "*/5 * * * *", "interval_s": "", "timezone": "UTC",
            "args": '{"message": "five"}'}  # fmt: skip
    assert admin.post("/console/schedules/nightly-echo", edit).status_code == 303
    assert schedules.get("nightly-echo").cron == "*/5 * * * *"
    wrong = admin.post("/console/schedules/nightly-echo", {**edit, "cron": "99 * * * *"})
    assert wrong.status_code == 422 and "/cron" in wrong.text


def test_task_form_submits_and_shows_schema_errors_beside_fields(writer: Browser, store: JobStore) -> None:
    assert "diagnostics.sleep" in writer.get("/console/tasks").text
    form = writer.get("/console/tasks/diagnostics.sleep")
    assert 'name="arg.seconds"' in form.text
    csrf = writer.csrf("/console/tasks/diagnostics.sleep")
    bad = writer.post("/console/tasks/diagnostics.sleep", {"csrf": csrf, "arg.seconds": "soon"})
    assert bad.status_code == 422
    assert re.search(r'<p class="field-error" id="error-seconds">[^<]+</p>', bad.text)
    good = writer.post("/console/tasks/diagnostics.sleep", {"csrf": csrf, "arg.seconds": "0.1"})
    assert good.status_code == 303
    assert store.get(good.headers["Location"].rsplit("/", 1)[1]).args == {"seconds": 0.1}


def test_workflow_drawn_as_an_svg_graph_linking_each_step(admin: Browser) -> None:
    step = {"task": "diagnostics.echo", "args": {"message": "x"}}
    made = admin.client.simulate_post("/v1/workflows", json={"type": "chord", "steps": [step, step], "callback": step},
                                      headers=BEARER).json  # fmt: skip
    assert made["id"] in admin.get("/console/workflows").text
    page = admin.get(f"/console/workflows/{made['id']}")
    assert '<svg id="graph"' in page.text
    for job_id in [*made["jobs"], made["callback_job"]]:
        assert f'href="/console/jobs/{job_id}"' in page.text
    assert page.text.count("<line ") == 2


def test_charts_from_the_store(admin: Browser, store: JobStore) -> None:
    store.insert([make_job(status=JobStatus.SUCCEEDED, started_at=utcnow(), finished_at=utcnow()), failed()])
    page = admin.get("/console/charts")
    assert "<polyline points=" in page.text
    assert "50.0% failed" in page.text
    assert "<td>diagnostics.echo</td><td>1</td>" in page.text


def test_static_files_and_unknown_ones(browser: Browser) -> None:
    assert browser.get("/console/static/console.css").status_code == 200
    assert browser.get("/console/static/console.js").headers["content-type"].startswith("text/javascript")
    assert browser.get("/console/static/..%2Fweb.py").status_code == 404


def test_grafana_link_only_when_grafana_url_is_set(admin: Browser, settings, store, registry) -> None:  # type: ignore[no-untyped-def]
    import falcon.testing

    from services.api.app import create_app
    from shared.broker.publishing import build_broker
    from tests.services.api.console.conftest import logged_in

    assert "Grafana" not in admin.get("/console/").text
    linked = settings.with_overrides(grafana_url="https://grafana.example.org/d/jobrelay")
    app = create_app(linked, store=store, registry=registry, broker=build_broker(settings.redis_url))
    page = logged_in(app, ADMIN).get("/console/")
    assert '<a href="https://grafana.example.org/d/jobrelay" rel="noopener">Grafana ↗</a>' in page.text
    assert isinstance(app, falcon.App)


def test_job_page_links_to_its_trace_only_when_traces_url_is_set(admin: Browser, settings, store, registry) -> None:  # type: ignore[no-untyped-def]
    from services.api.app import create_app
    from shared.broker.publishing import build_broker
    from tests.services.api.console.conftest import logged_in

    # Given a job submitted in a traced request, and one untraced
    traced, untraced = make_job(), make_job()
    traced.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    store.insert([traced, untraced])
    # Without TRACES_URL no page links anywhere
    assert 'id="trace"' not in admin.get(f"/console/jobs/{traced.id}").text
    # With it, the traced job's page links to its trace, the untraced one's does not
    linked = settings.with_overrides(traces_url="https://tempo.example.org/trace/{trace_id}?from=console")
    app = create_app(linked, store=store, registry=registry, broker=build_broker(settings.redis_url))
    browser = logged_in(app, ADMIN)
    page = browser.get(f"/console/jobs/{traced.id}").text
    assert 'href="https://tempo.example.org/trace/0af7651916cd43dd8448eb211c80319c?from=console"' in page
    assert 'id="trace"' not in browser.get(f"/console/jobs/{untraced.id}").text


def test_bad_input_gets_a_4xx_page_never_a_5xx(writer: Browser, store: JobStore) -> None:
    csrf = writer.csrf("/console/tasks/diagnostics.echo")
    # U+0000 in a form value (PostgreSQL text cannot hold it), a date out of range, a forged cursor
    nul = writer.post("/console/tasks/diagnostics.echo", {"csrf": csrf, "arg.message": "a\x00b"})
    assert nul.status_code == 422 and "U+0000" in nul.text
    assert writer.get("/console/jobs", created_after="0001-01-01T00:00+05:00").status_code == 422
    assert writer.get("/console/jobs", cursor="not-a-cursor").status_code == 422
    assert writer.get("/console/jobs", q="x\x00").status_code == 422
    assert writer.post("/console/jobs/bulk", {"csrf": csrf, "action": "explode"}).status_code == 422
    assert writer.post("/console/jobs/bulk", {"csrf": csrf, "action": "cancel"}).status_code == 422
    broken = writer.client.simulate_post(
        "/console/jobs/bulk",
        body=b"csrf=%ff%fe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        cookies=writer.cookies,
    )
    assert broken.status_code in (400, 403)
    assert writer.get("/console/schedules/no-such-schedule").status_code == 404
    assert writer.get("/console/workflows/no-such-workflow").status_code == 404
    assert writer.get("/console/tasks/no.such_task").status_code == 404
    assert store.page(JobFilter(), limit=5).items == []


def test_admin_pauses_and_resumes_a_queue_from_the_overview(
    admin: Browser,
    writer: Browser,
    redis_client: redis.Redis,
    engine,  # type: ignore[no-untyped-def]
) -> None:
    from shared.broker.pausing import mirrored_pauses
    from shared.store.pauses import QueuePauses

    assert 'id="pause-emails"' in admin.get("/console/").text
    assert 'id="pause-emails"' not in writer.get("/console/").text
    csrf = admin.csrf("/console/")
    # When the admin pauses emails: the store and the Redis mirror say so, and the overview shows it
    assert admin.post("/console/", {"csrf": csrf, "queue": "emails", "action": "pause"}).status_code == 303
    assert QueuePauses(engine).paused() == {"emails"} and mirrored_pauses(redis_client) == {"emails"}
    assert 'id="paused-emails"' in admin.get("/console/", part="live").text
    # A write key may not resume it, even by a direct POST with its own CSRF token
    refused = writer.post("/console/", {"csrf": writer.csrf(), "queue": "emails", "action": "resume"})
    assert refused.status_code == 403
    assert admin.post("/console/", {"csrf": csrf, "queue": "emails", "action": "resume"}).status_code == 303
    assert QueuePauses(engine).paused() == set() and mirrored_pauses(redis_client) == set()
    unknown = admin.post("/console/", {"csrf": csrf, "queue": "nope", "action": "pause"})
    assert unknown.status_code == 404 and "known queues" in unknown.text
