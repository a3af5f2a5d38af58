"""Seconds per stage, summed into a run's clock (``RunStats.stage_seconds``).

Stages nest (a line stream's join runs the postprocessor on the objects it closes, the
postprocessor runs the classifier): a second is counted once, in the innermost stage that
spent it, so the shares of a clock add up to its wall time.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

_open = threading.local()  # per thread: [clock id, seconds spent in blocks nested inside] of each open block


@contextmanager
def timed(clock: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Seconds of the block into ``clock[stage]`` (``clock`` None: not counted)."""
    if clock is None:
        yield
        return
    stack = _open.__dict__.setdefault("stack", [])
    entry = [id(clock), 0.0]
    stack.append(entry)
    t = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - t
        stack.pop()
        clock[stage] = clock.get(stage, 0.0) + elapsed - entry[1]
        for outer in reversed(stack):
            if outer[0] == entry[0]:
                outer[1] += elapsed
                break


@contextmanager
def untimed() -> Iterator[None]:
    yield
