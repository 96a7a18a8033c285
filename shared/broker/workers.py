"""What each worker process is, for the operator's eyes: host, pid, queues, processes x threads, start time.

A worker process writes its description once, at start, into one Redis hash
(field: its owner id, the name its heartbeat and leases use); it is deleted
where the heartbeat is, when the process is recovered after it stopped or died
(``orphans.requeue_worker``). The console joins it to the heartbeats.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

import redis

from shared.broker.publishing import NAMESPACE

WORKERS = f"{NAMESPACE}:__workers__"


@dataclass(frozen=True)
class WorkerInfo:
    host: str
    pid: int
    queues: tuple[str, ...]
    processes: int
    threads: int
    started_at_s: float


def describe_worker(client: redis.Redis, owner: str, *, queues: list[str], processes: int, threads: int) -> None:
    info = WorkerInfo(
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=tuple(sorted(queues)),
        processes=processes,
        threads=threads,
        started_at_s=time.time(),
    )
    client.hset(WORKERS, owner, json.dumps(asdict(info)))


def forget_worker(client: redis.Redis, owner: str) -> None:
    client.hdel(WORKERS, owner)


def described_workers(client: redis.Redis) -> dict[str, WorkerInfo]:
    """Every description written and not forgotten, by owner id; a malformed one is left out."""
    raw: dict[bytes, bytes] = client.hgetall(WORKERS)  # type: ignore[assignment]
    found = {}
    for owner, body in raw.items():
        try:
            data = json.loads(body)
            data["queues"] = tuple(data["queues"])
            found[owner.decode()] = WorkerInfo(**data)
        except (ValueError, TypeError, KeyError):
            continue
    return found
