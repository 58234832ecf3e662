"""One writer per run folder: train holds an exclusive lock on its run folder while it runs.

The lock is flock(2) on the folder's own descriptor, as build-aug locks its store: the kernel
drops it when the process ends, however it ends, so a killed run never leaves it behind.
The descriptor is not inherited by programs train starts (Python opens it close-on-exec), and
a forked child closes its copy at once, so no child outlives train holding it. Threads share
it with train, which is what we want. No Keras here: the CLI checks before loading it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from augzarr.errors import UserError

_held: set[int] = set()


def _close_in_child() -> None:
    # a forked child shares the lock; closing its copy (not LOCK_UN, which would free the
    # parent's) lets the lock die with train alone
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def try_lock(run_dir: Path) -> int | None:
    """The descriptor holding run_dir's lock, or None when another process holds it."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _held.add(fd)
    return fd


def release(fd: int) -> None:
    _held.discard(fd)
    os.close(fd)


def live_run_message(run_dir: Path) -> str:
    return (
        f"another train is writing {run_dir} right now: wait for it to finish, or stop it "
        f"(then train --resume --out {run_dir} continues it)"
    )


def lock_run_dir(run_dir: Path) -> int:
    """Lock run_dir (an existing folder) for this process, or refuse: it is a live run."""
    fd = try_lock(run_dir)
    if fd is None:
        raise UserError(live_run_message(run_dir))
    return fd


def is_live(run_dir: Path) -> bool:
    """Whether another process holds run_dir's lock now (a folder that cannot be opened is not live)."""
    try:
        fd = try_lock(run_dir)
    except OSError:
        return False
    if fd is not None:
        release(fd)
    return fd is None
