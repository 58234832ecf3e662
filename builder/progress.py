"""Progress bars for long work: a bar with items/s and time left, or nothing with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from augzarr.errors import one_line


class Reporter:
    """Tells the user what long work is doing. The base class is silent (--quiet)."""

    @contextmanager
    def task(self, description: str, total: int, unit: str = "images") -> Iterator[callable]:
        yield lambda n=1: None

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        print(f"warning: {one_line(text)}", file=sys.stderr)  # one line, whatever a file name in it holds


class ConsoleReporter(Reporter):
    def __init__(self) -> None:
        self.console = Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int, unit: str = "images"):
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, rate="")

            def advance(n: int = 1) -> None:
                progress.advance(task_id, n)
                speed = progress.tasks[task_id].speed
                if speed:
                    progress.update(task_id, rate=f"{speed:,.0f} {unit}/s")

            yield advance

    def message(self, text: str) -> None:
        print(text, flush=True)
