"""Decode and tile frames ahead of the model, in worker processes, in the frames' own order.

Decoding a frame (15-30 ms for a 2048² PNG) and its empty-tile test (2-5 ms) are numpy and
OpenCV work that needs no model: DataLoader workers do it while the model runs on earlier
frames. Order never depends on the number of workers (the loader returns items in index
order), so shards and resumption do not either. A bad file is not an error in a worker: it
comes back as a ``SkippedFrame`` marker, and the main process logs and records it, exactly as
``FrameSource`` does in one process.
"""
from __future__ import annotations

import logging
import signal
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..frames import FrameError, SkippedFrame, read_frame
from ..structures import FrameInfo
from .stages import Tiler, TiledFrame

log = logging.getLogger("segplank")


@dataclass
class Decoded:
    """A decoded, tiled frame and the seconds its decode and tiling took (wherever they ran)."""

    tf: TiledFrame
    seconds: dict[str, float] = field(default_factory=dict)


class _Carrier:
    """What a loader worker returns: arrays cross as byte tensors, which torch's pickler moves
    through shared memory instead of down a pipe (a tiled 2048² frame is ~25 MB)."""

    def __init__(self, item: Decoded | SkippedFrame) -> None:
        self.item = item

    def __reduce__(self):
        item = self.item
        if isinstance(item, SkippedFrame):
            return _Carrier, (item,)
        tf = item.tf
        return _landed, (replace(tf, image=None, tiles=None), _to_bytes(tf.image), _to_bytes(tf.tiles), item.seconds)

    def pin_memory(self) -> "_Carrier":
        """Page-locked tiles, so the copy to the GPU overlaps compute (the loader's pin thread calls this)."""
        item = self.item
        if isinstance(item, SkippedFrame) or item.tf.tiles is None:
            return self
        return _Carrier(replace(item, tf=replace(item.tf, tiles=torch.as_tensor(item.tf.tiles).pin_memory())))


_Packed = tuple[torch.Tensor, str, tuple[int, ...]]


def _to_bytes(a: np.ndarray | None) -> _Packed | None:
    """A byte tensor (any dtype, uint16 included, which torch cannot pickle) with its dtype and shape."""
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    with warnings.catch_warnings():  # decoders hand out read-only arrays; the tensor is only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a.reshape(-1).view(np.uint8)), a.dtype.str, a.shape


def _from_bytes(p: _Packed | None) -> np.ndarray | None:
    return None if p is None else p[0].numpy().view(np.dtype(p[1])).reshape(p[2])


def _landed(tf: TiledFrame, image: _Packed, tiles: _Packed | None, seconds: dict[str, float]) -> _Carrier:
    return _Carrier(Decoded(replace(tf, image=_from_bytes(image), tiles=_from_bytes(tiles)), seconds))


def decode_and_tile(info: FrameInfo, tiler: Tiler | None, crop: bool = True) -> Decoded | SkippedFrame:
    """One frame decoded and tiled (``crop=False``: planned only; ``tiler=None``: decoded only,
    no tiles planned: the caller tiles it), or why it is unusable."""
    t0 = time.perf_counter()
    try:
        pixels = read_frame(info.path)
    except FrameError as e:
        return SkippedFrame(info.path, e.reason)
    t1 = time.perf_counter()
    frame = replace(info, height=int(pixels.shape[0]), width=int(pixels.shape[1]))
    if tiler is None:
        return Decoded(decoded_only(frame, pixels), {"decode": t1 - t0})
    tf = tiler(frame, pixels) if crop else tiler.plan(frame, pixels)
    return Decoded(tf, {"decode": t1 - t0, "tile": time.perf_counter() - t1})


def decoded_only(frame: FrameInfo, pixels: np.ndarray) -> TiledFrame:
    """A frame with its pixels and no tiles planned yet (``Tiler`` makes them from the pixels)."""
    return TiledFrame(frame, pixels, np.zeros((0, 4), np.int64), np.zeros(0, np.int64), None)


class _Frames(Dataset):
    """Map-style dataset over the frame list: item ``i`` is frame ``i``, decoded and tiled."""

    def __init__(self, frames: Sequence[FrameInfo], tiler: Tiler | None) -> None:
        self.frames = list(frames)
        self.tiler = tiler

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> _Carrier:
        return _Carrier(decode_and_tile(self.frames[i], self.tiler))


def prefetch(frames: Sequence[FrameInfo], tiler: Tiler | None, workers: int = 0,
             pin_memory: bool = False) -> Iterator[Decoded | SkippedFrame]:
    """Decoded, tiled frames in list order; ``workers`` processes decode ahead (0: in this process).

    ``tiler=None``: decoded only (``decoded_only``); the caller tiles each frame itself, as a
    line stream with flat-fielding does, whose state runs from frame to frame in one process.

    At most ``2 × workers`` frames wait decoded, so memory does not grow with the cruise.
    Unusable frames come as ``SkippedFrame`` (already logged, one line each). The workers
    start here, not at the first ``next``: before the caller starts threads of its own.
    Close the iterator (``contextlib.closing``) to stop them early. (OpenCV's thread count
    is left alone in the workers: ``cv2.setNumThreads`` hangs in a forked child.)
    """
    loader = DataLoader(_Frames(frames, tiler), batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=2 if workers else None, persistent_workers=False,
                        pin_memory=pin_memory, worker_init_fn=_leave_signals_to_the_run if workers else None)
    return _unpacked(iter(loader))


def _leave_signals_to_the_run(_: int) -> None:
    """Ctrl-C reaches the whole process group: the run stops after its frame in hand
    (``outdir.StopRequest``), which needs its workers alive until then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _unpacked(carriers: Iterator[_Carrier]) -> Iterator[Decoded | SkippedFrame]:
    for carried in carriers:
        item = carried.item
        if isinstance(item, SkippedFrame):
            log.warning("skipped %s: %s", item.path, item.reason)
        yield item
