"""Result storage: small JSON results stay in the job row, larger ones and files go here."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse, urlsplit

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

    def delete(self, reference: str) -> None:
        """Remove a stored body; nothing happens when it is already gone."""
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


#: Bucket names S3 and its look-alikes accept, legacy ones (capitals, underscores) included.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


@dataclass(frozen=True)
class S3Location:
    """Where results go in an S3-compatible store: a bucket and a key prefix (empty, or ending in ``/``)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://BUCKET[/prefix]``; ``ValueError`` saying what is wrong.

        Only the place is in the URL. The endpoint, region and credentials come
        from the standard AWS configuration (``AWS_ENDPOINT_URL_S3``,
        ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, a profile or a role), so
        no secret ever sits in a URL that gets logged.
        """
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError("must be a URL with scheme s3://")
        if "@" in parts.netloc:
            raise ValueError(
                "s3:// takes no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or use a profile or role)"
            )
        if parts.query or parts.fragment:
            raise ValueError(
                "s3:// takes no query parameters; set the endpoint and region with AWS_ENDPOINT_URL_S3 and "
                "AWS_DEFAULT_REGION"
            )
        if not parts.netloc:
            raise ValueError("s3:// needs a bucket: s3://BUCKET[/prefix]")
        if ":" in parts.netloc:
            raise ValueError("s3://BUCKET takes a bucket name, not a host and port; set AWS_ENDPOINT_URL_S3 for that")
        if not _BUCKET.fullmatch(parts.netloc):
            raise ValueError("the bucket name must be 3 to 255 letters, digits, dots, hyphens or underscores")
        prefix = parts.path.removeprefix("/").removesuffix("/")
        if "//" in prefix or prefix.startswith("/"):
            raise ValueError("the key prefix after the bucket must not have empty segments (//)")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")

    def key(self, reference: str) -> str:
        return self.prefix + reference


def build_result_storage(url: str) -> ResultStorage:
    """The storage ``RESULT_STORAGE_URL`` names; ``SettingsError`` when it cannot work."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return DirectoryStorage(Path(parsed.path))
    if parsed.scheme == "s3":
        try:
            location = S3Location.parse(url)
        except ValueError as exc:
            raise SettingsError(f"RESULT_STORAGE_URL: {exc}") from None
        # NOTE: imported here, so a deployment on file:// never loads boto3 (about 0.15 s per process).
        from shared.results.s3 import S3Storage

        return S3Storage.connect(location)
    raise SettingsError(f"RESULT_STORAGE_URL: scheme {parsed.scheme!r} is not supported; use file:// or s3://")
