"""Result storage: small JSON results stay in the job row, larger ones and files go here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from shared.errors import SettingsError


class ResultStorage(Protocol):
    def put(self, job_id: str, data: bytes, content_type: str) -> str:
        """Store a job's result body; returns the reference kept in the row."""
        ...

    def open(self, reference: str) -> tuple[bytes, str]:
        """The stored body and its content type; ``FileNotFoundError`` when absent."""
        ...


def result_reference(job_id: str) -> str:
    """The one result body a job may have lives under its id."""
    return job_id


class DirectoryStorage:
    """Results as files in one directory, written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, job_id: str, data: bytes, content_type: str) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        name = result_reference(job_id)
        (self.root / f".{name}.type").write_text(content_type)
        temp = self.root / f".{name}.tmp"
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(self.root / name)
        return name

    def open(self, reference: str) -> tuple[bytes, str]:
        path = (self.root / reference).resolve()
        if path.parent != self.root.resolve() or reference.startswith("."):
            raise FileNotFoundError(reference)
        type_file = self.root / f".{reference}.type"
        content_type = type_file.read_text() if type_file.exists() else "application/octet-stream"
        return path.read_bytes(), content_type


def build_result_storage(url: str) -> ResultStorage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return DirectoryStorage(Path(parsed.path))
    raise SettingsError(f"RESULT_STORAGE_URL: scheme {parsed.scheme!r} is not supported yet; use file://")


def encode_result(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()
