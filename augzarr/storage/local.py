"""A store in a folder of this machine's filesystem: plain paths and file:// URLs.

file:// is mapped here rather than handed to zarr, which would give it to fsspec's local backend:
that writes files in place, so a reader could see half a chunk (docs/object-storage/REPORT.md).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from augzarr.errors import UserError

from .base import LeaseHeld, Storage, register

_held_locks: set[int] = set()


def _close_inherited_locks() -> None:
    # A forked worker gets a copy of the parent's lock; it lets go of it, so the lock dies with the parent.
    for fd in list(_held_locks):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@register("", "file")
class LocalStorage(Storage):
    checks_free_space = True

    def __init__(self, location: str):
        self.root = Path(unquote(urlparse(location).path)) if location.startswith("file://") else Path(location)
        self.location = str(self.root)

    def where(self, key: str = "") -> str:
        return str(self.root / key) if key else self.location

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self) -> bool:
        return self.root.exists()

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def read(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def read_into(self, key: str, out: memoryview) -> int:
        """Straight from the file into out: one copy, with the GIL released during the read
        (a training loop runs beside the reader thread)."""
        try:
            with open(self.path(key), "rb", buffering=0) as file:
                file.readinto(out)
                return os.fstat(file.fileno()).st_size
        except FileNotFoundError:
            raise KeyError(key) from None

    def write(self, key: str, data: bytes | memoryview) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)

    def list(self, prefix: str = "") -> dict[str, int]:
        base = self.path(prefix)
        found = {}
        for parent, _, names in os.walk(base):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):  # a write in flight or cut short
                    continue
                file = Path(parent, name)
                try:
                    found[file.relative_to(self.root).as_posix()] = file.stat().st_size
                except FileNotFoundError:
                    pass
        return found

    def remove(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()

    def remove_all_except(self, keep: set[str]) -> None:
        """Every entry of the root folder except those named in keep."""
        for entry in self.root.iterdir():
            if entry.name not in keep:
                self.remove(entry.name)

    def discard_partial_writes(self) -> None:
        """The temporary files of writes whose process was killed before its rename (list() never shows them)."""
        for file in self.root.rglob(".*.tmp"):
            file.unlink(missing_ok=True)

    def usage(self) -> int:
        """Blocks on disk, not file sizes: what the store costs the filesystem."""
        total = 0
        for parent, _, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.stat(os.path.join(parent, name)).st_blocks * 512
                except OSError:
                    pass
        return total

    def free_bytes(self) -> int:
        """Free space where the store goes, counting what an earlier build there already holds."""
        existing = next(p for p in [self.root, *self.root.absolute().parents] if p.exists())
        return shutil.disk_usage(existing).free + (self.usage() if self.root.is_dir() else 0)

    @contextmanager
    def writer_lock(self, build_id: str, say=print):
        """An exclusive flock on the store's folder; the kernel drops it when the process dies, so
        nothing is ever left to take over."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root} is a file; give a folder path for the store")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseHeld(
                f"another build-aug is writing {self.root} right now: wait for it to finish, or stop it, "
                "then run this again"
            ) from None
        _held_locks.add(fd)
        try:
            yield lambda: None  # nothing can take a flock away: nothing to check
        finally:
            _held_locks.discard(fd)
            os.close(fd)

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import LocalStore

        return LocalStore(self.root, read_only=read_only)

    def local_path(self) -> Path:
        return self.root


def write_atomic(path: Path, data: str | bytes | memoryview) -> None:
    """Replace a file whole: readers see the old contents or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w" if isinstance(data, str) else "wb") as file:
        file.write(data)
    os.replace(tmp, path)
