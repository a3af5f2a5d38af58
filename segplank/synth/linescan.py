"""Ground truth of a line-scan cruise in stream coordinates: each object whole, once.

ISIIS frames are consecutive cuts of one stream of lines (``SynthConfig.line_scan``), and an
object cut by a frame boundary appears in every frame it reaches with the same ``uid``.
Joining those parts gives the object as a stream-aware pipeline must return it: one mask
in stream rows (row 0 = the first line of frame 0), owned by the frame of its first line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .params import SynthConfig
from .render import RenderedFrame, render_frame


@dataclass(frozen=True)
class StreamObject:
    uid: str
    category_id: int
    x0: int
    y0: int  # stream row of the mask's first row
    mask: np.ndarray  # bool (h, w), tight
    frames: tuple[int, ...]  # frames showing a part of it, in order

    @property
    def owner(self) -> int:
        """The frame of the object's first line."""
        return self.frames[0]


def stream_objects(cfg: SynthConfig, frames: Iterable[RenderedFrame] | None = None) -> list[StreamObject]:
    """Every object of the cruise's frames joined across cuts, in order of first line, then x.

    ``frames``: the rendered frames (rendered here when None). Only what the frames show
    counts: an object reaching past the last frame keeps its visible part.
    """
    if not cfg.line_scan:
        raise ValueError("stream coordinates exist only for a line-scan (isiis) cruise")
    frames = frames if frames is not None else (render_frame(cfg, k) for k in range(cfg.n_frames))
    parts: dict[str, list] = {}
    for f in frames:
        for o in f.objects:
            parts.setdefault(o.spec.uid, []).append((f.index, o.x0, o.y0 + f.index * cfg.height, o.mask,
                                                     cfg.truth_category(o.spec)))
    out = []
    for uid, ps in parts.items():
        x0 = min(p[1] for p in ps)
        y0 = min(p[2] for p in ps)
        x1 = max(p[1] + p[3].shape[1] for p in ps)
        y1 = max(p[2] + p[3].shape[0] for p in ps)
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        for _, ox, oy, m, _ in ps:
            mask[oy - y0:oy - y0 + m.shape[0], ox - x0:ox - x0 + m.shape[1]] |= m
        out.append(StreamObject(uid, ps[0][4], x0, y0, mask, tuple(sorted({p[0] for p in ps}))))
    out.sort(key=lambda o: (o.y0, o.x0))
    return out


def write_avi(path, images: Iterable[np.ndarray], frame_rate_hz: float = 2.0) -> None:
    """Grey frames as a lossless AVI (FFV1 through PyAV; OpenCV's writer where PyAV is absent).

    Each image becomes one video frame, so the AVI's frames are the cruise's frames.
    """
    from fractions import Fraction
    from pathlib import Path

    path = Path(path)
    images = iter(images)
    first = next(images, None)
    if first is None:
        raise ValueError("write_avi needs at least one frame")
    h, w = first.shape
    try:
        import av
    except ImportError:
        import cv2

        out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), frame_rate_hz, (w, h), isColor=False)
        if not out.isOpened():
            raise OSError(f"OpenCV cannot write {path} with FFV1; install PyAV (pip install av)")
        for im in (first, *images):
            out.write(np.ascontiguousarray(im, np.uint8))
        out.release()
        return
    with av.open(str(path), "w") as c:
        st = c.add_stream("ffv1", rate=Fraction(frame_rate_hz).limit_denominator(1000))
        st.width, st.height, st.pix_fmt = w, h, "gray"
        for im in (first, *images):
            for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(im, np.uint8), format="gray")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
