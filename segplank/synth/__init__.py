"""Synthetic in-situ plankton cruises with exact ground truth: the project's test bench.

`make_cruise(out_dir, n_frames, seed, ...)` writes frames (ISIIS shadowgraph or UVP lit),
COCO ground truth whose masks are exactly the drawn pixels, a ship track, a tow-yo CTD
record and the cruise's instrument config. `render_frame(cfg, k)` renders one frame in
memory with its objects' masks (what the tests check the files against).
"""
from .categories import CATEGORIES
from .cruise import CruiseSummary, make_cruise
from .params import SynthConfig
from .render import RenderedFrame, render_frame

__all__ = ["CATEGORIES", "CruiseSummary", "RenderedFrame", "SynthConfig", "make_cruise", "render_frame"]
