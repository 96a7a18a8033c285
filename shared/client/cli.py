"""The ``jobrelay`` client commands: the whole API from a shell (``docs/cli.md`` lists every one).

Connection settings come from ``--url``/``--token``, else ``JOBRELAY_URL`` (else the API that
``API_BIND`` names, else 127.0.0.1:8000) and ``JOBRELAY_TOKEN``, else (token only) the key
``jobrelay up`` leaves in ``$DATA_DIR/dev-api-key``, so a laptop needs no setup. People get
tables; ``--json`` prints the API's JSON for scripts. Exit codes are ``EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.client.calls import DEFAULT_URL

#: The exit codes of every client command (docs/cli.md has the same table).
EXIT_CODES = {
    0: "done; for a command that waits, the job succeeded",
    1: "a job the command waited for ended failed, cancelled or expired",
    2: "an error: bad usage, the API refused (4xx/5xx), unreachable, or a wait timed out",
    130: "interrupted (Ctrl-C)",
}
COMMANDS = frozenset({"submit", "status", "jobs", "dead", "queues", "schedules", "workflows", "tasks", "completion"})
_HELP = argparse.ArgumentDefaultsHelpFormatter


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


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None, help=f"API base URL; else JOBRELAY_URL, else from API_BIND, else {DEFAULT_URL}"
    )
    common.add_argument(
        "--token",
        default=None,
        help="API token; else JOBRELAY_TOKEN, else $DATA_DIR/dev-api-key (prefer the variable: command lines show)",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return common


def _task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arg",
        dest="arg",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="one task argument, repeatable; VALUE is JSON when it parses (seconds=2 is a number), else text",
    )
    parser.add_argument(
        "--json-args", type=_json_object, default=None, metavar="JSON", help="arguments as a JSON object; --arg wins"
    )


def _group(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HELP)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add every client command to the ``jobrelay`` command's subparsers."""
    common = _common()

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
    ) -> argparse.ArgumentParser:
        return group.add_parser(name, parents=[common], help=help_text, description=help_text, formatter_class=_HELP)

    submit = command(commands, "submit", "submit a job to a running API")
    submit.add_argument("task", help="task name, such as diagnostics.echo")
    _task_args(submit)
    submit.add_argument("--queue", default=None, help="queue override; none: the task's queue")
    submit.add_argument("--delay", type=float, default=None, metavar="S", help="run no sooner than S seconds from now")
    submit.add_argument("--priority", type=int, default=None, metavar="N", help="0 to 9, higher first")
    submit.add_argument("--max-retries", type=int, default=None, metavar="N", help="none: the task's own")
    submit.add_argument("--idempotency-key", default=None, metavar="KEY", help="repeats with it return the same job")
    submit.add_argument(
        "--callback-url", default=None, metavar="URL", help="POST the job's final state there, signed; none: no push"
    )
    submit.add_argument("--wait", action="store_true", help="wait for a final state; exit 0 only if it succeeded")
    submit.add_argument("--timeout", type=float, default=60.0, metavar="S", help="--wait gives up after S seconds")

    status = command(commands, "status", "show a job (jobs get)")
    status.add_argument("job_id", metavar="ID", help="job id, as submit prints it")
    status.add_argument("--watch", action="store_true", help="show live progress until the job is final")

    jobs = _group(commands, "jobs", "list, read, wait for, cancel and retry jobs")
    listing = command(jobs, "list", "one page of jobs, newest first")
    for name in ("status", "task", "queue", "workflow-id", "schedule-id"):
        listing.add_argument(f"--{name}", default=None, help=f"only jobs with this {name.replace('-', ' ')}")
    listing.add_argument("--created-after", default=None, metavar="TIME", help="RFC 3339; only jobs created after")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="jobs per page, 1 to 500")
    listing.add_argument("--cursor", default=None, help="next_cursor of the page before")
    for name, help_text in (
        ("get", "show a job"),
        ("cancel", "cancel a job that is not final"),
        ("retry", "run a failed, cancelled or expired job again"),
        ("result", "print a succeeded job's result"),
    ):
        command(jobs, name, help_text).add_argument("job_id", metavar="ID", help="the job's id")
    wait = command(jobs, "wait", "wait until a job is final; exit 0 only if it succeeded")
    wait.add_argument("job_id", metavar="ID", help="the job's id")
    wait.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (exit 2)")
    wait.add_argument("--watch", action="store_true", help="draw live progress while waiting")

    dead = _group(commands, "dead", "dead letters: jobs that failed for good, by queue")
    dead_list = command(dead, "list", "a queue's dead letters, newest first")
    dead_list.add_argument("queue", metavar="QUEUE", help="the queue's name")
    dead_list.add_argument("--limit", type=int, default=50, metavar="N", help="jobs per page, 1 to 500")
    dead_list.add_argument("--cursor", default=None, help="next_cursor of the page before")
    requeue = command(dead, "requeue", "put dead letters back in their queue (admin)")
    requeue.add_argument("queue", metavar="QUEUE", help="the queue's name")
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", default=None, metavar="ID", help="a job, repeatable")
    which.add_argument("--all", action="store_true", help="every dead letter of the queue")

    queues = command(commands, "queues", "list queues, or pause or resume one (admin)")
    queues.add_argument(
        "action", nargs="?", choices=["list", "pause", "resume"], default="list", help="what to do with queues"
    )
    queues.add_argument("name", nargs="?", default=None, metavar="NAME", help="the queue to pause or resume")

    schedules = _group(commands, "schedules", "recurring jobs: list, create, change, delete, pause, resume, trigger")
    command(schedules, "list", "every schedule (API, file and built in)")
    for name, help_text in (
        ("get", "show a schedule"),
        ("delete", "delete a schedule made over the API (admin)"),
        ("pause", "disable a schedule (admin)"),
        ("resume", "enable a schedule again, from its next tick (admin)"),
        ("trigger", "run the schedule's task once now (admin)"),
    ):
        command(schedules, name, help_text).add_argument("schedule_id", metavar="ID", help="the schedule's id")
    for name, help_text in (("create", "create a schedule (admin)"), ("update", "change a schedule (admin)")):
        parser = command(schedules, name, help_text)
        parser.add_argument("schedule_id", metavar="ID", help="the schedule's id")
        parser.add_argument("--task", required=name == "create", default=None, help="task name")
        _task_args(parser)
        timing = parser.add_mutually_exclusive_group(required=name == "create")
        timing.add_argument("--cron", default=None, help="5 crontab fields or @daily etc., in --timezone")
        timing.add_argument("--interval", type=int, default=None, metavar="S", help="every S seconds")
        parser.add_argument("--timezone", default=None, help="IANA zone name; none: UTC (create), unchanged (update)")
        parser.add_argument("--misfire", choices=["coalesce", "skip"], default=None, help="ticks missed in a gap")
        if name == "create":
            parser.add_argument("--disabled", action="store_true", help="create it paused")

    workflows = _group(commands, "workflows", "submit and read workflows (chains, groups, chords)")
    workflow_submit = command(workflows, "submit", "submit a workflow from JSON (see docs/api.md, Workflows)")
    workflow_submit.add_argument("workflow", metavar="JSON", help="the workflow body, or @FILE to read it from a file")
    command(workflows, "get", "show a workflow and its jobs").add_argument(
        "workflow_id", metavar="ID", help="the workflow's id"
    )

    tasks = _group(commands, "tasks", "the registered task catalog")
    command(tasks, "list", "every registered task")
    command(tasks, "show", "one task: its options and its arguments' schema").add_argument(
        "name", metavar="NAME", help="task name"
    )

    completion = commands.add_parser(
        "completion", help="print a shell completion script", description="source its output", formatter_class=_HELP
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="your shell")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a parsed client command; return the process exit code (``EXIT_CODES``)."""
    from shared.client.commands import dispatch

    return dispatch(args, parser)
