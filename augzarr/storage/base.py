"""The interface every storage backend implements, and the registry of URL schemes."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlparse

from augzarr.errors import UserError


class StorageError(UserError):
    """A storage problem the user can act on, in one line (credentials, a missing bucket, a server gone)."""


class LeaseHeld(StorageError):
    """Another build holds the store's single-writer lock."""


class Storage(ABC):
    """A store's objects by key: '/'-separated paths relative to the store's root, exactly zarr's
    keys ("zarr.json", "train/images/c/3/0/0/0") and augzarr's own (".build/chunks/train.3").

    Writes are whole-object and atomic: a reader sees the old object or the whole new one. So a
    raw chunk written here is a zarr chunk, and every backend stores the same bytes under the same keys.
    """

    location: str  # as the user wrote it, for messages
    fork_safe: bool = True  # whether a worker may be forked after this process has used the backend
    checks_free_space: bool = False  # whether free_bytes() means anything (a disk, not a bucket)

    @abstractmethod
    def __init__(self, location: str) -> None:
        """open_storage makes each backend from the location alone: a path, or a URL of one of its schemes."""

    def where(self, key: str = "") -> str:
        """A key as the user finds it: a file path, or a URL."""
        return f"{self.location.rstrip('/')}/{key}" if key else self.location

    @abstractmethod
    def exists(self) -> bool:
        """Whether the location exists: a folder (even empty), or any object under the prefix."""

    @abstractmethod
    def has(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; KeyError when it is absent."""

    def read_into(self, key: str, out: memoryview) -> int:
        """Fill out with the object's first len(out) bytes; the object's size is returned, so a caller can refuse a short one."""
        data = self.read(key)
        n = min(len(data), len(out))
        out[:n] = data[:n]
        return len(data)

    def read_many_into(self, keys: list[str], outs: list[memoryview]) -> list[int]:
        """read_into for a window of objects; a backend with latency fetches them concurrently."""
        return [self.read_into(key, out) for key, out in zip(keys, outs)]

    @abstractmethod
    def write(self, key: str, data: bytes | memoryview) -> None:
        """Store the object whole, atomically."""

    def read_json(self, key: str):
        return json.loads(self.read(key))

    def write_json(self, key: str, value) -> None:
        self.write(key, json.dumps(value).encode())

    @abstractmethod
    def list(self, prefix: str = "") -> dict[str, int]:
        """key -> size of every object under prefix taken as a folder ("a/b": a/b/..., never a/bc; "" for all), in one listing."""

    @abstractmethod
    def remove(self, prefix: str) -> None:
        """Remove every object under prefix, or the object of that key; nothing there is no error."""

    def remove_all_except(self, keep: set[str]) -> None:
        """Remove every object whose top-level name is not in keep (a fresh build's claim keeps its own state)."""
        for top in {key.split("/", 1)[0] for key in self.list()} - keep:
            self.remove(top)

    def discard_partial_writes(self) -> None:  # noqa: B027  a no-op by default, not abstract
        """Remove what writes cut short left behind (a backend whose writes are single requests leaves nothing)."""

    def usage(self) -> int:
        """Bytes the store takes."""
        return sum(self.list().values())

    def free_bytes(self) -> int | None:
        """Bytes free for the store to grow into, or None where that is not a meaningful question."""
        return None

    @abstractmethod
    def writer_lock(self, build_id: str, say=print) -> AbstractContextManager:
        """Held for a whole build: a second writer is refused at once (LeaseHeld); a lock left by a
        writer that died is taken over (say() tells the user when that needs saying)."""

    @abstractmethod
    def zarr_store(self, read_only: bool = False):
        """zarr's Store over the same objects, for metadata and the small arrays."""

    def local_path(self) -> Path | None:
        """The folder holding the store, where it is one on this machine."""
        return None


_BACKENDS: dict[str, type[Storage]] = {}


def register(*schemes: str):
    """Class decorator: the backend for these URL schemes ("" is a plain path)."""

    def decorate(cls: type[Storage]) -> type[Storage]:
        for scheme in schemes:
            _BACKENDS[scheme] = cls
        return cls

    return decorate


def url_scheme(location: str | os.PathLike) -> str:
    text = os.fspath(location)
    return urlparse(text).scheme.lower() if "://" in text else ""


def is_url(location: str | os.PathLike) -> bool:
    return url_scheme(location) not in ("", "file")


def open_storage(location: str | os.PathLike) -> Storage:
    """The backend for a path or URL; an unknown scheme is refused naming the known ones."""
    scheme = url_scheme(location)
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS) if s)
        raise StorageError(
            f"{os.fspath(location)}: unknown storage scheme {scheme}://; use a local path or one of {known}"
        )
    return _BACKENDS[scheme](os.fspath(location))
