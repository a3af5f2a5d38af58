"""The per-frame stages as callable classes: expensive state in ``__init__``, work in ``__call__``.

The local engine and a Ray engine run these very objects; nothing here touches global state.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import boxes as box_ops
from ..config import FilterConfig, MeasureConfig, Polarity, StitchConfig, TilingConfig
from ..illumination import correct_illumination
from ..measure import measure
from ..model.checkpoint import ClassMap
from ..model.classifier import VignetteClassifier, decide
from ..model.predict import TilePredictor
from ..refine import refine_masks, split_touching
from ..stitch import Stitcher
from ..structures import CroppedMasks, Detections, FrameCounts, FrameInfo, FrameRecord
from ..tiling import (component_boxes, crop_tiles, foreground_map, occupied_tiles, tile_grid, tile_proposals,
                      to_model_input)
from .timing import timed


@dataclass(frozen=True)
class TiledFrame:
    frame: FrameInfo
    image: np.ndarray  # the decoded frame, original grey levels
    windows: np.ndarray  # (T, 4) the whole grid
    run: np.ndarray  # (R,) indices of tiles that go to the model
    tiles: np.ndarray | torch.Tensor | None  # (R, S, S) float32 model input (pinned tensor on CUDA; None: planned only)
    proposals: list[np.ndarray] | None = None  # (R,) extra box proposals per tile run, tile pixels


class Tiler:
    """Frame → tiles worth running (the empty-tile test) as model input."""

    def __init__(self, cfg: TilingConfig, polarity: Polarity, component_proposals: bool = False,
                 illumination: bool = False) -> None:
        self.cfg = cfg
        self.polarity = polarity
        self.component_proposals = component_proposals
        self.illumination = illumination  # divide the frame's illumination out first (area cameras)

    def __call__(self, frame: FrameInfo, image: np.ndarray) -> TiledFrame:
        return self.crop(self.plan(frame, image))

    def plan(self, frame: FrameInfo, image: np.ndarray) -> TiledFrame:
        """The grid, the tiles worth running and their proposals, without the model input.

        A planned frame is the decoded frame plus a few small arrays: cheaper to ship between
        processes (Ray) than its float32 tiles, which ``crop`` makes where the model runs.
        """
        c = self.cfg
        if self.illumination:  # every later stage sees the evenly lit frame
            image = correct_illumination(image, self.polarity)
        h, w = image.shape
        windows = tile_grid(h, w, c.tile_size, c.overlap)
        fg = (foreground_map(image, self.polarity, c.fg_contrast, c.downsample)
              if c.skip_empty or self.component_proposals else None)
        if c.skip_empty:
            run = np.flatnonzero(occupied_tiles(fg, windows, c.downsample, c.fg_min_pixels))
        else:
            run = np.arange(len(windows))
        proposals = (tile_proposals(component_boxes(fg, c.downsample, c.fg_min_pixels), windows[run])
                     if self.component_proposals else None)
        frame = replace(frame, tiles=windows, height=h, width=w)
        return TiledFrame(frame, image, windows, run, None, proposals)

    def crop(self, tf: TiledFrame) -> TiledFrame:
        """The planned frame with its model input (the tiles to run, float32)."""
        if tf.tiles is not None:
            return tf
        size = self.cfg.tile_size
        if not len(tf.run):
            return replace(tf, tiles=np.zeros((0, size, size), np.float32))
        x = to_model_input(tf.image, self.polarity)
        return replace(tf, tiles=crop_tiles(x, tf.windows[tf.run], size))


class Postprocessor:
    """Stitched detections (device) → refined, named, filtered, measured numpy objects.

    One straight chain of stages over a ``FrameRecord`` (``chain``; ``__call__`` runs it):
    refine → reject → classify → deduplicate → filter → measure. ``prepare`` comes before it,
    and before the line stream joins frame cuts. With a ``classifier`` every detection is a
    candidate: it is refined, then the vignette classifier names it, and only then are the
    plankton filter and the per-class thresholds applied (to the classifier's probability).
    """

    def __init__(self, classes: ClassMap, filter_cfg: FilterConfig, measure_cfg: MeasureConfig,
                 polarity: Polarity, classifier: VignetteClassifier | None = None,
                 candidates: bool | None = None, even_illumination: bool = False) -> None:
        self.classes = classes
        # frames come evenly lit (illumination divided out): their median grey is the
        # background everywhere, what a mask of background-level grey is judged against
        self.even_illumination = even_illumination
        self.filter = filter_cfg
        self.measure_cfg = measure_cfg
        self.polarity = polarity
        self.classifier = classifier
        # every detection is a candidate to name (with a classifier, or to train one on)
        self.candidates = classifier is not None if candidates is None else candidates
        self._plankton = np.array([False, *classes.is_plankton])
        cfg = getattr(classifier, "cfg", None)
        self.decision = cfg.decision if cfg is not None else "flat"  # how the classifier's probabilities name an object
        self._thresholds = classes.threshold_array(filter_cfg.score_threshold)

    @property
    def chain(self) -> tuple[Callable[[FrameRecord], FrameRecord], ...]:
        """The stages, in order; each reads the record and returns it."""
        return (self.hand_over, self.refine, self.reject, self.classify, self.deduplicate, self.filter_objects,
                self.measure)

    def __call__(self, rec: FrameRecord, clock: dict[str, float] | None = None) -> FrameRecord:
        """Prepared objects refined on ``rec.image`` (same coordinates), named, filtered, measured.

        ``rec.counts.per_class`` follows the classifier's names where it renames detections.
        ``clock`` (optional) takes the seconds of refinement and of the classifier under their
        own names, the other stages' under "measure".
        """
        for stage in self.chain:
            name = stage.__name__
            with timed(clock, name if name in _OWN_CLOCK else "measure"):
                rec = stage(rec)
        rec.counts.written = len(rec)
        return rec

    def prepare(self, rec: FrameRecord) -> FrameRecord:
        """Every detection counted; the ones to go on as numpy with full-resolution masks.

        What a line stream joins across frame cuts before the chain.
        """
        d = rec.dets.numpy()
        rec.counts.add("detected", np.bincount(d.labels, minlength=len(self.classes) + 1))
        if not self.candidates:
            d = d[np.flatnonzero(self._plankton[d.labels] | self.filter.keep_non_plankton)]
        return rec.with_dets(d.replace(masks=d.masks.to_cropped(d.boxes)))

    def hand_over(self, rec: FrameRecord) -> FrameRecord:
        """With a classifier, the box head's names are candidates only: they leave the tally
        here, before refinement multiplies them, and the classifier's names enter it after
        ``deduplicate``."""
        if self.classifier is not None:
            rec.counts.add("named by the box head, renamed",
                           -np.bincount(rec.dets.labels, minlength=len(self.classes) + 1))
        return rec

    def refine(self, rec: FrameRecord) -> FrameRecord:
        """Masks redrawn at full resolution (``measure.refine``), boxes fitted to them.

        Candidates the box head took for plankton are refined twice, as boxed and grown past
        their prediction (``refine_masks``' ``grow``), when the two differ: a part of an
        organism grows into its whole, and the classifier judges which of the two is an object.
        Each is also cut into the pieces that ``split_touching`` pulls apart (``refine_split_px``):
        two touching organisms refine into one mask, and their pieces are candidates too.
        """
        m, d, image = self.measure_cfg, rec.dets, rec.image
        if not (m.refine and len(d)):
            return rec.with_dets(d.replace(boxes=d.masks.tight_boxes()))
        scale = 257.0 if image.dtype == np.uint16 else 1.0  # contrast is set in 8-bit grey levels
        contrast = m.refine_contrast * scale
        # organisms are what detectors box in parts (a trunk without its tail): only they grow
        organisms = self._plankton[d.labels]
        if self.candidates:
            plain = refine_masks(d, image, self.polarity, m.refine_dilate_px, contrast)
            idx = np.flatnonzero(organisms)
            grown = refine_masks(d[idx], image, self.polarity, m.refine_dilate_px, contrast, True)
            new = np.flatnonzero(np.abs(grown.boxes - plain.boxes[idx]).max(1, initial=0) > 0)
            both = Detections.cat([plain, grown[new]])
            return rec.with_dets(Detections.cat([both, split_touching(both, m.refine_split_px)]))
        grow = organisms & m.refine_grow
        return self._drop_grown_copies(rec.with_dets(refine_masks(d, image, self.polarity, m.refine_dilate_px,
                                                                  contrast, grow)), np.flatnonzero(grow))

    def _drop_grown_copies(self, rec: FrameRecord, idx: np.ndarray) -> FrameRecord:
        """Among ``idx``, masks grown past their boxes that now overlap past ``duplicate_iou``
        are one object (parts of an organism grown into its whole): keep the most confident."""
        d = rec.dets
        if len(idx) < 2:
            return rec
        keep = box_ops.nms(torch.from_numpy(d.boxes[idx]), torch.from_numpy(d.scores[idx]),
                           self.measure_cfg.duplicate_iou).numpy()
        drop = np.setdiff1d(idx, idx[keep])
        rec.counts.add("duplicates", len(drop))
        return rec.keep(np.setdiff1d(np.arange(len(d)), drop))

    def reject(self, rec: FrameRecord) -> FrameRecord:
        """On an evenly lit frame (an area camera's), refined masks that are no organism,
        counted: one spanning most of the frame (a brightness gradient that refinement
        followed) or one whose grey is on average within half ``refine_contrast`` of the
        background. A line stream's organisms may be longer than a frame: never judged here."""
        d, image = rec.dets, rec.image
        if not (self.even_illumination and len(d)):
            return rec
        h, w = image.shape
        bw, bh = d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1]
        bad = (bw >= SPANNING_SHARE * w) | (bh >= SPANNING_SHARE * h)
        scale = 257.0 if image.dtype == np.uint16 else 1.0
        bad |= mask_contrast(d.masks, image, self.polarity) < 0.5 * self.measure_cfg.refine_contrast * scale
        rec.counts.add("rejected", int(bad.sum()))
        return rec.keep(~bad)

    def classify(self, rec: FrameRecord) -> FrameRecord:
        """Candidates renamed and rescored by the vignette classifier; what it calls "not an
        object" (a fragment, a fusion, background) is not counted at all."""
        if self.classifier is None:
            return rec
        d = rec.dets
        if not len(d):
            return rec
        probs = self.classifier(rec.image, d.masks, self.polarity, rec.pixel_size_um)
        labels, scores = decide(probs, self._plankton, self.decision)
        return rec.with_dets(d.replace(labels=labels, scores=scores)).keep(labels > 0)

    def deduplicate(self, rec: FrameRecord) -> FrameRecord:
        """Named candidates that are one object seen several times, counted once.

        The box head proposes a box per class, and parts grow into their whole: after
        refinement and naming the copies coincide, and only the most confident is kept
        (``distinct``). Without a classifier, refinement itself drops the copies it makes.
        """
        if self.classifier is None:
            return rec
        keep = self.distinct(rec.dets)
        rec.counts.add("duplicates", len(rec) - len(keep))
        rec = rec.keep(keep)
        rec.counts.add("named by the classifier", np.bincount(rec.dets.labels, minlength=len(self.classes) + 1))
        return rec

    def filter_objects(self, rec: FrameRecord) -> FrameRecord:
        """Named objects that are plankton (or all, ``keep_non_plankton``) at their class's
        threshold, and within the size limits (ESD in µm), the rest counted."""
        d = rec.dets
        if self.classifier is not None:
            rec = rec.keep((self._plankton[d.labels] | self.filter.keep_non_plankton)
                           & (d.scores >= self._thresholds[d.labels]))
            d = rec.dets
        esd = 2.0 * np.sqrt(d.masks.areas() / np.pi) * rec.pixel_size_um
        ok = (esd >= self.filter.min_size_um) & (esd > 0)
        rec.counts.add("too_small", int((esd < self.filter.min_size_um).sum()))
        if self.filter.max_size_um is not None:
            rec.counts.add("too_large", int((esd > self.filter.max_size_um).sum()))
            ok &= esd <= self.filter.max_size_um
        return rec.keep(ok)

    def measure(self, rec: FrameRecord) -> FrameRecord:
        """The measurement columns (µm, grey, shape) of every object."""
        return replace(rec, columns=measure(rec.dets, rec.image, rec.pixel_size_um))

    def distinct(self, d: Detections) -> np.ndarray:
        """Sorted indices of the named objects that are neither a copy nor a part of a more confident one.

        Copies: boxes overlapping past ``measure.duplicate_iou``. Parts: objects lying mostly
        (``measure.contained_share`` of their own pixels) inside a more confident one. Only
        the object inside is judged: a larger object around a more confident small one is an
        organism with a speck or a radiolarian on it (the classifier calls fusions "not an
        object"). On the held-out cruise, judging both by the smaller one's pixels dropped
        such organisms and cost 0.03 recall at equal precision. An object inside that the
        classifier names another plankton class, with at least ``measure.overlying_score``,
        is not a part either: it is an organism lying over the other, as a copepod on a
        chaetognath in a shadowgraph (whose refined mask holds them both).
        """
        if len(d) < 2:
            return np.arange(len(d))
        boxes = torch.from_numpy(np.array(d.boxes, np.float32))  # copies: rows read back from Parquet are read-only
        scores = np.array(d.scores, np.float32)
        idx = np.sort(box_ops.nms(boxes, torch.from_numpy(scores), self.measure_cfg.duplicate_iou).numpy())
        idx = idx[np.argsort(-scores[idx], kind="stable")]  # most confident first
        overlap = (box_ops.box_iou(boxes[idx], boxes[idx]) > 0).numpy()  # only boxes that meet share pixels
        areas = d.masks.areas()[idx]
        labels = np.asarray(d.labels)[idx]
        over = self.measure_cfg.overlying_score
        overlying = self._plankton[labels] & (scores[idx] >= over) if over is not None else np.zeros(len(idx), bool)
        kept = np.zeros(len(idx), bool)
        share = self.measure_cfg.contained_share
        for a in range(len(idx)):
            around = np.flatnonzero(overlap[a, :a] & kept[:a])
            if overlying[a]:
                around = around[labels[around] == labels[a]]
            kept[a] = not any(_shared(d.masks, idx[a], idx[b]) >= share * areas[a] for b in around)
        return np.sort(idx[kept])


_OWN_CLOCK = ("refine", "classify")  # the postprocessor's stages a run's clock shows apart

SPANNING_SHARE = 0.9  # a refined mask this share of the frame's width or height across is no organism


def mask_contrast(masks: CroppedMasks, image: np.ndarray, polarity: Polarity) -> np.ndarray:
    """(N,) mean grey levels by which each mask stands out from the frame's median (its
    background on an evenly lit frame), positive for the camera's object polarity."""
    step = max(1, image.size // 65536)
    background = float(np.median(image.reshape(-1)[::step]))
    out = np.zeros(len(masks), np.float64)
    h, w = image.shape
    for i, (bitmap, (ox, oy)) in enumerate(zip(masks.bitmaps, masks.origins)):
        x0, y0 = max(int(ox), 0), max(int(oy), 0)
        x1, y1 = min(int(ox) + bitmap.shape[1], w), min(int(oy) + bitmap.shape[0], h)
        if x1 <= x0 or y1 <= y0:
            continue
        m = bitmap[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        if not m.any():
            continue
        mean = float(image[y0:y1, x0:x1][m].mean())
        out[i] = background - mean if polarity == "dark_on_bright" else mean - background
    return out


def _shared(masks: CroppedMasks, i: int, j: int) -> int:
    """Pixels that cropped masks ``i`` and ``j`` both hold."""
    (xi, yi), (xj, yj) = masks.origins[i], masks.origins[j]
    bi, bj = masks.bitmaps[i], masks.bitmaps[j]
    x0, y0 = max(xi, xj), max(yi, yj)
    x1, y1 = min(xi + bi.shape[1], xj + bj.shape[1]), min(yi + bi.shape[0], yj + bj.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(np.count_nonzero(bi[y0 - yi:y1 - yi, x0 - xi:x1 - xi] & bj[y0 - yj:y1 - yj, x0 - xj:x1 - xj]))


class FrameDetector:
    """Tiled frame → stitched frame detections, on the model's device."""

    def __init__(self, predictor: TilePredictor, stitch_cfg: StitchConfig, n_classes: int,
                 label_map: np.ndarray | None = None) -> None:
        self.predictor = predictor
        self.n_classes = n_classes  # the checkpoint's classes + "not an object": what the tally counts by
        # a plankton/non-plankton detector's labels as classes of the checkpoint (Checkpoint.label_map)
        self.label_map = None if label_map is None else torch.as_tensor(label_map)
        self.stitcher = Stitcher(match_iou=stitch_cfg.match_iou, duplicate_iou=stitch_cfg.duplicate_iou,
                                 mask_size=stitch_cfg.mask_size,
                                 batch_pairs=stitch_cfg.batch_pairs)

    def __call__(self, tf: TiledFrame, clock: dict[str, float] | None = None) -> FrameRecord:
        """The frame's record: stitched detections (on the device), its pixels, and a tally
        that starts with the tiles run and those that filled ``detections_per_tile``.

        ``clock`` (optional) accumulates seconds spent in the model and in the stitcher.
        """
        with timed(clock, "model"):
            tile_dets, capped = self.predictor.predict(tf.tiles, tf.proposals) if len(tf.run) else ([], 0)
        with timed(clock, "stitch"):
            dets = self.stitcher(tile_dets, tf.windows, tf.run, frame=tf.frame)
            if self.label_map is not None:
                labels = torch.as_tensor(dets.labels)
                dets = dets.replace(labels=self.label_map.to(labels.device)[labels].to(labels.dtype))
        counts = FrameCounts(n_classes=self.n_classes)
        counts.add("tiles_run", len(tf.run))
        counts.add("capped_tiles", capped)
        return FrameRecord(dets, tf.image, counts)
