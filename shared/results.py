"""Result storage: small JSON results stay in the job row, larger ones and files go here."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

from shared.errors import SettingsError


class ResultStorage(Protocol):
    def put(self, job_id: str, data: bytes, content_type: str) -> str:
        """Store a job's result body; returns the reference kept in the row."""
        ...

    def open(self, reference: str) -> tuple[bytes, str]:
        """The stored body and its content type; ``FileNotFoundError`` when absent."""
        ...

    def writer(self, job_id: str, content_type: str) -> AbstractContextManager[BinaryIO]:
        """A file to stream a result into; it becomes visible only when the block succeeds."""
        ...


def result_reference(job_id: str) -> str:
    """The one result body a job may have lives under its id."""
    return job_id


class DirectoryStorage:
    """Results as files in one directory, written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, job_id: str, data: bytes, content_type: str) -> str:
        with self.writer(job_id, content_type) as handle:
            handle.write(data)
        return result_reference(job_id)

    @contextlib.contextmanager
    def writer(self, job_id: str, content_type: str) -> Iterator[BinaryIO]:
        self.root.mkdir(parents=True, exist_ok=True)
        name = result_reference(job_id)
        temp = self.root / f".{name}.tmp"
        try:
            with temp.open("wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        (self.root / f".{name}.type").write_text(content_type)
        temp.replace(self.root / name)

    def delete(self, reference: str) -> None:
        (self.root / reference).unlink(missing_ok=True)
        (self.root / f".{reference}.type").unlink(missing_ok=True)

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
