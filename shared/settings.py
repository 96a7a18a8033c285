"""One frozen settings object, parsed from the environment at process start.

Nothing reads the environment at import time: each entry point calls
``Settings.from_env()`` once and passes the result down. A malformed value
is refused with a ``SettingsError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from shared.broker.sentinel_url import check_redis_url
from shared.errors import SettingsError
from shared.mail import InvalidAddress, SmtpServer, parse_address
from shared.results import S3Location

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SCOPES = ("read", "write", "admin")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: A tenant's namespace, the fourth field of an ``API_KEYS`` entry.
NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class ApiKey:
    """One entry of ``API_KEYS``: a name (safe to log), a secret token and its scopes."""

    name: str
    token: str = dataclasses.field(repr=False)
    scopes: frozenset[str]
    #: The tenant the key belongs to: it sees only its namespace's jobs. None: every job, as before tenants.
    namespace: str | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


@dataclass(frozen=True)
class NamespaceQuota:
    """One entry of ``NAMESPACE_QUOTAS``: a tenant's most jobs waiting and most jobs submitted a second."""

    namespace: str
    max_waiting: int | None = None
    max_per_s: int | None = None


@dataclass(frozen=True)
class Settings:
    """Every setting of every service; see the README's settings table."""

    redis_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path(".data")
    api_bind: str = "127.0.0.1:8000"
    api_keys: tuple[ApiKey, ...] = ()
    namespace_quotas: tuple[NamespaceQuota, ...] = ()
    #: Namespaces take turns for a queue's workers (``shared/broker/bands.py``); off: they share its lists.
    fair_sharing: bool = True
    api_auth: bool = True
    api_workers: int = 2
    api_max_body_bytes: int = 1024 * 1024
    #: Server-sent event streams one API process serves at once (503 beyond), and how long each lasts.
    events_max_streams: int = 100
    events_max_duration_s: float = 300.0
    task_modules: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_json: bool = True
    result_storage_url: str | None = None
    result_inline_max_bytes: int = 64 * 1024
    worker_metrics_bind: str = "127.0.0.1:9191"
    worker_metrics: bool = True
    scheduler_metrics_bind: str = "127.0.0.1:9192"
    schedules_file: Path | None = None
    worker_processes: int = 1
    worker_threads: int = 8
    worker_heartbeat_s: float = 2.0
    #: How long a worker lifespan may take to yield its resources before the process gives up.
    worker_startup_timeout_s: float = 60.0
    worker_dead_after_s: float = 10.0
    job_lease_s: float = 30.0
    job_retention_s: float = 7 * 86400.0
    #: Pruning (``maintenance.prune``): a run every ``prune_every_s`` deletes batches of ``prune_batch_rows``
    #: finished jobs past the retention, ``prune_pause_s`` apart (services/scheduler/pruning.py).
    prune_every_s: int = 10
    prune_batch_rows: int = 2000
    prune_pause_s: float = 0.02
    leader_lease_s: float = 10.0
    relay_grace_s: float = 2.0
    store_timeout_s: float = 5.0
    #: Recycling: a worker process (or isolation child) that ran this many jobs, or holds more
    #: than this many MiB resident after one, is replaced once its jobs end (0: never).
    max_jobs_per_child: int = 0
    max_memory_per_child_mb: int = 0
    #: The built-in tasks' own settings, read by them through ``services.worker.context.current_settings``.
    smtp_server: SmtpServer = dataclasses.field(default_factory=SmtpServer)
    #: None: ``jobrelay@<this host's FQDN>``, decided when a mail is sent.
    smtp_from: str | None = None
    webhook_signing_secret: str | None = dataclasses.field(default=None, repr=False)
    #: A job's ``callback_url`` may point at loopback, private or link-local addresses (off: refused, SSRF guard).
    callback_allow_private: bool = False
    reports_database_url: str | None = None
    #: The console links its pages to the Grafana dashboards here when set (http or https).
    grafana_url: str | None = None
    #: The console links a job to its trace here: an http(s) URL with ``{trace_id}`` in it (Tempo, Jaeger, ...).
    traces_url: str | None = None

    @property
    def effective_database_url(self) -> str:
        """``DATABASE_URL``, or a SQLite file under ``DATA_DIR``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobrelay.db').resolve()}"

    @property
    def effective_reports_database_url(self) -> str:
        """``REPORTS_DATABASE_URL``, or the job store itself."""
        return self.reports_database_url or self.effective_database_url

    @property
    def effective_result_storage_url(self) -> str:
        if self.result_storage_url:
            return self.result_storage_url
        return f"file://{(self.data_dir / 'results').resolve()}"

    def require_redis_url(self, service: str) -> str:
        if not self.redis_url:
            raise SettingsError(f"REDIS_URL: {service} needs it (only `jobrelay up` runs an embedded Redis)")
        return self.redis_url

    def with_overrides(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment; raise ``SettingsError`` naming the first bad variable."""
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            redis_url=_get(env, "REDIS_URL", check_redis_url, None),
            database_url=_get(env, "DATABASE_URL", _url(("sqlite", "postgresql")), None),
            data_dir=_get(env, "DATA_DIR", _path, d.data_dir),
            api_bind=_get(env, "API_BIND", _bind, d.api_bind),
            api_keys=_get(env, "API_KEYS", parse_api_keys, ()),
            namespace_quotas=_get(env, "NAMESPACE_QUOTAS", parse_namespace_quotas, ()),
            fair_sharing=_get(env, "FAIR_SHARING", _on_off, True),
            api_auth=_get(env, "API_AUTH", _on_off, True),
            api_workers=_get(env, "API_WORKERS", _int(1, 64), d.api_workers),
            api_max_body_bytes=_get(env, "API_MAX_BODY_BYTES", _int(1024, 1 << 30), d.api_max_body_bytes),
            events_max_streams=_get(env, "EVENTS_MAX_STREAMS", _int(0, 100_000), d.events_max_streams),
            events_max_duration_s=_get(env, "EVENTS_MAX_DURATION_S", _float(1, 86400), d.events_max_duration_s),
            task_modules=_get(env, "TASK_MODULES", _modules, ()),
            log_level=_get(env, "LOG_LEVEL", _choice(LOG_LEVELS), d.log_level),
            log_json=_get(env, "LOG_JSON", _on_off, True),
            result_storage_url=_get(env, "RESULT_STORAGE_URL", _result_storage_url, None),
            result_inline_max_bytes=_get(env, "RESULT_INLINE_MAX_BYTES", _int(0, 16 << 20), d.result_inline_max_bytes),
            worker_metrics_bind=_get(env, "WORKER_METRICS_BIND", _bind, d.worker_metrics_bind),
            worker_metrics=_get(env, "WORKER_METRICS", _on_off, True),
            scheduler_metrics_bind=_get(env, "SCHEDULER_METRICS_BIND", _bind, d.scheduler_metrics_bind),
            schedules_file=_get(env, "SCHEDULES_FILE", _path, None),
            worker_processes=_get(env, "WORKER_PROCESSES", _int(1, 256), d.worker_processes),
            worker_threads=_get(env, "WORKER_THREADS", _int(1, 1024), d.worker_threads),
            worker_heartbeat_s=_get(env, "WORKER_HEARTBEAT_S", _float(0.1, 60), d.worker_heartbeat_s),
            worker_startup_timeout_s=_get(
                env, "WORKER_STARTUP_TIMEOUT_S", _float(0.1, 3600), d.worker_startup_timeout_s
            ),
            worker_dead_after_s=_get(env, "WORKER_DEAD_AFTER_S", _float(1, 3600), d.worker_dead_after_s),
            job_lease_s=_get(env, "JOB_LEASE_S", _float(1, 3600), d.job_lease_s),
            job_retention_s=_get(env, "JOB_RETENTION", _duration, d.job_retention_s),
            prune_every_s=_get(env, "PRUNE_EVERY", _whole_seconds(1, 86400), d.prune_every_s),
            prune_batch_rows=_get(env, "PRUNE_BATCH", _int(1, 10_000), d.prune_batch_rows),
            prune_pause_s=_get(env, "PRUNE_PAUSE_S", _float(0, 60), d.prune_pause_s),
            leader_lease_s=_get(env, "LEADER_LEASE_S", _float(1, 600), d.leader_lease_s),
            relay_grace_s=_get(env, "RELAY_GRACE_S", _float(0, 3600), d.relay_grace_s),
            store_timeout_s=_get(env, "STORE_TIMEOUT_S", _float(0.1, 600), d.store_timeout_s),
            max_jobs_per_child=_get(env, "MAX_JOBS_PER_CHILD", _int(0, 1 << 31), d.max_jobs_per_child),
            max_memory_per_child_mb=_get(env, "MAX_MEMORY_PER_CHILD_MB", _int(0, 1 << 20), d.max_memory_per_child_mb),
            smtp_server=_get(env, "SMTP_URL", SmtpServer.from_url, d.smtp_server),
            smtp_from=_get(env, "SMTP_FROM", _sender, None),
            webhook_signing_secret=_get(env, "WEBHOOK_SIGNING_SECRET", str, None),
            callback_allow_private=_get(env, "CALLBACK_ALLOW_PRIVATE", _on_off, False),
            reports_database_url=_get(env, "REPORTS_DATABASE_URL", _database_url, None),
            grafana_url=_get(env, "GRAFANA_URL", _url(("http", "https")), None),
            traces_url=_get(env, "TRACES_URL", _traces_url, None),
        )


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc} (got {_shown(name, raw)})") from None


def _shown(name: str, raw: str) -> str:
    # NOTE: API_KEYS and *_SECRET hold secrets and URLs may hold passwords; never echo them.
    if name == "API_KEYS" or name.endswith(("_URL", "_SECRET")):
        return "a value that is not shown"
    return repr(raw)


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return value

    return parse


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(raw: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h`` or ``7d``."""
    match = _DURATION.match(raw)
    if not match:
        raise ValueError("must be a duration such as 3600, 90s, 15m, 12h or 7d")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _whole_seconds(lo: int, hi: int) -> Callable[[str], int]:
    """A duration (``_duration``) of whole seconds between ``lo`` and ``hi``."""

    def parse(raw: str) -> int:
        seconds = _duration(raw)
        if seconds != int(seconds) or not lo <= seconds <= hi:
            raise ValueError(f"must be whole seconds between {lo} and {hi} (such as 10, 30s or 5m)")
        return int(seconds)

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _on_off(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be on or off")


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = raw.split("://", 1)[0].split("+", 1)[0] if "://" in raw else ""
        if scheme not in schemes:
            raise ValueError(f"must be a URL with scheme {' or '.join(s + '://' for s in schemes)}")
        return raw

    return parse


def _traces_url(raw: str) -> str:
    """An http(s) URL template of a trace viewer, ``{trace_id}`` standing for the job's trace id."""
    _url(("http", "https"))(raw)
    if "{trace_id}" not in raw:
        raise ValueError(
            "must contain {trace_id}, where the job's trace id goes (e.g. http://jaeger:16686/trace/{trace_id})"
        )
    return raw


def _result_storage_url(raw: str) -> str:
    """``file://PATH`` or ``s3://BUCKET[/prefix]``, the bucket checked here so every service refuses it at start."""
    _url(("file", "s3"))(raw)
    if raw.startswith("s3"):
        S3Location.parse(raw)
    return raw


def _database_url(raw: str) -> str:
    """A SQLAlchemy URL of a database the store's engine speaks: SQLite or PostgreSQL."""
    # NOTE: imported here, not at the top: importing settings (and ``jobrelay``) must stay cheap.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(raw).get_backend_name()
    except (ArgumentError, ValueError):
        raise ValueError("must be a SQLAlchemy URL, such as postgresql://user:password@host/db") from None
    if backend not in ("sqlite", "postgresql"):
        raise ValueError("must be a sqlite:// or postgresql:// URL")
    return raw


def _sender(raw: str) -> str:
    try:
        parse_address(raw, "SMTP_FROM")
    except InvalidAddress:
        raise ValueError("must be an email address, addr or Name <addr>") from None
    return raw


def _path(raw: str) -> Path:
    return Path(raw)


def _bind(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT")
    return raw


def _modules(raw: str) -> tuple[str, ...]:
    names = tuple(part for part in re.split(r"[,\s]+", raw) if part)
    for name in names:
        if not all(piece.isidentifier() for piece in name.split(".")):
            raise ValueError(f"{name!r} is not a dotted module name")
    return names


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """``name:token:scopes[:namespace]`` entries separated by whitespace, scopes joined by ``+``."""
    keys: list[ApiKey] = []
    seen_names: set[str] = set()
    for index, entry in enumerate(raw.split(), start=1):
        parts = entry.split(":")
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(f"entry {index} must be name:token:scopes or name:token:scopes:namespace")
        name, token, scopes_raw = parts[:3]
        namespace = parts[3] if len(parts) == 4 else None
        if namespace is not None and not NAMESPACE.match(namespace):
            raise ValueError(f"entry {index}: namespace must be lowercase letters, digits, '_' or '-' (at most 63)")
        if not _KEY_NAME.match(name):
            raise ValueError(f"entry {index}: name may hold only letters, digits, '_', '.', '-'")
        if len(token) < 8:
            raise ValueError(f"entry {index}: token must be at least 8 characters")
        scopes = frozenset(scopes_raw.split("+"))
        unknown = scopes - set(SCOPES)
        if unknown:
            # NOTE: never echo the bad value: a token written where the scopes belong would leak.
            raise ValueError(f"entry {index}: scopes must be read, write or admin joined by '+'")
        if name in seen_names:
            raise ValueError(f"entry {index}: its name appears in an earlier entry too")
        seen_names.add(name)
        keys.append(ApiKey(name=name, token=token, scopes=scopes, namespace=namespace))
    return tuple(keys)


def parse_namespace_quotas(raw: str) -> tuple[NamespaceQuota, ...]:
    """``namespace:max_waiting:max_per_s`` entries separated by whitespace; ``-`` leaves a limit out."""
    quotas: list[NamespaceQuota] = []
    for index, entry in enumerate(raw.split(), start=1):
        parts = entry.split(":")
        if len(parts) != 3 or not NAMESPACE.match(parts[0]):
            raise ValueError(f"entry {index} must be namespace:max_waiting:max_per_s ('-' for no limit)")
        limits: list[int | None] = []
        for part in parts[1:]:
            if part == "-":
                limits.append(None)
            elif part.isdecimal() and 1 <= int(part) <= 10**9:
                limits.append(int(part))
            else:
                raise ValueError(f"entry {index}: a limit must be a whole number from 1 or '-'")
        if parts[0] in {quota.namespace for quota in quotas}:
            raise ValueError(f"entry {index}: namespace {parts[0]!r} appears in an earlier entry too")
        quotas.append(NamespaceQuota(parts[0], limits[0], limits[1]))
    return tuple(quotas)
