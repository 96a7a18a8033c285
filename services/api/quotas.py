"""Per-namespace quotas (``NAMESPACE_QUOTAS``): a tenant's most waiting jobs and most submissions a second.

Over either, a submission is refused with 429 and ``Retry-After`` before anything is stored.

NOTE: the rate is a fixed one-second window counted in Redis (``INCRBY`` on a key per namespace
and second, expiring after two), so every API process and pod shares it; a refused request's jobs
count too, so a client that keeps retrying without waiting stays refused. The waiting count is
read from the job store before the insert, so concurrent requests may pass it together by the
jobs they carry: it is a bound for a tenant's backlog, not an exact cap.
"""

from __future__ import annotations

import time

import redis

from shared.errors import TooManyRequests
from shared.settings import NamespaceQuota
from shared.store.jobs import JobStore


class Quotas:
    """Checks one submission of ``count`` jobs against its namespace's quota, if it has one."""

    def __init__(self, quotas: tuple[NamespaceQuota, ...], store: JobStore, client: redis.Redis) -> None:
        self.by_namespace = {quota.namespace: quota for quota in quotas}
        self.store = store
        self.client = client

    def admit(self, namespace: str | None, count: int) -> None:
        """Raise ``TooManyRequests`` when ``count`` more jobs would put ``namespace`` over its quota."""
        quota = self.by_namespace.get(namespace) if namespace is not None else None
        if quota is None:
            return
        if quota.max_per_s is not None:
            key = f"jobrelay:quota:{namespace}:{int(time.time())}"
            pipe = self.client.pipeline(transaction=False)
            pipe.incrby(key, count)
            pipe.expire(key, 2)
            submitted, _ = pipe.execute()
            if int(submitted) > quota.max_per_s:
                raise TooManyRequests(
                    f"namespace {namespace!r} submits at most {quota.max_per_s} jobs a second", retry_after_s=1
                )
        if quota.max_waiting is not None and self.store.count_waiting(namespace) + count > quota.max_waiting:
            raise TooManyRequests(
                f"namespace {namespace!r} may have at most {quota.max_waiting} jobs waiting", retry_after_s=5
            )
