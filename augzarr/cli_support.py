"""Run a typer app so that every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import atexit
import errno
import os
import sys
import threading
from typing import NoReturn

import typer

from augzarr.errors import OptionError, UserError, one_line

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RESUME_HINT = "run the same command again to resume where it stopped"


def os_error_message(exc: OSError, resume_hint: str = RESUME_HINT) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left writing{where} ({exc.strerror}): free some space, then {resume_hint}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where} ({exc.strerror}): choose a writable --out or fix its permissions"
    return f"{exc.strerror or exc}{':' if where else ''}{where}"


def run_app(app: typer.Typer, prog: str, resume_hint: str = RESUME_HINT, interrupted: str | None = None) -> NoReturn:
    """interrupted: the line for Ctrl-C [default: "interrupted: <resume_hint>"], for a command
    that has nothing to resume."""
    try:
        # Not standalone: typer would print usage errors as a multi-line box and swallow Ctrl-C.
        code = app(standalone_mode=False, prog_name=prog)
    except typer.TyperException as exc:  # bad options, in typer's words
        fail(prog, exc.format_message().replace("\n", " "), EXIT_USAGE)
    except OptionError as exc:  # a value typer let through but out of range: a bad option all the same
        fail(prog, str(exc), EXIT_USAGE)
    except UserError as exc:
        fail(prog, str(exc), EXIT_USER_ERROR)
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except OSError as exc:
        fail(prog, os_error_message(exc, resume_hint), EXIT_USER_ERROR)
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this exit code
        fail(prog, interrupted or f"interrupted: {resume_hint}", EXIT_INTERRUPTED)
    end_process(code if isinstance(code, int) else 0)


def fail(prog: str, message: str, code: int) -> NoReturn:
    """Every error line goes out here: one line, whatever a file name in it holds."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    end_process(code)


def end_process(code: int) -> NoReturn:
    """Exit once the atexit handlers have run and the output is out, skipping the interpreter's finalization: a
    thread of a native runtime handing a result back to Python at that moment (obstore's tokio threads, through
    asyncio's call_soon_threadsafe) is stopped by CPython while inside Rust, which aborts the process (SIGABRT, exit
    -6) after the command has done its work. Nothing of ours waits for finalization: files are closed by then."""
    threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter's exit: wait for the threads that are not daemons
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (build-aug | head) or a closed stream
            pass
    os._exit(code)
