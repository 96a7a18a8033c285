"""Clients generated from the live /openapi.json: openapi-python-client (it submits, reads and lists jobs)
and openapi-typescript (its types compile).

Generation must succeed with no warning about skipped or missing schemas (the time-zone enum, the
per-task variants and the ``const: true`` fields each broke it once).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.api_server import ApiServer

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("generated-api")
    server = ApiServer(root, f"sqlite:///{root / 'jobs.db'}")
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_generated_python_client_submits_reads_and_lists(sqlite_api: ApiServer, tmp_path: Path) -> None:
    # Given the document the API serves
    with urllib.request.urlopen(f"{sqlite_api.base_url}/openapi.json", timeout=10) as resp:
        (tmp_path / "openapi.json").write_bytes(resp.read())

    # When openapi-python-client generates a package from it
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", "openapi.json", "--output-path", "gen_client",
         "--meta", "none"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Warning" not in output and "Unable to parse" not in output, output

    # Then the generated package imports and talks to the API
    sys.path.insert(0, str(tmp_path))
    try:
        client_mod = importlib.import_module("gen_client.client")
        submit_job = importlib.import_module("gen_client.api.jobs.submit_job")
        get_job = importlib.import_module("gen_client.api.jobs.get_job")
        list_jobs = importlib.import_module("gen_client.api.jobs.list_jobs")
        echo_model = importlib.import_module("gen_client.models.job_request_diagnostics_echo")
        echo_args = importlib.import_module("gen_client.models.job_request_diagnostics_echo_args")
        client: Any = client_mod.AuthenticatedClient(base_url=sqlite_api.base_url, token=sqlite_api.token)
        body = echo_model.JobRequestDiagnosticsEcho.from_dict({"task": "diagnostics.echo", "args": {"message": "gen"}})
        assert isinstance(body.args, echo_args.JobRequestDiagnosticsEchoArgs)
        submitted = submit_job.sync_detailed(client=client, body=body)
        assert submitted.status_code == 202, submitted.content
        job_id = json.loads(submitted.content)["id"]
        read = get_job.sync(client=client, job_id=job_id)
        assert str(read.id) == job_id and read.task == "diagnostics.echo"
        page = list_jobs.sync(client=client, task="diagnostics.echo")
        assert job_id in [str(job.id) for job in page.items]
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "gen_client" or n.startswith("gen_client.")]:
            del sys.modules[name]


#: Pinned, and installed into the test's own directory (npm, from its registry).
OPENAPI_TYPESCRIPT = "openapi-typescript@7.13.0"
TYPESCRIPT = "typescript@5.9.3"


def test_openapi_typescript_generates_types_that_compile(sqlite_api: ApiServer, tmp_path: Path) -> None:
    npm = shutil.which("npm")
    assert npm, "npm is needed for openapi-typescript (Debian: npm)"
    with urllib.request.urlopen(f"{sqlite_api.base_url}/openapi.json", timeout=10) as resp:
        document = json.loads(resp.read())
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp_path), OPENAPI_TYPESCRIPT, TYPESCRIPT],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr

    bin_dir = tmp_path / "node_modules" / ".bin"
    generated = subprocess.run(
        [str(bin_dir / "openapi-typescript"), "openapi.json", "-o", "schema.d.ts"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0 and "warn" not in output.lower() and "error" not in output.lower(), output

    # Every path and every schema is in the types, and they compile
    types = (tmp_path / "schema.d.ts").read_text()
    for path in document["paths"]:
        assert f'"{path}": {{' in types, path
    for name in document["components"]["schemas"]:
        assert f'"{name}":' in types or f"{name}:" in types, name
    compiled = subprocess.run(
        [str(bin_dir / "tsc"), "--noEmit", "--strict", "schema.d.ts"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
