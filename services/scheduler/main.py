"""``jobrelay scheduler``: the leader runs housekeeping on APScheduler; standbys wait for the lease."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import Gauge, start_http_server

from services.scheduler.leader import LeaderLease
from shared.broker import build_broker
from shared.ids import new_id
from shared.logs import configure_logging
from shared.metrics import PREFIX
from shared.orphans import requeue_orphans
from shared.outbox import relay
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore

log = logging.getLogger(__name__)

scheduler_is_leader = Gauge(PREFIX + "scheduler_is_leader", "1 while this replica holds the leader lease.")


def _guarded(lease: LeaderLease, name: str, work: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        if not lease.is_leader:
            return
        try:
            work()
        except Exception:
            log.exception("housekeeping %s failed; it runs again at its next tick", name)

    return run


def run(settings: Settings) -> int:
    configure_logging("scheduler", settings.log_level, json_lines=settings.log_json)
    engine = create_store_engine(settings.effective_database_url)
    migrate(engine)
    store = JobStore(engine)
    broker = build_broker(settings.require_redis_url("the scheduler"), dead_message_ttl_s=settings.job_retention_s)
    identity = f"{socket.gethostname()}-{new_id()[-12:]}"
    lease = LeaderLease(broker.client, identity, ttl_s=settings.leader_lease_s)
    host, _, port = settings.scheduler_metrics_bind.rpartition(":")
    start_http_server(int(port), addr=host)

    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    scheduler.add_job(
        _guarded(lease, "relay", lambda: relay(store, broker, grace_s=settings.relay_grace_s)),
        "interval",
        seconds=1,
        id="maintenance.relay",
    )
    scheduler.add_job(
        _guarded(
            lease,
            "orphans",
            lambda: requeue_orphans(broker.client, store, dead_after_s=settings.worker_dead_after_s),
        ),
        "interval",
        seconds=2,
        id="maintenance.requeue_orphans",
    )
    scheduler.start()

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    renew_every_s = settings.leader_lease_s / 3
    log.info("scheduler %s started; lease TTL %.1fs", identity, settings.leader_lease_s)
    while True:
        scheduler_is_leader.set(1 if lease.refresh() else 0)
        if stop.wait(renew_every_s if lease.is_leader else min(0.5, renew_every_s)):
            break
    scheduler.shutdown(wait=True)
    lease.release()
    log.info("scheduler %s stopped", identity)
    return 0
