"""The ``jobrelay`` command: ``up``, ``api``, ``worker``, ``scheduler``, and the client commands (``docs/cli.md``)."""

from __future__ import annotations

import argparse
import sys

from shared.catalog import QUEUE_NAME
from shared.client import cli as client_cli
from shared.errors import JobrelayError
from shared.settings import Settings


def _queues(raw: str) -> list[str]:
    queues = [q.strip() for q in raw.split(",") if q.strip()]
    for queue in queues:
        if not QUEUE_NAME.fullmatch(queue):
            raise argparse.ArgumentTypeError(f"{queue!r} is not a queue name")
    if not queues:
        raise argparse.ArgumentTypeError("name at least one queue")
    return queues


def build_parser() -> argparse.ArgumentParser:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="jobrelay", description="Reliable background jobs over HTTP (docs/cli.md).", formatter_class=defaults
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "up",
        formatter_class=defaults,
        help="the whole stack for a laptop: embedded Redis, SQLite, API, workers, scheduler",
    )

    api = commands.add_parser("api", formatter_class=defaults, help="the HTTP API under gunicorn")
    api.add_argument("--workers", type=int, default=None, help="gunicorn worker processes (API_WORKERS)")

    worker = commands.add_parser("worker", formatter_class=defaults, help="worker processes for some queues")
    worker.add_argument("--queues", type=_queues, default=None, help="comma-separated; default: every catalog queue")
    worker.add_argument("--processes", type=int, default=None, help="worker processes (WORKER_PROCESSES)")
    worker.add_argument("--threads", type=int, default=None, help="threads per process (WORKER_THREADS)")
    worker.add_argument("--grace", type=float, default=30.0, help="seconds to finish in-flight work on SIGTERM")

    commands.add_parser("scheduler", formatter_class=defaults, help="the scheduler (run two for high availability)")
    client_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in client_cli.COMMANDS:
        # Client commands talk HTTP only: they need none of the server settings.
        sys.exit(client_cli.run(args, parser))
    try:
        settings = Settings.from_env()
        if args.command == "up":
            from services.up import run as run_up

            sys.exit(run_up(settings))
        if args.command == "api":
            from services.api.main import run as run_api

            run_api(settings, workers=args.workers)
        elif args.command == "worker":
            from services.worker.supervisor import run as run_worker

            sys.exit(
                run_worker(
                    settings,
                    queues=args.queues,
                    processes=args.processes or settings.worker_processes,
                    threads=args.threads or settings.worker_threads,
                    grace_s=args.grace,
                )
            )
        elif args.command == "scheduler":
            from services.scheduler.main import run as run_scheduler

            sys.exit(run_scheduler(settings))
    except JobrelayError as exc:
        print(f"jobrelay {args.command}: {exc.detail}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
