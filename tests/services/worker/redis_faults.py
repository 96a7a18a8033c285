"""A Redis client that fails chosen commands, at the exact step a test names, every time.

The fault is raised where the command would be sent (nothing reaches Redis), as a
refused or reset connection would; the rest of the traffic goes to the real server.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from shared.broker.bands import FETCH, REQUEUE
from shared.broker.dead_letters import NACK
from shared.broker.dispatch import ACK, FETCH_DELAYED
from shared.broker.publishing import NAMESPACE
from shared.broker.waking import is_delay_queue


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts by SHA-1


Command = Sequence[Any]


def words(command: Command) -> list[str]:
    return [part.decode() if isinstance(part, bytes) else str(part) for part in command]


@dataclass
class Rule:
    match: Callable[[list[str]], bool]
    error: type[Exception]
    times: int
    hits: int = 0


class Faults:
    """Rules checked in order against each command sent; a matching rule fails it ``times`` times."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self._lock = threading.Lock()

    def fail(
        self, match: Callable[[list[str]], bool], *, error: type[Exception] = redis.ConnectionError, times: int = 1
    ) -> Rule:
        rule = Rule(match, error, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def check(self, commands: Sequence[Command]) -> None:
        with self._lock:
            for command in commands:
                text = words(command)
                for rule in self.rules:
                    if rule.hits < rule.times and rule.match(text):
                        rule.hits += 1
                        raise rule.error(f"fault injected on {' '.join(text[:4])}")

    def client(self, redis_url: str) -> redis.Redis:
        """A client of ``redis_url`` whose commands go through these rules (and are not retried)."""
        faults = self

        class FaultyConnection(redis.Connection):
            def send_command(self, *args: Any, **kwargs: Any) -> None:
                faults.check([args])
                super().send_command(*args, **kwargs)

            def pack_commands(self, commands: Any) -> list[bytes | memoryview]:
                commands = list(commands)
                faults.check(commands)
                return super().pack_commands(commands)

        pool = redis.ConnectionPool.from_url(redis_url, connection_class=FaultyConnection)
        return redis.Redis(connection_pool=pool, socket_timeout=10)


def dispatch(command: str, queue: str) -> Callable[[list[str]], bool]:
    """The call that does Dramatiq's ``command`` on ``queue``: the HSET of an enqueue's MULTI, else the
    script of the command (``shared/broker/dispatch.py``, ``shared/broker/bands.py``), which names the
    queue's message hash among its keys."""
    stored = f"{NAMESPACE}:{queue}.msgs"
    if command == "enqueue":
        return lambda text: text[0].upper() == "HSET" and text[1] == stored
    fetch = FETCH_DELAYED if is_delay_queue(queue) else FETCH
    sha = _sha({"fetch": fetch, "requeue": REQUEUE, "ack": ACK, "nack": NACK}[command])

    def match(text: list[str]) -> bool:
        return text[0].upper() in ("EVALSHA", "EVAL") and sha in text and stored in text

    return match
