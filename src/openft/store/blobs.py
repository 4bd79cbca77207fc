"""Blob storage over fsspec: uploaded files, and later checkpoints and weights.

``OPENFT_STORAGE_URL`` is any fsspec URL: a local folder by default,
``s3://bucket/prefix`` at scale (with ``s3fs`` installed). Writes go to a
temporary name and are renamed into place, so a reader never sees half a blob.
The calls are blocking; async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

import fsspec


class BlobStore:
    """Keys are relative paths such as ``files/org-…/file-…``."""

    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def writer(self, key: str) -> BlobWriter:
        """Write a blob atomically: it appears under ``key`` only on ``commit()``."""
        return BlobWriter(self, key)

    def put_dir(
        self, local: str, key: str, *, after_each_file: Callable[[str], None] | None = None
    ) -> None:
        """Upload a local folder to ``key`` atomically: file by file under a
        temporary name, then one rename. ``after_each_file`` is called with each
        uploaded file's relative path (progress, or a test's fault injection)."""
        final = self._path(key)
        partial = f"{final}.partial-{secrets.token_hex(4)}"
        self.fs.makedirs(partial, exist_ok=True)
        try:
            root = Path(local)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = path.relative_to(root).as_posix()
                self.fs.makedirs(f"{partial}/{relative}".rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), f"{partial}/{relative}")
                if after_each_file is not None:
                    after_each_file(relative)
            if self.fs.exists(final):
                self.fs.rm(final, recursive=True)
            self.fs.mv(partial, final, recursive=True)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(partial, recursive=True)
            raise

    def get_dir(self, key: str, local: str) -> None:
        """Download the folder ``key`` into the local folder ``local``."""
        self.fs.get(self._path(key).rstrip("/") + "/", local.rstrip("/") + "/", recursive=True)

    def get_file(self, key: str, local: str) -> None:
        self.fs.get(self._path(key), local)

    def open(self, key: str) -> IO[bytes]:
        return self.fs.open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(key))

    def delete_tree(self, key: str) -> None:
        """Remove a blob or a folder of blobs (a model's weights, a checkpoint)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(key), recursive=True)

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def local_path(self, key: str) -> Path | None:
        """The blob's path on this machine when the store is a local folder, else None."""
        from fsspec.implementations.local import LocalFileSystem

        return Path(self._path(key)) if isinstance(self.fs, LocalFileSystem) else None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))


class BlobWriter:
    """A blob being written under a temporary name. ``commit()`` renames it into
    place; ``abort()`` (or leaving a ``with`` block by an exception) removes it."""

    def __init__(self, store: BlobStore, key: str):
        self._fs = store.fs
        self.final_path = store._path(key)
        self._partial = f"{self.final_path}.partial-{secrets.token_hex(4)}"
        self._fs.makedirs(self.final_path.rsplit("/", 1)[0], exist_ok=True)
        self._handle: IO[bytes] | None = self._fs.open(self._partial, "wb")

    def write(self, data: bytes) -> None:
        assert self._handle is not None, "blob writer already closed"
        self._handle.write(data)

    def commit(self) -> None:
        assert self._handle is not None, "blob writer already closed"
        self._handle.close()
        self._handle = None
        self._fs.mv(self._partial, self.final_path)

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(self._partial)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._handle is not None:
            self.commit()
        else:
            self.abort()
