"""How much memory the machine can give now, and the one-line refusal of data it cannot hold."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes of memory this machine can give a process now (Linux: MemAvailable), else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(needed: int, what: str, remedy: str) -> None:
    """Refuse, in one line, data the machine cannot hold: ``what`` needs about ``needed`` bytes."""
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"{what} need about {needed / 1e9:.1f} GB of memory; this machine has "
            f"{available / 1e9:.1f} GB available: {remedy}"
        )
