"""The run's output folder: one writer at a time, errors about it said in one line.

A second ``segplank infer`` on the same folder would delete the first one's temporary files
and unfinished shards at its start-up, so the folder is locked for the whole run (an OS
file lock: released by any exit, ``kill -9`` included). A folder that cannot be written
(a file of that name, read-only, a full disk) is a user's problem to fix, not a traceback:
the error names the folder and says that rerunning the same command resumes.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

LOCK_NAME = ".segplank.lock"
# errors that say the folder (or its disk) cannot take the output, whatever file was being written
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_RESUME = "then rerun the same command: it resumes where this run stopped"


class RunError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""


class Interrupted(RuntimeError):
    """Raised inside a run to stop it where it stands (a second Ctrl-C)."""


@contextmanager
def claimed(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for one run: created, writable, locked; OSErrors writing it become RunError."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{out_dir}: is a file, not a folder; choose another -o folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(out_dir / LOCK_NAME, timeout=0)
        lock.acquire()
    except Timeout:
        raise RunError(f"{out_dir}: another segplank run is writing to this folder; wait for it to end "
                       "or choose another -o folder") from None
    except OSError as e:
        raise RunError(write_error(out_dir, e)) from None
    try:
        yield
    except OSError as e:
        if not _about_output(e, out_dir):
            raise
        raise RunError(write_error(out_dir, e)) from None
    finally:
        lock.release()


def write_error(out_dir: Path, e: OSError) -> str:
    """One line for an output folder that cannot be written."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space (or choose another -o folder)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable (or choose another -o folder)"
    else:
        fix = "check the folder and its disk"
    return f"{out_dir}: cannot write the output ({why}); {fix}, {_RESUME}"


def _about_output(e: OSError, out_dir: Path) -> bool:
    if e.errno in _WRITE_ERRNOS:
        return True
    name = getattr(e, "filename", None)
    if not name:
        return False
    try:
        Path(os.path.abspath(name)).relative_to(os.path.abspath(out_dir))
        return True
    except ValueError:
        return False


class StopRequest:
    """Ctrl-C or SIGTERM asks a run to stop after the frame in hand, write what is done and end.

    The first signal sets ``requested`` (the frame loop checks it between frames); a second
    one stops at once (``Interrupted``), losing only the frames not yet written. Handlers are
    installed only in the main thread (signals are delivered there) and restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise Interrupted(f"stopped by a second {signal.Signals(signum).name}")
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logging.getLogger("segplank").warning(
            "%s: finishing the frame in hand and writing what is done (again to stop at once)", self.signal_name)
