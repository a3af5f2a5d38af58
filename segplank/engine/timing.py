"""Seconds per stage, summed into a run's clock (``RunStats.stage_seconds``)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def timed(clock: dict[str, float], stage: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        clock[stage] = clock.get(stage, 0.0) + time.perf_counter() - t


@contextmanager
def untimed() -> Iterator[None]:
    yield
