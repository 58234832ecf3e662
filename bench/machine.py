"""The machine a benchmark ran on, as its reports name it (stdlib only: the benchmarks that run a peer in a venv of
its own import it there too)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo (and lscpu) give it; elsewhere what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
