"""``/healthz`` (the process runs) and ``/readyz`` (its dependencies answer)."""

from __future__ import annotations

import falcon
import redis
from sqlalchemy import Engine, text

from services.api.errors import problem


class HealthResource:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    public = True

    def __init__(self, engine: Engine, client: redis.Redis) -> None:
        self.engine = engine
        self.client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        failed = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            failed["store"] = type(exc).__name__
        try:
            self.client.ping()
        except Exception as exc:
            failed["redis"] = type(exc).__name__
        if failed:
            names = " and ".join(sorted(failed))
            checks = {name: failed.get(name, "ok") for name in ("store", "redis")}
            problem(resp, 503, "Not ready", f"{names} did not answer", checks=checks)
            return
        resp.media = {"status": "ready", "checks": {"store": "ok", "redis": "ok"}}
