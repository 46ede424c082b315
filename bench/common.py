"""Shared benchmark helpers: timing, peak memory, and dated entries appended to BUILD_NOTES.md."""
from __future__ import annotations

import datetime
import platform
import resource
import time
from pathlib import Path

NOTES = Path(__file__).resolve().parents[1] / "BUILD_NOTES.md"


def machine() -> str:
    import os
    return f"{platform.machine()} CPU x{os.cpu_count()} ({platform.processor() or 'unknown'})"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def timed(fn, *, warmup: int = 1, iters: int = 3) -> float:
    """Median seconds per call after warm-up (fn must block until done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def append_notes(title: str, table: str) -> None:
    stamp = datetime.date.today().isoformat()
    with NOTES.open("a") as f:
        f.write(f"\n### {title} ({stamp}, {machine()})\n\n{table}\n")


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
