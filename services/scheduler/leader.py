"""The leader lease: one scheduler replica fires, the others stand by.

``SET key me NX PX ttl`` takes the lease; the holder renews it every third of
the TTL with a compare-and-set script and deletes it on shutdown, so a
standby takes over within one TTL of a crash and at once after a SIGTERM.
"""

from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)
LEADER_KEY = "jobrelay:scheduler:leader"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaderLease:
    def __init__(self, client: redis.Redis, identity: str, *, ttl_s: float, key: str = LEADER_KEY) -> None:
        self.client = client
        self.identity = identity
        self.ttl_ms = int(ttl_s * 1000)
        self.key = key
        self.is_leader = False
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def refresh(self) -> bool:
        """Take or keep the lease; returns whether this replica leads now."""
        try:
            if self.is_leader:
                held = bool(self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]))
            else:
                held = bool(self.client.set(self.key, self.identity, nx=True, px=self.ttl_ms))
        except redis.RedisError as exc:
            log.warning("leader lease unreachable: %s", exc)
            held = False
        if held != self.is_leader:
            # NOTE: a leader change is routine (a deploy, a restart); an unreachable lease is the warning.
            log.info("scheduler %s %s leadership", self.identity, "took" if held else "lost")
        self.is_leader = held
        return held

    def release(self) -> None:
        if not self.is_leader:
            return
        try:
            self._release(keys=[self.key], args=[self.identity])
        except redis.RedisError as exc:
            log.warning("could not release the leader lease: %s", exc)
        self.is_leader = False
