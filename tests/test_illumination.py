"""Area cameras: each frame's illumination divided out, and no organism made of a gradient."""
from __future__ import annotations

import cv2
import numpy as np

from segplank.config import FilterConfig, MeasureConfig, PipelineConfig
from segplank.engine.stages import Postprocessor
from segplank.illumination import correct_illumination, estimate_illumination
from segplank.model.checkpoint import ClassMap
from segplank.structures import CroppedMasks, Detections, FrameCounts, FrameInfo, FrameRecord
from segplank.synth import SynthConfig
from segplank.synth.render import background


def _vignetted(dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
    bg = background(SynthConfig(seed=2, n_frames=1, preset="cfe", size=(1024, 1024)), 0)
    disc = np.zeros(bg.shape, np.uint8)
    cv2.circle(disc, (90, 90), 12, 1, -1)  # an organism in a dark corner
    img = bg * np.where(disc > 0, 0.5, 1.0) if dark else bg
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), disc.astype(bool)


def test_shadowgraph_vignetting_is_divided_out_and_the_organism_kept():
    img, disc = _vignetted()
    assert img[:20, :20].mean() / img[502:522, 502:522].mean() < 0.75  # strongly vignetted
    flat = correct_illumination(img, "dark_on_bright").astype(float)
    around = ~cv2.dilate(disc.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    level = np.median(flat[around])
    for window in (np.s_[:32, :32], np.s_[60:120, 60:120], np.s_[-32:, -32:], np.s_[496:528, 496:528], np.s_[:32, -32:]):
        assert abs(np.median(flat[window][around[window]]) / level - 1) < 0.04
    assert abs(flat[disc].mean() / level - 0.5) < 0.06  # the organism stops half the light, as drawn


def test_lit_frames_have_their_background_subtracted():
    h = w = 256
    yy, xx = np.mgrid[:h, :w]
    img = (5 + 20 * xx / w).astype(np.float32)  # a dark level drifting across the frame
    img[100:110, 100:110] += 120
    img = np.clip(img, 0, 255).astype(np.uint8)
    flat = correct_illumination(img, "bright_on_dark").astype(float)
    assert abs(np.median(flat[:, :40]) - np.median(flat[:, -40:])) <= 2
    assert flat[100:110, 100:110].mean() - np.median(flat) > 110
    assert estimate_illumination(img, "bright_on_dark").shape == img.shape


def test_area_cameras_are_corrected_by_default():
    assert PipelineConfig().area_illumination
    assert not PipelineConfig.model_validate({"instrument": {"line_rate_hz": 4096}}).area_illumination
    assert not PipelineConfig.model_validate({"tiling": {"illumination": False}}).area_illumination


def test_gradients_and_background_grey_are_no_organism():
    h = w = 400
    img = np.full((h, w), 200, np.uint8)
    cv2.circle(img, (100, 100), 12, 80, -1)  # an organism
    classes = ClassMap(("copepod",), (True,))
    organism = np.zeros((30, 30), bool)
    cv2.circle(organism.view(np.uint8), (15, 15), 12, 1, -1)
    spanning = np.ones((380, 20), bool)  # a mask as tall as the frame
    faint = np.ones((40, 40), bool)  # background-level grey
    masks = CroppedMasks(np.array([[85, 85], [300, 10], [250, 250]]), (organism, spanning, faint))
    d = Detections(np.array([[85, 85, 115, 115], [300, 10, 320, 390], [250, 250, 290, 290]], np.float32),
                   np.ones(3, np.float32), np.ones(3, np.int64), masks, frame=FrameInfo("f.png", 0, None))
    post = Postprocessor(classes, FilterConfig(score_threshold=0.0), MeasureConfig(refine=False), "dark_on_bright",
                         even_illumination=True)
    counts = FrameCounts(per_class=np.zeros(2, np.int64))
    kept = post(FrameRecord(d, img, counts)).dets
    assert len(kept) == 1 and counts.rejected == 2
    # a line scan's frames are not judged so (organisms longer than a frame are whole there)
    post = Postprocessor(classes, FilterConfig(score_threshold=0.0), MeasureConfig(refine=False), "dark_on_bright")
    counts = FrameCounts(per_class=np.zeros(2, np.int64))
    assert len(post(FrameRecord(d, img, counts))) == 3 and counts.rejected == 0
