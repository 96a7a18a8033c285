"""Settings parsed from an environment mapping: defaults, each variable, refusals and secrecy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from shared.errors import JobrelayError, SettingsError
from shared.mail import SmtpServer
from shared.settings import LOG_LEVELS, ApiKey, Settings, parse_api_keys, parse_namespace_quotas

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Every variable ``Settings.from_env`` reads.
ALL_VARIABLES = (
    "REDIS_URL",
    "DATABASE_URL",
    "DATA_DIR",
    "API_BIND",
    "API_KEYS",
    "API_AUTH",
    "API_WORKERS",
    "API_MAX_BODY_BYTES",
    "TASK_MODULES",
    "LOG_LEVEL",
    "LOG_JSON",
    "RESULT_STORAGE_URL",
    "RESULT_INLINE_MAX_BYTES",
    "WORKER_METRICS_BIND",
    "SCHEDULER_METRICS_BIND",
    "SCHEDULES_FILE",
    "WORKER_PROCESSES",
    "WORKER_THREADS",
    "WORKER_HEARTBEAT_S",
    "WORKER_DEAD_AFTER_S",
    "JOB_LEASE_S",
    "JOB_RETENTION",
    "PRUNE_EVERY",
    "PRUNE_BATCH",
    "PRUNE_PAUSE_S",
    "LEADER_LEASE_S",
    "RELAY_GRACE_S",
    "SMTP_URL",
    "SMTP_FROM",
    "WEBHOOK_SIGNING_SECRET",
    "REPORTS_DATABASE_URL",
    "GRAFANA_URL",
    "TRACES_URL",
)

TOKEN = "tok-Zq83hLw0pX"
OTHER_TOKEN = "tok-Mv51aKe9dR"
PASSWORD = "pw-Hq72nXo4"


def refused(env: dict[str, str]) -> SettingsError:
    """The ``SettingsError`` that parsing ``env`` raises."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return info.value


# --- defaults ---------------------------------------------------------------------------------


def test_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.redis_url is None
    assert settings.database_url is None
    assert settings.data_dir == Path(".data")
    assert settings.api_bind == "127.0.0.1:8000"
    assert settings.api_keys == ()
    assert settings.api_auth is True
    assert settings.api_workers == 2
    assert settings.api_max_body_bytes == 1024 * 1024
    assert settings.task_modules == ()
    assert settings.log_level == "INFO"
    assert settings.log_json is True
    assert settings.result_storage_url is None
    assert settings.result_inline_max_bytes == 64 * 1024
    assert settings.worker_metrics_bind == "127.0.0.1:9191"
    assert settings.scheduler_metrics_bind == "127.0.0.1:9192"
    assert settings.schedules_file is None
    assert settings.worker_processes == 1
    assert settings.worker_threads == 8
    assert settings.worker_heartbeat_s == 2.0
    assert settings.worker_dead_after_s == 10.0
    assert settings.job_lease_s == 30.0
    assert settings.job_retention_s == 7 * 86400.0
    assert (settings.prune_every_s, settings.prune_batch_rows, settings.prune_pause_s) == (10, 2000, 0.02)
    assert settings.leader_lease_s == 10.0
    assert settings.relay_grace_s == 2.0
    assert settings.smtp_server == SmtpServer(host="localhost", port=25)
    assert settings.smtp_from is None
    assert settings.webhook_signing_secret is None
    assert settings.reports_database_url is None


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_values_count_as_unset(blank: str) -> None:
    settings = Settings.from_env(dict.fromkeys(ALL_VARIABLES, blank))

    assert settings == Settings()


def test_unrelated_variables_are_ignored() -> None:
    settings = Settings.from_env({"PATH": "/usr/bin", "HOME": "/root", "REDIS": "nonsense"})

    assert settings == Settings()


# --- reading the environment ----------------------------------------------------------------


def test_an_explicit_mapping_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: a process environment full of non-default (and some malformed) values
    monkeypatch.setenv("API_WORKERS", "7")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("WORKER_THREADS", "not a number")

    # When: parsing an explicit, empty mapping
    settings = Settings.from_env({})

    # Then: nothing came from os.environ
    assert settings == Settings()


def test_no_mapping_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("API_WORKERS", "7")
    monkeypatch.setenv("LOG_LEVEL", "debug")

    settings = Settings.from_env()

    assert settings.api_workers == 7
    assert settings.log_level == "DEBUG"


def test_any_read_only_mapping_is_accepted() -> None:
    settings = Settings.from_env(MappingProxyType({"API_WORKERS": "3"}))

    assert settings.api_workers == 3


def test_importing_the_module_does_not_read_os_environ() -> None:
    """A fresh interpreter whose ``os.environ`` refuses every read can still import the module."""
    code = textwrap.dedent(
        """
        import os

        class Trap(dict):
            def refuse(self, *args, **kwargs):
                raise AssertionError("os.environ was read at import time")

            __getitem__ = get = keys = items = values = __iter__ = __contains__ = __len__ = refuse

        real = os.environ
        os.environ = Trap()
        import shared.settings
        os.environ = real
        print("imported")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


# --- each variable --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@cache.internal:6380/1",
        "unix:///run/redis/redis.sock",
        "redis+sentinel://s1:26379,s2:26379,s3/mymaster/0",
        "rediss+sentinel://:pw@s1.internal/mymaster?sentinel_password=other",
    ],
)
def test_redis_url_accepts_redis_schemes(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel:///mymaster", "names no Sentinel"),
        ("redis+sentinel://s1:port/mymaster", "no valid port"),
        ("redis+sentinel://s1/mymaster/zero", "database must be a number"),
        ("redis+sentinel://s1/mymaster?master_name=x", "unknown option(s) master_name"),
        ("redis+cluster://n1:6379", "must be a URL with scheme"),
    ],
)
def test_malformed_sentinel_urls_are_refused_saying_why(url: str, reason: str) -> None:
    error = refused({"REDIS_URL": url})

    assert str(error).startswith("REDIS_URL:")
    assert reason in str(error)


def test_redis_url_is_stripped_of_surrounding_whitespace() -> None:
    assert Settings.from_env({"REDIS_URL": "  redis://localhost:6379/0\n"}).redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///var/lib/jobrelay/jobs.db",
        "postgresql://jobs@db.internal/jobs",
        "postgresql+psycopg://jobs:pw@db.internal:5432/jobs",
    ],
)
def test_database_url_accepts_sqlite_and_postgresql(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("url", ["file:///srv/results", "s3://bucket/prefix"])
def test_result_storage_url_accepts_file_and_s3(url: str) -> None:
    assert Settings.from_env({"RESULT_STORAGE_URL": url}).result_storage_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "localhost:6379"),
        ("DATABASE_URL", "mysql://jobs@db/jobs"),
        ("DATABASE_URL", "/var/lib/jobs.db"),
        ("RESULT_STORAGE_URL", "gs://bucket/prefix"),
    ],
)
def test_urls_with_other_schemes_are_refused(name: str, value: str) -> None:
    error = refused({name: value})

    assert str(error).startswith(f"{name}:")
    assert "must be a URL with scheme" in str(error)


def test_data_dir_and_schedules_file_become_paths() -> None:
    settings = Settings.from_env({"DATA_DIR": "/srv/jobrelay", "SCHEDULES_FILE": "deploy/schedules.toml"})

    assert settings.data_dir == Path("/srv/jobrelay")
    assert settings.schedules_file == Path("deploy/schedules.toml")


@pytest.mark.parametrize("bind", ["0.0.0.0:8080", "localhost:0", "[::1]:65535", "api.internal:443"])
def test_api_bind_accepts_host_and_port(bind: str) -> None:
    assert Settings.from_env({"API_BIND": bind}).api_bind == bind


@pytest.mark.parametrize("bind", ["8080", ":8080", "localhost:", "localhost:http", "localhost:65536", "host:-1"])
def test_bind_addresses_without_host_and_valid_port_are_refused(bind: str) -> None:
    for name in ("API_BIND", "WORKER_METRICS_BIND", "SCHEDULER_METRICS_BIND"):
        error = refused({name: bind})

        assert str(error).startswith(f"{name}:")
        assert "HOST:PORT" in str(error)


def test_metrics_binds_are_parsed() -> None:
    settings = Settings.from_env({"WORKER_METRICS_BIND": "0.0.0.0:9000", "SCHEDULER_METRICS_BIND": "0.0.0.0:9001"})

    assert settings.worker_metrics_bind == "0.0.0.0:9000"
    assert settings.scheduler_metrics_bind == "0.0.0.0:9001"


def test_api_keys_are_parsed_into_api_key_objects() -> None:
    settings = Settings.from_env({"API_KEYS": f"ci:{TOKEN}:read+write  ops:{OTHER_TOKEN}:admin"})

    assert settings.api_keys == (
        ApiKey(name="ci", token=TOKEN, scopes=frozenset({"read", "write"})),
        ApiKey(name="ops", token=OTHER_TOKEN, scopes=frozenset({"admin"})),
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("myapp.tasks", ("myapp.tasks",)),
        ("myapp.tasks,other.jobs", ("myapp.tasks", "other.jobs")),
        (" myapp.tasks ,  other.jobs\nthird ", ("myapp.tasks", "other.jobs", "third")),
        ("a,,b", ("a", "b")),
        ("_private.mod2", ("_private.mod2",)),
    ],
)
def test_task_modules_are_split_on_commas_and_whitespace(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"TASK_MODULES": raw}).task_modules == expected


@pytest.mark.parametrize("raw", ["myapp..tasks", "my-app.tasks", "1app", "myapp.tasks.", "myapp/tasks"])
def test_task_modules_that_are_not_dotted_names_are_refused(raw: str) -> None:
    error = refused({"TASK_MODULES": raw})

    assert str(error).startswith("TASK_MODULES:")
    assert "is not a dotted module name" in str(error)


@pytest.mark.parametrize("level", LOG_LEVELS)
def test_log_level_accepts_each_level_in_any_case(level: str) -> None:
    assert Settings.from_env({"LOG_LEVEL": level}).log_level == level
    assert Settings.from_env({"LOG_LEVEL": level.lower()}).log_level == level
    assert Settings.from_env({"LOG_LEVEL": level.title()}).log_level == level


@pytest.mark.parametrize("level", ["VERBOSE", "TRACE", "WARN", "10"])
def test_log_level_refuses_unknown_levels(level: str) -> None:
    error = refused({"LOG_LEVEL": level})

    assert str(error).startswith("LOG_LEVEL:")
    assert "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in str(error)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_on_off_switches(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"API_AUTH": raw, "LOG_JSON": raw, "FAIR_SHARING": raw})

    assert settings.api_auth is expected
    assert settings.log_json is expected
    assert settings.fair_sharing is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "y"])
def test_on_off_switches_refuse_other_words(raw: str) -> None:
    for name in ("API_AUTH", "LOG_JSON", "FAIR_SHARING"):
        error = refused({name: raw})

        assert str(error).startswith(f"{name}:")
        assert "must be on or off" in str(error)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("7d", 7 * 86400.0),
        ("12h", 12 * 3600.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("3600", 3600.0),
        ("1.5h", 5400.0),
        ("0.5d", 43200.0),
        ("2 d", 172800.0),
        ("  30m  ", 1800.0),
        ("0", 0.0),
    ],
)
def test_job_retention_parses_durations(raw: str, seconds: float) -> None:
    assert Settings.from_env({"JOB_RETENTION": raw}).job_retention_s == seconds


@pytest.mark.parametrize("raw", ["7w", "7D", "-1d", "d", "7 days", "1h30m", "1e3", "seven days", ".5h"])
def test_job_retention_refuses_other_durations(raw: str) -> None:
    error = refused({"JOB_RETENTION": raw})

    assert str(error).startswith("JOB_RETENTION:")
    assert "must be a duration" in str(error)


@pytest.mark.parametrize(("raw", "seconds"), [("1", 1), ("10s", 10), ("5m", 300), ("1d", 86400), ("1.5m", 90)])
def test_prune_every_takes_whole_seconds(raw: str, seconds: int) -> None:
    assert Settings.from_env({"PRUNE_EVERY": raw}).prune_every_s == seconds


@pytest.mark.parametrize("raw", ["0", "0.5", "1.5s", "2d", "soon"])
def test_prune_every_refuses_fractions_and_durations_out_of_range(raw: str) -> None:
    error = refused({"PRUNE_EVERY": raw})

    assert str(error).startswith("PRUNE_EVERY: must be")


# --- numeric ranges -------------------------------------------------------------------------

INT_RANGES = [
    ("API_WORKERS", "api_workers", 1, 64),
    ("API_MAX_BODY_BYTES", "api_max_body_bytes", 1024, 1 << 30),
    ("RESULT_INLINE_MAX_BYTES", "result_inline_max_bytes", 0, 16 << 20),
    ("WORKER_PROCESSES", "worker_processes", 1, 256),
    ("WORKER_THREADS", "worker_threads", 1, 1024),
    ("MAX_JOBS_PER_CHILD", "max_jobs_per_child", 0, 1 << 31),
    ("MAX_MEMORY_PER_CHILD_MB", "max_memory_per_child_mb", 0, 1 << 20),
    ("PRUNE_BATCH", "prune_batch_rows", 1, 10_000),
]

FLOAT_RANGES = [
    ("WORKER_HEARTBEAT_S", "worker_heartbeat_s", 0.1, 60.0),
    ("WORKER_DEAD_AFTER_S", "worker_dead_after_s", 1.0, 3600.0),
    ("JOB_LEASE_S", "job_lease_s", 1.0, 3600.0),
    ("LEADER_LEASE_S", "leader_lease_s", 1.0, 600.0),
    ("RELAY_GRACE_S", "relay_grace_s", 0.0, 3600.0),
    ("STORE_TIMEOUT_S", "store_timeout_s", 0.1, 600.0),
    ("PRUNE_PAUSE_S", "prune_pause_s", 0.0, 60.0),
]


@pytest.mark.parametrize(("name", "field", "lo", "hi"), INT_RANGES)
def test_integers_accept_both_ends_of_their_range(name: str, field: str, lo: int, hi: int) -> None:
    assert getattr(Settings.from_env({name: str(lo)}), field) == lo
    assert getattr(Settings.from_env({name: str(hi)}), field) == hi
    assert getattr(Settings.from_env({name: f" {hi} "}), field) == hi


@pytest.mark.parametrize(("name", "field", "lo", "hi"), INT_RANGES)
def test_integers_outside_their_range_are_refused(name: str, field: str, lo: int, hi: int) -> None:
    for value in (lo - 1, hi + 1):
        error = refused({name: str(value)})

        assert str(error) == f"{name}: must be between {lo} and {hi} (got {str(value)!r})"


@pytest.mark.parametrize(("name", "field", "lo", "hi"), INT_RANGES)
def test_integers_refuse_non_integers(name: str, field: str, lo: int, hi: int) -> None:
    for value in ("two", "2.0", "0x10", "1e3"):
        error = refused({name: value})

        assert str(error) == f"{name}: must be an integer (got {value!r})"


@pytest.mark.parametrize(("name", "field", "lo", "hi"), FLOAT_RANGES)
def test_numbers_accept_both_ends_of_their_range(name: str, field: str, lo: float, hi: float) -> None:
    assert getattr(Settings.from_env({name: str(lo)}), field) == lo
    assert getattr(Settings.from_env({name: str(hi)}), field) == hi
    assert getattr(Settings.from_env({name: str(int(hi))}), field) == hi


@pytest.mark.parametrize(("name", "field", "lo", "hi"), FLOAT_RANGES)
def test_numbers_outside_their_range_are_refused(name: str, field: str, lo: float, hi: float) -> None:
    for value in (str(lo - 0.01), str(hi + 0.01), "nan", "inf", "-inf"):
        error = refused({name: value})

        assert str(error).startswith(f"{name}: must be between {lo:g} and {hi:g}")


@pytest.mark.parametrize(("name", "field", "lo", "hi"), FLOAT_RANGES)
def test_numbers_refuse_words(name: str, field: str, lo: float, hi: float) -> None:
    error = refused({name: "soon"})

    assert str(error) == f"{name}: must be a number (got 'soon')"


def test_fractional_seconds_are_kept() -> None:
    settings = Settings.from_env({"WORKER_HEARTBEAT_S": "0.25", "JOB_LEASE_S": "12.5"})

    assert settings.worker_heartbeat_s == 0.25
    assert settings.job_lease_s == 12.5


# --- the built-in tasks' settings ----------------------------------------------------------


def test_smtp_url_is_parsed_once_into_the_server() -> None:
    settings = Settings.from_env(
        {"SMTP_URL": f"smtp://relay%40corp:{PASSWORD}%2F1@mail.internal:587?starttls=1&timeout=5"}
    )

    assert settings.smtp_server == SmtpServer(
        host="mail.internal",
        port=587,
        implicit_tls=False,
        starttls=True,
        user="relay@corp",
        password=f"{PASSWORD}/1",
        timeout_s=5.0,
    )
    assert PASSWORD not in repr(settings)


@pytest.mark.parametrize(
    ("url", "port", "implicit_tls"),
    [
        ("smtp://mail.internal", 25, False),
        ("smtps://mail.internal", 465, True),
        ("smtps://mail.internal:2465", 2465, True),
    ],
)
def test_smtp_url_default_ports_follow_the_scheme(url: str, port: int, implicit_tls: bool) -> None:
    server = Settings.from_env({"SMTP_URL": url}).smtp_server

    assert (server.port, server.implicit_tls, server.starttls) == (port, implicit_tls, False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://mail.internal", "must start with smtp:// or smtps://"),
        ("mail.internal:25", "must start with smtp:// or smtps://"),
        ("smtp://mail.internal:port", "the port must be a number"),
        ("smtp://mail.internal:70000", "the port must be a number"),
        ("smtp://mail.internal?timeout=soon", "timeout must be a number"),
        ("smtp://mail.internal?timeout=0", "timeout must be between"),
        ("smtp://mail.internal?starttls=maybe", "starttls must be on or off"),
        ("smtp://mail.internal?tls=1", "unknown query parameter 'tls'"),
        ("smtp://mail.internal?starttls", "key=value pairs"),
        ("smtps://mail.internal?starttls=1", "starttls is for smtp://"),
    ],
)
def test_malformed_smtp_urls_are_refused(url: str, reason: str) -> None:
    error = refused({"SMTP_URL": url})

    assert str(error).startswith("SMTP_URL:")
    assert reason in str(error)


@pytest.mark.parametrize("sender", ["noreply@example.com", "Jobrelay <noreply@example.com>"])
def test_smtp_from_accepts_an_address_with_or_without_a_name(sender: str) -> None:
    assert Settings.from_env({"SMTP_FROM": sender}).smtp_from == sender


@pytest.mark.parametrize(
    "sender", ["noreply", "noreply@", "@example.com", "no reply@example.com", "a@exa mple.com", "a@b.com, c@d.com"]
)
def test_smtp_from_that_is_not_an_address_is_refused(sender: str) -> None:
    error = refused({"SMTP_FROM": sender})

    assert str(error).startswith("SMTP_FROM: must be an email address")


def test_webhook_signing_secret_is_kept_and_never_shown() -> None:
    settings = Settings.from_env({"WEBHOOK_SIGNING_SECRET": TOKEN})

    assert settings.webhook_signing_secret == TOKEN
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize(
    "url",
    ["sqlite:///var/lib/replica.db", "postgresql://reader@replica/jobs", "postgresql+psycopg://r:pw@replica:5432/j"],
)
def test_reports_database_url_accepts_sqlalchemy_urls_of_the_store_backends(url: str) -> None:
    settings = Settings.from_env({"REPORTS_DATABASE_URL": url, "DATABASE_URL": "postgresql://primary/jobs"})

    assert settings.reports_database_url == url
    assert settings.effective_reports_database_url == url


def test_reports_database_url_defaults_to_the_job_store(tmp_path: Path) -> None:
    assert Settings.from_env({"DATABASE_URL": "postgresql://primary/jobs"}).effective_reports_database_url == (
        "postgresql://primary/jobs"
    )
    assert Settings.from_env({"DATA_DIR": str(tmp_path)}).effective_reports_database_url == (
        f"sqlite:///{tmp_path.resolve() / 'jobrelay.db'}"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("replica.internal/jobs", "must be a SQLAlchemy URL"),
        ("postgresql://replica:port/jobs", "must be a SQLAlchemy URL"),
        ("mysql://reader@replica/jobs", "must be a sqlite:// or postgresql:// URL"),
    ],
)
def test_reports_database_url_that_is_not_a_store_url_is_refused(url: str, reason: str) -> None:
    error = refused({"REPORTS_DATABASE_URL": url})

    assert str(error).startswith("REPORTS_DATABASE_URL:")
    assert reason in str(error)


def test_importing_the_module_does_not_import_sqlalchemy() -> None:
    """``REPORTS_DATABASE_URL`` is checked with SQLAlchemy, imported only when the variable is set."""
    code = "import sys, shared.settings; print('sqlalchemy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- errors ---------------------------------------------------------------------------------


def test_settings_error_is_a_jobrelay_error_with_a_title() -> None:
    error = refused({"API_WORKERS": "many"})

    assert isinstance(error, JobrelayError)
    assert error.title == "Invalid setting"
    assert error.detail == str(error)


def test_non_secret_values_are_echoed_in_the_error() -> None:
    error = refused({"LOG_LEVEL": "chatty"})

    assert "(got 'chatty')" in str(error)


def test_the_error_names_a_bad_variable_among_good_ones() -> None:
    error = refused({"API_WORKERS": "4", "LOG_LEVEL": "DEBUG", "WORKER_THREADS": "0", "JOB_RETENTION": "7d"})

    assert str(error).startswith("WORKER_THREADS:")


def test_the_error_does_not_chain_the_underlying_value_error() -> None:
    """``from None``: a traceback shows no ``ValueError`` that might carry the raw value."""
    error = refused({"API_KEYS": f"ci:{TOKEN}:root"})

    assert error.__cause__ is None
    assert error.__suppress_context__ is True


@pytest.mark.parametrize(
    "name", ["REDIS_URL", "DATABASE_URL", "RESULT_STORAGE_URL", "SMTP_URL", "REPORTS_DATABASE_URL"]
)
def test_url_errors_never_show_the_url(name: str) -> None:
    url = f"http://admin:{PASSWORD}@host.internal:1234/x"

    error = refused({name: url})

    assert str(error).startswith(f"{name}:")
    assert PASSWORD not in str(error)
    assert "host.internal" not in str(error)
    assert "a value that is not shown" in str(error)


@pytest.mark.parametrize(
    "raw",
    [
        f"ci:{TOKEN}",  # missing scopes
        f"ci:{TOKEN}:read:acme:extra",  # too many parts
        f"ci:{TOKEN}:read:Not-A-Namespace",  # bad namespace
        f":{TOKEN}:read",  # empty name
        f"c/i:{TOKEN}:read",  # bad name
        f"ci:{TOKEN}:root",  # unknown scope
        f"ci:{TOKEN}:read ci:{OTHER_TOKEN}:write",  # duplicate name
        f"ci:{TOKEN}:read ops:short:write",  # short token next to a good one
        f"ci:{TOKEN}:read+",  # empty scope
    ],
)
def test_api_keys_errors_never_show_tokens(raw: str) -> None:
    error = refused({"API_KEYS": raw})

    assert str(error).startswith("API_KEYS:")
    assert TOKEN not in str(error)
    assert OTHER_TOKEN not in str(error)
    assert "short" not in str(error)
    assert "a value that is not shown" in str(error)


def test_api_keys_error_never_shows_a_token_written_where_the_scopes_belong() -> None:
    """``name:scopes:token`` (fields swapped) must not echo the token as an "unknown scope"."""
    error = refused({"API_KEYS": f"ci:read+write:{TOKEN}"})

    assert str(error).startswith("API_KEYS:")
    assert TOKEN not in str(error)


# --- parse_api_keys -------------------------------------------------------------------------


def test_parse_api_keys_reads_name_token_and_scopes() -> None:
    keys = parse_api_keys(f"ci:{TOKEN}:read+write\nops.team-1:{OTHER_TOKEN}:admin")

    assert [key.name for key in keys] == ["ci", "ops.team-1"]
    assert [key.token for key in keys] == [TOKEN, OTHER_TOKEN]
    assert keys[0].scopes == frozenset({"read", "write"})
    assert keys[1].scopes == frozenset({"admin"})


def test_parse_api_keys_of_nothing_is_empty() -> None:
    assert parse_api_keys("") == ()
    assert parse_api_keys("  \n ") == ()


def test_repeated_scopes_collapse() -> None:
    [key] = parse_api_keys(f"ci:{TOKEN}:read+read+write")

    assert key.scopes == frozenset({"read", "write"})


def test_a_scope_allows_only_itself() -> None:
    [reader, writer] = parse_api_keys(f"reader:{TOKEN}:read writer:{OTHER_TOKEN}:write")

    assert reader.allows("read")
    assert not reader.allows("write")
    assert not reader.allows("admin")
    assert writer.allows("write")
    assert not writer.allows("read")
    assert not writer.allows("admin")


def test_admin_implies_every_scope() -> None:
    [admin] = parse_api_keys(f"ops:{TOKEN}:admin")

    for scope in ("read", "write", "admin", "anything-else"):
        assert admin.allows(scope)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^entry 2: its name appears in an earlier entry too$"):
        parse_api_keys(f"ci:{TOKEN}:read ci:{OTHER_TOKEN}:write")


@pytest.mark.parametrize("token", ["", "a", "1234567"])
def test_tokens_shorter_than_eight_characters_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match=r"^entry 1"):
        parse_api_keys(f"ci:{token}:read")


def test_a_token_of_eight_characters_is_enough() -> None:
    [key] = parse_api_keys("ci:12345678:read")

    assert key.token == "12345678"


def test_short_token_error_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"^entry 2: token must be at least 8 characters$"):
        parse_api_keys(f"ci:{TOKEN}:read ops:1234567:write")


@pytest.mark.parametrize("scopes", ["root", "read+delete", "READ", "read+"])
def test_unknown_scopes_are_refused(scopes: str) -> None:
    with pytest.raises(ValueError, match=r"^entry 1: scopes must be read, write or admin"):
        parse_api_keys(f"ci:{TOKEN}:{scopes}")


@pytest.mark.parametrize("name", ["c i", "c/i", "ci@home", "clé"])
def test_names_with_other_characters_are_refused(name: str) -> None:
    # "c i" splits into two malformed entries; the others fail the name check.
    with pytest.raises(ValueError, match=r"^entry 1"):
        parse_api_keys(f"{name}:{TOKEN}:read")


@pytest.mark.parametrize(
    "entry", ["ci", f"ci:{TOKEN}", f"ci:{TOKEN}:read:x:y", "ci::read", f":{TOKEN}:read", "::", f"ci:{TOKEN}:read:"]
)
def test_entries_not_in_three_or_four_non_empty_parts_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"^entry 1 must be name:token:scopes or name:token:scopes:namespace$"):
        parse_api_keys(entry)


def test_a_fourth_field_puts_the_key_in_a_namespace() -> None:
    acme, ops = parse_api_keys(f"acme:{TOKEN}:read+write:acme-1 ops:{OTHER_TOKEN}:admin")

    assert acme.namespace == "acme-1" and acme.scopes == frozenset({"read", "write"})
    assert ops.namespace is None


@pytest.mark.parametrize("namespace", ["Acme", "-acme", "a/b", "x" * 64])
def test_malformed_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ValueError, match=r"^entry 1: namespace must be lowercase"):
        parse_api_keys(f"ci:{TOKEN}:read:{namespace}")


def test_api_key_repr_hides_the_token() -> None:
    [key] = parse_api_keys(f"ci:{TOKEN}:read")

    assert "ci" in repr(key)
    assert TOKEN not in repr(key)
    assert TOKEN not in repr(Settings(api_keys=(key,)))


# --- the settings object --------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api_workers = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.redis_url = "redis://x"  # type: ignore[misc]


def test_api_keys_are_frozen_and_hashable() -> None:
    [key] = parse_api_keys(f"ci:{TOKEN}:read")

    with pytest.raises(dataclasses.FrozenInstanceError):
        key.scopes = frozenset({"admin"})  # type: ignore[misc]
    assert hash(key) == hash(ApiKey(name="ci", token=TOKEN, scopes=frozenset({"read"})))


def test_with_overrides_returns_a_changed_copy() -> None:
    settings = Settings.from_env({})

    changed = settings.with_overrides(api_workers=9, log_level="DEBUG")

    assert changed.api_workers == 9
    assert changed.log_level == "DEBUG"
    assert settings.api_workers == 2
    assert settings.log_level == "INFO"


def test_effective_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})

    assert settings.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'jobrelay.db'}"
    assert settings.with_overrides(database_url="postgresql://db/jobs").effective_database_url == (
        "postgresql://db/jobs"
    )


def test_effective_result_storage_url_defaults_to_a_results_directory(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})

    assert settings.effective_result_storage_url == f"file://{tmp_path.resolve() / 'results'}"
    assert settings.with_overrides(result_storage_url="s3://b/p").effective_result_storage_url == "s3://b/p"


def test_require_redis_url_names_the_variable_and_service() -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL: scheduler needs it"):
        Settings.from_env({}).require_redis_url("scheduler")

    url = "redis://localhost:6379/0"
    assert Settings.from_env({"REDIS_URL": url}).require_redis_url("scheduler") == url


def test_grafana_url_is_an_http_url() -> None:
    assert Settings.from_env({}).grafana_url is None
    url = "https://grafana.example.org/d/jobrelay"
    assert Settings.from_env({"GRAFANA_URL": url}).grafana_url == url
    error = refused({"GRAFANA_URL": "javascript:alert(1)"})
    assert "GRAFANA_URL" in str(error) and "http://" in str(error)


def test_traces_url_is_an_http_url_with_the_trace_id_in_it() -> None:
    assert Settings.from_env({}).traces_url is None
    url = "http://jaeger.example.org:16686/trace/{trace_id}"
    assert Settings.from_env({"TRACES_URL": url}).traces_url == url
    error = refused({"TRACES_URL": "http://jaeger.example.org:16686/search"})
    assert "TRACES_URL" in str(error) and "{trace_id}" in str(error)
    assert "http://" in str(refused({"TRACES_URL": "javascript:{trace_id}"}))


def test_namespace_quotas_are_parsed_and_checked() -> None:
    acme, globex = parse_namespace_quotas("acme:1000:50 globex:-:10")
    assert (acme.namespace, acme.max_waiting, acme.max_per_s) == ("acme", 1000, 50)
    assert (globex.max_waiting, globex.max_per_s) == (None, 10)
    for raw in ["acme:10", "Acme:1:1", "acme:0:1", "acme:x:1", "acme:1:1 acme:2:2"]:
        with pytest.raises(ValueError, match=r"^entry \d"):
            parse_namespace_quotas(raw)
    assert Settings.from_env({"NAMESPACE_QUOTAS": "acme:5:-"}).namespace_quotas[0].max_waiting == 5
