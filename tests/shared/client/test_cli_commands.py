"""Every client command of ``jobrelay`` against the real API over loopback HTTP: tables, --json, exit codes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import build_parser
from shared.client import JobrelayClient
from shared.client.cli import EXIT_CODES, add_commands, run
from shared.client.commands import connect
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401
from tests.shared.client.test_client import ADMIN, WRITER, api_url, database_url  # noqa: F401

REPO = Path(__file__).resolve().parents[3]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="jobrelay")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(list(argv)), parser)


def out_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def env(api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    monkeypatch.setenv("JOBRELAY_URL", api_url)
    monkeypatch.setenv("JOBRELAY_TOKEN", ADMIN)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "no-data"))
    return api_url


def test_jobs_list_get_cancel_retry_as_tables_and_json(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    api = JobrelayClient(env, WRITER)
    job = api.submit("diagnostics.echo", {"message": "hi"}, delay_s=600)

    # A table for people: a header and one row per job
    assert cli("jobs", "list", "--task", "diagnostics.echo") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "TASK", "QUEUE", "STATUS", "ATTEMPTS", "CREATED_AT", "FINISHED_AT"]
    assert row.split()[:4] == [job["id"], "diagnostics.echo", "default", "scheduled"]

    # JSON for scripts: the API's page
    assert cli("jobs", "list", "--status", "scheduled", "--json") == 0
    assert [item["id"] for item in out_json(capsys)["items"]] == [job["id"]]  # type: ignore[index]

    assert cli("jobs", "get", job["id"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", job["id"]] and ["task", "diagnostics.echo"] in [line.split() for line in lines]
    assert cli("jobs", "cancel", job["id"], "--json") == 0
    assert out_json(capsys)["status"] == "cancelled"  # type: ignore[index]
    assert cli("jobs", "retry", job["id"], "--json") == 0
    assert out_json(capsys)["status"] in {"queued", "scheduled"}  # type: ignore[index]
    assert cli("jobs", "cancel", "no-such-job") == 2
    assert "404" in capsys.readouterr().err


def test_jobs_wait_and_result(env: str, harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    ok = JobrelayClient(env, WRITER).submit("diagnostics.echo", {"message": "waited"})
    assert cli("jobs", "wait", ok["id"], "--timeout", "10") == 0
    assert "succeeded" in capsys.readouterr().out
    assert cli("jobs", "result", ok["id"]) == 0
    assert json.loads(capsys.readouterr().out) == "waited"

    bad = JobrelayClient(env, WRITER).submit("diagnostics.fail", {}, max_retries=0)
    assert cli("jobs", "wait", bad["id"], "--timeout", "10", "--watch") == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("error: DiagnosticFailure")

    # A dead letter now: listed and requeued
    assert cli("dead", "list", "default", "--json") == 0
    assert [item["id"] for item in out_json(capsys)["items"]] == [bad["id"]]  # type: ignore[index]
    assert cli("dead", "requeue", "default", "--id", bad["id"], "--json") == 0
    assert out_json(capsys) == {"requeued": 1}


def test_schedules_create_update_pause_resume_trigger_delete(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("schedules", "create", "nightly", "--task", "diagnostics.echo", "--arg", "message=hi",
               "--cron", "0 2 * * *", "--json") == 0  # fmt: skip
    created = out_json(capsys)
    assert created["cron"] == "0 2 * * *" and created["enabled"] is True  # type: ignore[index]

    assert cli("schedules", "update", "nightly", "--interval", "60", "--json") == 0
    assert out_json(capsys)["interval_s"] == 60  # type: ignore[index]
    assert cli("schedules", "pause", "nightly", "--json") == 0
    assert out_json(capsys)["enabled"] is False  # type: ignore[index]
    assert cli("schedules", "resume", "nightly", "--json") == 0
    assert out_json(capsys)["enabled"] is True  # type: ignore[index]

    assert cli("schedules", "trigger", "nightly", "--json") == 0
    job = out_json(capsys)
    assert job["schedule_id"] == "nightly" and job["args"] == {"message": "hi"}  # type: ignore[index]

    assert cli("schedules", "list") == 0
    assert any(line.startswith("nightly ") for line in capsys.readouterr().out.splitlines())
    assert cli("schedules", "delete", "nightly") == 0
    capsys.readouterr()
    assert cli("schedules", "get", "nightly") == 2
    assert "404" in capsys.readouterr().err


def test_workflows_submit_from_a_file_and_get(env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"type": "group", "steps": [{"task": "diagnostics.echo", "args": {"message": m}} for m in "ab"]}
    (tmp_path / "wf.json").write_text(json.dumps(body))
    assert cli("workflows", "submit", f"@{tmp_path / 'wf.json'}", "--json") == 0
    workflow = out_json(capsys)
    assert cli("workflows", "get", workflow["id"], "--json") == 0  # type: ignore[index]
    assert out_json(capsys)["type"] == "group"  # type: ignore[index]
    assert cli("workflows", "submit", "{not json") == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_tasks_list_and_show(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("tasks", "list") == 0
    assert any(line.startswith("diagnostics.echo ") for line in capsys.readouterr().out.splitlines())
    assert cli("tasks", "show", "diagnostics.echo", "--json") == 0
    assert out_json(capsys)["args_schema"]["required"] == ["message"]  # type: ignore[index]
    assert cli("tasks", "show", "nope") == 2
    assert "diagnostics.echo" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    seen = 0
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{current.prog} {action.dest} has no help"
                seen += 1
    assert seen > 60
    help_text = subprocess.run(
        [sys.executable, "-m", "services.cli", "jobs", "list", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "(default: 50)" in help_text


def test_completion_scripts_name_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert run(parser.parse_args(["completion", "bash"]), parser) == 0
    script = capsys.readouterr().out
    for command in ("jobs", "dead", "queues", "schedules", "workflows", "tasks", "trigger", "requeue"):
        assert command in script


def test_the_default_url_follows_api_bind() -> None:
    assert connect(None, "t", {"API_BIND": "0.0.0.0:9000"}).base_url == "http://127.0.0.1:9000"
    assert connect(None, "t", {"API_BIND": "10.1.2.3:8080"}).base_url == "http://10.1.2.3:8080"
    assert connect(None, "t", {"API_BIND": "0.0.0.0:9000", "JOBRELAY_URL": "http://x:1"}).base_url == "http://x:1"
    assert connect(None, "t", {}).base_url == "http://127.0.0.1:8000"


def test_the_exit_codes_are_documented() -> None:
    doc = (REPO / "docs" / "cli.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in doc


def test_docs_cli_md_lists_every_command() -> None:
    doc = (REPO / "docs" / "cli.md").read_text()
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        groups = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        actions = list(groups[0].choices) if groups else [""]
        for action in actions:
            assert f"`jobrelay {name} {action}".rstrip() in doc, f"{name} {action}"
