"""Blob storage over fsspec: uploaded files, checkpoints, training state, weights.

``OPENFT_STORAGE_URL`` is any fsspec URL: a local folder by default,
``s3://bucket/prefix`` at scale (``pip install openft[s3]``; credentials from
the standard ``AWS_*`` variables, ``OPENFT_S3_ENDPOINT_URL`` for an
S3-compatible store). A reader never sees half a blob:

* on a file system, writes go to a temporary name and are renamed into place;
* on an object store, where a rename is a copy, a blob is written straight to
  its key as one multipart upload, which S3 makes visible only when it
  completes (and which is aborted on failure). Parts are ``PART_BYTES`` each,
  so an upload's memory stays flat whatever the file's size. A folder
  (checkpoint, weights) is complete once its key is recorded in the
  database, which happens only after its last file is uploaded.

The calls are blocking; async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import fsspec

PART_BYTES = 8 * 1024 * 1024
"""Size of one part of a multipart upload to an object store (S3's minimum is 5 MiB)."""


class StorageError(Exception):
    """Blob storage is unusable (missing bucket, refused credentials, unreachable)."""


class BlobStore:
    """Keys are relative paths such as ``files/org-…/file-…``."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        """``options``: fsspec storage options (for S3: ``client_kwargs.endpoint_url``)."""
        self.url = url
        options = dict(options or {})
        if url.startswith(("s3://", "s3a://")):
            # Other processes write here too: a cached listing would hide their blobs.
            options.setdefault("use_listings_cache", False)
        self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        self.renames = not _is_object_store(self.fs)
        """Whether a rename is atomic and cheap here (file systems: yes; object stores: no)."""
        if self.renames:
            self.fs.makedirs(self.root, exist_ok=True)

    def check(self) -> None:
        """Fail with a clear :class:`StorageError` if the store cannot be used
        (a missing bucket, refused credentials); servers call this at start-up."""
        if self.renames:
            return
        bucket = self.root.split("/", 1)[0]
        probe = f"{self.root.rstrip('/')}/.openft-probe-{secrets.token_hex(4)}"
        try:
            self.fs.ls(bucket, refresh=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except FileNotFoundError as exc:
            raise StorageError(f"Blob storage {self.url}: bucket {bucket!r} does not exist ({exc})") from exc
        except PermissionError as exc:
            raise StorageError(
                f"Blob storage {self.url}: access denied; check AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY ({exc})"
            ) from exc
        except Exception as exc:
            raise StorageError(f"Blob storage {self.url} is not usable: {type(exc).__name__}: {exc}") from exc

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
        if not self.renames:
            self._put_dir_direct(Path(local), final, after_each_file)
            return
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

    def _put_dir_direct(
        self, root: Path, final: str, after_each_file: Callable[[str], None] | None
    ) -> None:
        """Object stores: clear what an interrupted earlier attempt left under
        the key, then upload each file (each one atomic by itself)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(final, recursive=True)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            self.fs.put_file(str(path), f"{final}/{relative}")
            if after_each_file is not None:
                after_each_file(relative)

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

    def folder(self, key: str, cache: Path) -> Path:
        """A local folder holding the tree at ``key`` (a model's weights): the
        store's own folder when the store is local, else a copy at
        ``cache / key`` fetched once. The copy is downloaded beside its place
        and renamed into it, so a reader never sees half a folder and two
        processes fetching at once both end with one whole copy."""
        if (local := self.local_path(key)) is not None:
            return local
        target, whole = cache / key, cache / key / ".complete"
        if whole.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        try:
            self.get_dir(key, str(partial))
            (partial / ".complete").touch()
            if target.exists() and not whole.exists():  # an unfinished copy of an older version
                shutil.rmtree(target, ignore_errors=True)
            try:
                partial.rename(target)
            except OSError:  # another process put its copy there first
                if not whole.exists():
                    raise
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return target


class BlobWriter:
    """A blob being written under a temporary name. ``commit()`` renames it into
    place; ``abort()`` (or leaving a ``with`` block by an exception) removes it."""

    def __init__(self, store: BlobStore, key: str):
        self._fs = store.fs
        self.final_path = store._path(key)
        self._renames = store.renames
        if self._renames:
            self._partial = f"{self.final_path}.partial-{secrets.token_hex(4)}"
            self._fs.makedirs(self.final_path.rsplit("/", 1)[0], exist_ok=True)
            self._handle: Any = self._fs.open(self._partial, "wb")
        else:  # one multipart upload, visible at its key only once completed
            self._partial = self.final_path
            self._handle = self._fs.open(self.final_path, "wb", block_size=PART_BYTES)

    def write(self, data: bytes) -> None:
        assert self._handle is not None, "blob writer already closed"
        self._handle.write(data)

    def commit(self) -> None:
        assert self._handle is not None, "blob writer already closed"
        self._handle.close()
        self._handle = None
        if self._renames:
            self._fs.mv(self._partial, self.final_path)

    def abort(self) -> None:
        if not self._renames:
            if self._handle is not None:
                self._handle.discard()  # aborts the multipart upload: nothing appears
                self._handle.closed = True  # nothing left to flush when it is collected
                self._handle = None
            return
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


def _is_object_store(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs") for p in protocols)
