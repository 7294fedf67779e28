"""How much memory the machine can give a process now: what both data sources check sizes against."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes of memory this machine can give a process now (Linux: MemAvailable), else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
