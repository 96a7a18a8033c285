"""``jobrelay submit`` and ``jobrelay status``: the API from a shell, through ``shared.client``.

Connection settings come from ``--url``/``--token``, else ``JOBRELAY_URL`` and
``JOBRELAY_TOKEN``, else (token only) the key ``jobrelay up`` leaves in
``$DATA_DIR/dev-api-key``, so a laptop needs no setup. Exit codes: 0 job
succeeded (or plain ``status``), 1 job ended otherwise, 2 any error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from shared.client import ApiUnauthorized, ClientError, ConnectionFailed, Job, JobrelayClient

COMMANDS = frozenset({"submit", "status", "queues"})
DEFAULT_URL = "http://127.0.0.1:8000"
DEV_KEY_FILE = "dev-api-key"
BAR_WIDTH = 20
WATCH_POLL_S = 0.2


class UsageError(Exception):
    """A problem with the command's own setup (token file, URL), reported like API errors."""


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_value(raw: str) -> Any:
    """``2`` -> 2, ``true`` -> True, ``[1]`` -> [1], ``hi`` -> "hi": JSON when it parses, else the text."""
    try:
        return json.loads(raw, parse_constant=_json_constant)
    except ValueError:
        return raw


def _key_value(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {raw!r}")
    return key, parse_value(value)


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw, parse_constant=_json_constant)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, such as '{\"seconds\": 2}'")
    return value


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``submit``, ``status`` and ``queues`` to the ``jobrelay`` command's subparsers."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=None, help=f"API base URL (JOBRELAY_URL, default {DEFAULT_URL})")
    connection.add_argument(
        "--token",
        default=None,
        help="API token (JOBRELAY_TOKEN, else $DATA_DIR/dev-api-key); prefer the variable, command lines are visible",
    )

    submit = subparsers.add_parser("submit", parents=[connection], help="submit a job to a running API")
    submit.add_argument("task", help="task name, such as diagnostics.echo")
    submit.add_argument(
        "--arg",
        dest="arg",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="one task argument; VALUE is JSON when it parses (seconds=2 is a number), else text",
    )
    submit.add_argument(
        "--json-args", type=_json_object, default=None, metavar="JSON", help="arguments as a JSON object; --arg wins"
    )
    submit.add_argument("--queue", default=None, help="queue override")
    submit.add_argument("--delay", type=float, default=None, metavar="S", help="run no sooner than S seconds from now")
    submit.add_argument("--priority", type=int, default=None, metavar="N")
    submit.add_argument("--max-retries", type=int, default=None, metavar="N")
    submit.add_argument("--idempotency-key", default=None, metavar="KEY", help="repeats with it return the same job")
    submit.add_argument("--wait", action="store_true", help="wait for a final state; exit 0 only if it succeeded")
    submit.add_argument("--timeout", type=float, default=60.0, metavar="S", help="--wait gives up after S seconds")

    status = subparsers.add_parser("status", parents=[connection], help="show a job")
    status.add_argument("job_id", metavar="ID", help="job id, as submit prints it")
    status.add_argument("--watch", action="store_true", help="show live progress until the job is final")

    queues = subparsers.add_parser("queues", parents=[connection], help="list, pause or resume queues")
    queues.add_argument("action", nargs="?", choices=["list", "pause", "resume"], default="list")
    queues.add_argument("name", nargs="?", default=None, metavar="NAME", help="the queue to pause or resume")


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


def connect(url: str | None, token: str | None, environ: Mapping[str, str] | None = None) -> JobrelayClient:
    """A client from options, then the environment, then the dev key file."""
    env = os.environ if environ is None else environ
    base_url = url or env.get("JOBRELAY_URL") or DEFAULT_URL
    token = token or env.get("JOBRELAY_TOKEN") or read_dev_token(Path(env.get("DATA_DIR") or ".data")) or ""
    try:
        return JobrelayClient(base_url, token)
    except ValueError as exc:
        raise UsageError(f"--url/JOBRELAY_URL: {exc}") from None


def render_progress(job: Mapping[str, Any], width: int = BAR_WIDTH) -> str:
    """``[#########-----------]  45%  sleeping  (running)`` for a job's ``progress`` and status."""
    status = str(job.get("status"))
    raw = job.get("progress")
    progress: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    current, total = progress.get("current"), progress.get("total")
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        fraction = min(max(current / total, 0.0), 1.0)
    else:
        fraction = 1.0 if status == "succeeded" else 0.0
    filled = int(fraction * width + 1e-9)
    line = f"[{'#' * filled}{'-' * (width - filled)}] {int(fraction * 100 + 1e-9):3d}%"
    # Task-supplied text: collapse whitespace so it cannot break the redrawn line.
    message = " ".join(str(progress.get("message") or "").split())[:60]
    if message:
        line += f"  {message}"
    return f"{line}  ({status})"


class ProgressView:
    """Redraw one line in place on a terminal; elsewhere print a line each time it changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def update(self, job: Job) -> None:
        line = render_progress(job)
        if line == self.last:
            return
        self.out.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.out.flush()
        self.last = line

    def close(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


def _print_json(job: Any) -> None:
    print(json.dumps(job, indent=2))


def _exit_code(job: Job) -> int:
    return 0 if job.get("status") == "succeeded" else 1


def _submit(client: JobrelayClient, args: argparse.Namespace) -> int:
    task_args = dict(args.json_args or {})
    task_args.update(dict(args.arg))
    job = client.submit(
        args.task,
        task_args,
        queue=args.queue,
        delay_s=args.delay,
        priority=args.priority,
        max_retries=args.max_retries,
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        _print_json(job)
        return 0
    print(f"jobrelay submit: job {job['id']} {job['status']}, waiting up to {args.timeout:g}s", file=sys.stderr)
    final = client.wait(job["id"], timeout_s=args.timeout)
    _print_json(final)
    return _exit_code(final)


def _status(client: JobrelayClient, args: argparse.Namespace) -> int:
    if not args.watch:
        _print_json(client.get(args.job_id))
        return 0
    view = ProgressView(sys.stdout)
    try:
        final = client.wait(args.job_id, timeout_s=None, poll_s=WATCH_POLL_S, on_update=view.update)
    finally:
        view.close()
    error = final.get("error")
    if isinstance(error, dict):
        print(f"error: {error.get('type')}: {error.get('message')}")
    return _exit_code(final)


def _queues(client: JobrelayClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.name is not None:
            raise UsageError("jobrelay queues list takes no NAME")
        _print_json({"items": client.queues()})
        return 0
    if args.name is None:
        raise UsageError(f"jobrelay queues {args.action} needs the queue's NAME")
    change = client.pause_queue if args.action == "pause" else client.resume_queue
    _print_json(change(args.name))
    return 0


def _explain(exc: ClientError) -> str:
    """The error's one line plus what to do about the usual setup mistakes."""
    if isinstance(exc, ApiUnauthorized):
        return f"{exc} (give a token: JOBRELAY_TOKEN or --token)"
    if isinstance(exc, ConnectionFailed):
        return f"{exc} (is the API running? set JOBRELAY_URL or --url)"
    return str(exc)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``submit``, ``status`` or ``queues`` command; return the process exit code."""
    command = args.command
    try:
        client = connect(args.url, args.token)
        if command == "submit":
            return _submit(client, args)
        if command == "status":
            return _status(client, args)
        if command == "queues":
            return _queues(client, args)
        raise UsageError(f"not a client command: {command!r}")
    except (ClientError, UsageError) as exc:
        message = _explain(exc) if isinstance(exc, ClientError) else str(exc)
        print(f"jobrelay {command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
