"""Shared helpers for the benchmark scripts: CPU of a process tree, percentiles, tables."""

from __future__ import annotations

from sluice import procfs


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children (gunicorn master + workers)."""
    total = 0.0
    for proc in [pid, *procfs.children(pid)]:
        info = procfs.stat(proc)
        if info is not None:
            total += info.cpu_seconds
    return total


def rss_mb(pid: int) -> float:
    return (procfs.rss_bytes(pid) or 0) / (1024 * 1024)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])
