"""What each client command of ``jobrelay`` does, through the httpx ``Client``; the parser is in ``cli.py``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared.client import ApiUnauthorized, ClientError, ConnectionFailed, Job, WaitTimeout
from shared.client.calls import default_url
from shared.client.output import ProgressView, emit
from shared.client.sync import Client

DEV_KEY_FILE = "dev-api-key"
WATCH_POLL_S = 0.2
JOB_COLUMNS = ("id", "task", "queue", "status", "attempts", "created_at", "finished_at")
QUEUE_COLUMNS = ("name", "depth", "delayed", "in_progress", "dead", "oldest_age_s", "paused")
SCHEDULE_COLUMNS = ("id", "task", "cron", "interval_s", "timezone", "enabled", "next_run_at", "source")
TASK_COLUMNS = ("name", "queue", "max_retries", "time_limit_s", "priority", "description")


class UsageError(Exception):
    """A problem with the command's own setup (token file, URL, arguments), reported like API errors."""


def read_dev_token(data_dir: Path) -> str | None:
    """The token of ``DATA_DIR/dev-api-key`` (``name:token:scopes``), or None when there is no file."""
    path = data_dir / DEV_KEY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    entries = text.split()
    parts = entries[0].split(":") if entries else []
    if len(parts) != 3 or not parts[1]:
        raise UsageError(f"{path} is not in the name:token:scopes format")
    return parts[1]


def connect(url: str | None, token: str | None, environ: Mapping[str, str] | None = None) -> Client:
    """A client from options, then the environment (``API_BIND`` too), then the dev key file."""
    env = os.environ if environ is None else environ
    base_url = url or default_url(env)
    if not base_url.startswith(("http://", "https://")):
        raise UsageError(f"--url/JOBRELAY_URL must be an http:// or https:// URL, got {base_url!r}")
    token = token or env.get("JOBRELAY_TOKEN") or read_dev_token(Path(env.get("DATA_DIR") or ".data")) or ""
    return Client(base_url, token)


def _show(args: argparse.Namespace, value: Any, columns: tuple[str, ...] = ()) -> int:
    emit(value, as_json=args.json, out=sys.stdout, columns=columns)
    return 0


def _final(args: argparse.Namespace, job: Job) -> int:
    if args.json or not getattr(args, "watch", False):
        _show(args, job)
    error = job.get("error")
    if isinstance(error, dict) and not args.json:
        print(f"error: {error.get('type')}: {error.get('message')}")
    return 0 if job.get("status") == "succeeded" else 1


def _wait(client: Client, args: argparse.Namespace, job_id: str, timeout_s: float | None) -> int:
    if not getattr(args, "watch", False):
        return _final(args, client.wait(job_id, timeout_s=timeout_s))
    view = ProgressView(sys.stdout)
    try:
        final = client.wait(job_id, timeout_s=timeout_s, poll_s=WATCH_POLL_S, on_update=view.update)
    finally:
        view.close()
    return _final(args, final)


def _task_args(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.json_args is None and not args.arg:
        return None
    task_args = dict(args.json_args or {})
    task_args.update(dict(args.arg))
    return task_args


def _submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit(
        args.task,
        _task_args(args) or {},
        queue=args.queue,
        delay_s=args.delay,
        priority=args.priority,
        max_retries=args.max_retries,
        idempotency_key=args.idempotency_key,
        callback_url=args.callback_url,
    )
    if not args.wait:
        return _show(args, job)
    print(f"jobrelay submit: job {job['id']} {job['status']}, waiting up to {args.timeout:g}s", file=sys.stderr)
    return _final(args, client.wait(job["id"], timeout_s=args.timeout))


def _status(client: Client, args: argparse.Namespace) -> int:
    if args.watch:
        return _wait(client, args, args.job_id, None)
    return _show(args, client.get(args.job_id))


def _jobs(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        filters = {
            "status": args.status,
            "task": args.task,
            "queue": args.queue,
            "workflow_id": args.workflow_id,
            "schedule_id": args.schedule_id,
            "created_after": args.created_after,
        }
        page = client.list_jobs(limit=args.limit, cursor=args.cursor, **filters)
        return _page(args, page, JOB_COLUMNS)
    if args.action == "wait":
        return _wait(client, args, args.job_id, args.timeout)
    if args.action == "result":
        result = client.result(args.job_id)
        if isinstance(result, bytes):
            sys.stdout.buffer.write(result)
            return 0
        print(json.dumps(result, indent=None if args.json else 2, default=str))
        return 0
    call: Callable[[str], Job] = {"get": client.get, "cancel": client.cancel, "retry": client.retry_job}[args.action]
    return _show(args, call(args.job_id))


def _page(args: argparse.Namespace, page: dict[str, Any], columns: tuple[str, ...]) -> int:
    if args.json:
        return _show(args, page)
    _show(args, page["items"], columns)
    if page.get("next_cursor"):
        print(f"more: --cursor {page['next_cursor']}")
    return 0


def _dead(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _page(args, client.dead_letters(args.queue, limit=args.limit, cursor=args.cursor), JOB_COLUMNS)
    requeued = client.requeue_dead(args.queue, None if args.all else args.ids)
    return _show(args, {"requeued": requeued})


def _queues(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.name is not None:
            raise UsageError("jobrelay queues list takes no NAME")
        items = client.queues()
        return _show(args, {"items": items} if args.json else items, QUEUE_COLUMNS)
    if args.name is None:
        raise UsageError(f"jobrelay queues {args.action} needs the queue's NAME")
    change = client.pause_queue if args.action == "pause" else client.resume_queue
    return _show(args, change(args.name))


def _schedules(client: Client, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        items = client.schedules()
        return _show(args, {"items": items} if args.json else items, SCHEDULE_COLUMNS)
    if action == "get":
        return _show(args, client.get_schedule(args.schedule_id))
    if action == "delete":
        client.delete_schedule(args.schedule_id)
        return _show(args, {"deleted": args.schedule_id})
    if action in ("pause", "resume"):
        return _show(args, client.update_schedule(args.schedule_id, enabled=action == "resume"))
    if action == "trigger":
        return _show(args, client.trigger_schedule(args.schedule_id))
    fields: dict[str, Any] = {
        "task": args.task,
        "args": _task_args(args),
        "cron": args.cron,
        "interval_s": args.interval,
        "timezone": args.timezone,
        "misfire": args.misfire,
    }
    if action == "create":
        body = {"id": args.schedule_id, **{k: v for k, v in fields.items() if v is not None}}
        body.setdefault("args", {})
        if args.disabled:
            body["enabled"] = False
        return _show(args, client.create_schedule(body))
    return _show(args, client.update_schedule(args.schedule_id, **fields))


def _workflows(client: Client, args: argparse.Namespace) -> int:
    if args.action == "get":
        return _show(args, client.get_workflow(args.workflow_id))
    raw: str = args.workflow
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {raw[1:]}: {exc.strerror}") from None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"the workflow is not valid JSON: {exc}") from None
    return _show(args, client.submit_workflow(body))


def _tasks(client: Client, args: argparse.Namespace) -> int:
    items = client.tasks()
    if args.action == "list":
        return _show(args, {"items": items} if args.json else items, TASK_COLUMNS)
    found = [item for item in items if item.get("name") == args.name]
    if not found:
        known = ", ".join(sorted(str(item.get("name")) for item in items))
        raise UsageError(f"no task {args.name!r} is registered (known: {known})")
    return _show(args, found[0])


def _completion(args: argparse.Namespace, parser: argparse.ArgumentParser | None) -> int:
    import shtab

    if parser is None:
        raise UsageError("completion needs the whole jobrelay parser")
    print(shtab.complete(parser, shell=args.shell))
    return 0


HANDLERS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": _submit,
    "status": _status,
    "jobs": _jobs,
    "dead": _dead,
    "queues": _queues,
    "schedules": _schedules,
    "workflows": _workflows,
    "tasks": _tasks,
}


def _explain(exc: ClientError) -> str:
    """The error's one line plus what to do about the usual setup mistakes."""
    if isinstance(exc, ApiUnauthorized):
        return f"{exc} (give a token: JOBRELAY_TOKEN or --token)"
    if isinstance(exc, ConnectionFailed):
        return f"{exc} (is the API running? set JOBRELAY_URL or --url)"
    if isinstance(exc, WaitTimeout):
        return f"{exc} (the job goes on; wait again with jobrelay jobs wait)"
    return str(exc)


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser | None) -> int:
    command = args.command
    try:
        if command == "completion":
            return _completion(args, parser)
        with connect(args.url, args.token) as client:
            return HANDLERS[command](client, args)
    except (ClientError, UsageError) as exc:
        message = _explain(exc) if isinstance(exc, ClientError) else str(exc)
        print(f"jobrelay {command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
