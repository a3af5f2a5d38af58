"""Train the vignette classifier (``model/classifier.py``) on annotated frames.

Two sources of vignettes, as in decoupled classification refinement (the classifier learns
the detector's mistakes):
- every annotated object, its mask refined on the frame's own grey levels as inference
  refines it (``refine.refine_masks``), and again with the annotator's own mask;
- the detector's candidates on the training frames (``mine``), each refined and named by its
  best match: the annotated object's class at mask IoU ≥ 0.5 (what evaluation counts as
  found), else "not an object" (label 0): parts, fusions and background the detector boxed.
Classes are drawn equally often (plankton is about 1 % of the objects), "not an object" at
``negative_share`` of each batch; vignettes are flipped and turned (organisms have no up in
the water) and their contrast scaled slightly. Seeded: the same data and seed give the same
weights on CPU.

Fast on a CPU: a few minutes for tens of thousands of vignettes, against hours for the
detector, so a classifier can be retrained on new annotations without touching the detector.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pycocotools import mask as mask_utils

from .config import MeasureConfig, PipelineConfig, Polarity
from .io.rle import encode_in_frame
from .model.checkpoint import Checkpoint, ClassMap
from .model.classifier import ClassifierConfig, VignetteClassifier, VignetteNet, organism_vignette, vignettes
from .refine import refine_masks
from .structures import CroppedMasks, Detections
from .train_data import TrainFrame, coco_categories, load_coco_frames

if TYPE_CHECKING:
    from .library import LibraryItem, VignetteLibrary
    from .model.taxa_classifier import TaxaClassifier

log = logging.getLogger("segplank")


@dataclass(frozen=True)
class ClassifierTrainConfig:
    net: ClassifierConfig = ClassifierConfig()
    iterations: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    # share of each batch drawn from "not an object": the most varied of the classes (parts,
    # fusions, background), and the one a wrong call turns into a counted organism
    negative_share: float = 0.25
    # classes are drawn in proportion to (their vignettes) ** class_power: 0 draws every class
    # equally often (plankton is 1 % of a frame's objects), 1 as often as the library holds them
    class_power: float = 0.0
    # share of the objects drawn (beside "not an object") that are plankton, whatever the number
    # of classes on each side; None: by class_power alone. A hundred plankton taxa drawn as often
    # as a handful of non-living classes teach the classifier that nearly everything is an
    # organism, where in the water nearly nothing is: marine snow is then called plankton.
    plankton_share: float | None = None
    # bfloat16 autocast, weights kept in float32: 1.56x faster on 2 cores with AVX512-BF16
    # (0.20 s against 0.31 s an iteration), slower than float32 on a CPU without bf16 instructions
    bf16: bool = False

    def record(self, pixel_size_um: float) -> dict:
        """What a trained classifier keeps of how it was trained."""
        return {**self.net.to_dict(), "iterations": self.iterations, "batch_size": self.batch_size, "lr": self.lr,
                "seed": self.seed, "pixel_size_um": pixel_size_um, "class_power": self.class_power,
                "plankton_share": self.plankton_share, "bf16": self.bf16}


@dataclass(frozen=True)
class VignetteSet:
    """Vignettes (float16 to halve memory), their scalars and 1-based labels."""

    x: np.ndarray  # (N, 2, S, S) float16
    scalars: np.ndarray  # (N, 3) float32
    labels: np.ndarray  # (N,) int64, 0: not an object

    @staticmethod
    def cat(parts: Sequence["VignetteSet"]) -> "VignetteSet":
        return VignetteSet(np.concatenate([p.x for p in parts]), np.concatenate([p.scalars for p in parts]),
                           np.concatenate([p.labels for p in parts]))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_x": self.x, f"{prefix}_scalars": self.scalars, f"{prefix}_labels": self.labels}

    @staticmethod
    def load(arrays: "np.lib.npyio.NpzFile", prefix: str) -> "VignetteSet":
        return VignetteSet(arrays[f"{prefix}_x"], arrays[f"{prefix}_scalars"], arrays[f"{prefix}_labels"])


class VignetteCache:
    """Vignettes cut once (mining runs the detector on every frame: most of a run on a CPU),
    reused while the detector, the annotation files and the config that makes and cuts the
    candidates stay the same.

    The key is a digest of all of them (not of the images: they are named by the annotation
    files); a cache made under another key is rebuilt, never used.
    """

    def __init__(self, path: Path | None, ckpt: Checkpoint, paths: Sequence[Path], size: int,
                 pipeline: PipelineConfig, mine_frames: int | None, extra: str = "") -> None:
        self.path = path
        h = hashlib.sha256(extra.encode())
        for name, t in sorted(ckpt.state_dict.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for p in paths:
            h.update(str(p).encode())
            h.update(Path(p).read_bytes() if Path(p).is_file() else b"")
        h.update(json.dumps({"size": size, "mine_frames": mine_frames,
                             "instrument": pipeline.instrument.model_dump(mode="json"),
                             "measure": pipeline.measure.model_dump(mode="json"),
                             "tiling": pipeline.tiling.model_dump(mode="json"),
                             "stitch": pipeline.stitch.model_dump(mode="json"),
                             "detector": pipeline.detector.model_dump(mode="json")}, sort_keys=True).encode())
        self.key = h.hexdigest()

    def load(self) -> tuple[VignetteSet, VignetteSet | None, int] | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            with np.load(self.path) as a:
                if str(a["key"]) != self.key:
                    log.warning("%s: made for another detector, annotations or config; mining again", self.path)
                    return None
                val = VignetteSet.load(a, "val") if "val_x" in a else None
                return VignetteSet.load(a, "train"), val, int(a["mined_frames"])
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable vignette cache (%s); mining again", self.path, type(e).__name__)
            return None

    def save(self, train: VignetteSet, val: VignetteSet | None, mined_frames: int) -> None:
        if self.path is None:
            return
        arrays = {"key": np.array(self.key), "mined_frames": np.array(mined_frames), **train.arrays("train")}
        if val is not None:
            arrays.update(val.arrays("val"))
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(self.path)


def frame_objects(fr: TrainFrame) -> CroppedMasks:
    return CroppedMasks(np.array([a.origin for a in fr.annotations], np.int64).reshape(-1, 2),
                        tuple(a.bitmap for a in fr.annotations))


def vignette_set(frames: Sequence[TrainFrame], polarity: Polarity, measure: MeasureConfig, size: int,
                 pixel_size_um: float, annotated_too: bool = True) -> VignetteSet:
    """Every annotated object as refined (as inference sees it) and, with ``annotated_too``, as drawn."""
    parts = []
    for fr in frames:
        if not fr.annotations:
            continue
        masks = frame_objects(fr)
        d = Detections(fr.boxes.astype(np.float32), np.ones(len(fr.labels), np.float32), fr.labels, masks)
        scale = 257.0 if fr.pixels.dtype == np.uint16 else 1.0
        refined = refine_masks(d, fr.pixels, polarity, measure.refine_dilate_px, measure.refine_contrast * scale).masks
        for m in (refined, masks) if annotated_too else (refined,):
            x, s = vignettes(fr.pixels, m, polarity, pixel_size_um, size)
            parts.append(VignetteSet(x.astype(np.float16), s, fr.labels))
    if not parts:
        raise ValueError("no annotated object to train the classifier on")
    return VignetteSet.cat(parts)


MATCH_IOU = 0.5


def candidate_labels(cands: CroppedMasks, fr: TrainFrame, iou: float = MATCH_IOU) -> np.ndarray:
    """(N,) the label of each candidate's best-matching annotation at mask IoU ≥ ``iou``, else 0."""
    h, w = fr.pixels.shape
    out = np.zeros(len(cands), np.int64)
    if not len(cands) or not fr.annotations:
        return out
    c = [encode_in_frame(b, tuple(o), h, w) for b, o in zip(cands.bitmaps, cands.origins)]
    g = [encode_in_frame(a.bitmap, a.origin, h, w) for a in fr.annotations]
    ious = np.asarray(mask_utils.iou(c, g, [0] * len(g))).reshape(len(c), len(g))
    best = ious.argmax(1)
    hit = ious[np.arange(len(c)), best] >= iou
    out[hit] = fr.labels[best[hit]]
    return out


def mine(ckpt: Checkpoint, frames: Sequence[TrainFrame], pipeline: PipelineConfig, size: int, pixel_size_um: float,
         progress: Callable[[int, dict], None] | None = None) -> VignetteSet:
    """The detector's refined candidates on annotated frames, labelled by their best match (0: none)."""
    from .engine.local import build_stages, resolve_device
    from .structures import FrameInfo

    stages = build_stages(pipeline, ckpt, resolve_device(pipeline.device), candidates=True)
    parts = []
    for k, fr in enumerate(frames):
        info = FrameInfo(fr.path or Path(fr.name), k, None, pixel_size_um=pixel_size_um)
        with torch.inference_mode():
            rec = stages.post.prepare(stages.detector(stages.tiler(info, fr.pixels)))
        d = stages.post.refine(dataclasses.replace(rec, image=fr.pixels)).dets  # the annotations' own grey levels
        x, s = vignettes(fr.pixels, d.masks, fr.polarity, pixel_size_um, size)
        parts.append(VignetteSet(x.astype(np.float16), s, candidate_labels(d.masks, fr)))
        if progress:
            progress(k + 1, {"candidates": len(d)})
    return VignetteSet.cat(parts)


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips, 90° turns and a contrast gain per vignette (x: (B, 2, S, S))."""
    out = np.empty_like(x)
    for i in range(len(x)):
        v = np.rot90(x[i], int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            v = v[:, :, ::-1]
        out[i] = v
    out[:, 0] *= rng.uniform(0.85, 1.15, (len(x), 1, 1)).astype(np.float32)
    return out


def draw_probabilities(labels: np.ndarray, counts: np.ndarray, cfg: ClassifierTrainConfig,
                       plankton: np.ndarray | None = None) -> np.ndarray:
    """How often each of ``labels`` (with ``counts`` vignettes) is drawn into a batch.

    "Not an object" (label 0) at ``negative_share``; the rest in proportion to count **
    ``class_power``, rescaled so that plankton (``plankton``: flags by label) makes
    ``plankton_share`` of them where both sides are present.
    """
    weight = counts.astype(np.float64) ** cfg.class_power
    weight[labels == 0] = 0.0
    if cfg.plankton_share is not None and plankton is not None:
        side = np.asarray(plankton, bool)[labels] & (labels != 0)
        other = ~side & (labels != 0)
        if weight[side].sum() > 0 and weight[other].sum() > 0:
            weight[side] *= cfg.plankton_share / weight[side].sum()
            weight[other] *= (1 - cfg.plankton_share) / weight[other].sum()
    weight *= (1 - cfg.negative_share if (labels == 0).any() else 1.0) / max(weight.sum(), 1e-12)
    p = np.where(labels == 0, cfg.negative_share, weight)
    return p / p.sum()


def train_classifier(cfg: ClassifierTrainConfig, train: VignetteSet, n_classes: int, val: VignetteSet | None = None,
                     progress: Callable[[int, dict], None] | None = None,
                     plankton: np.ndarray | None = None) -> tuple[VignetteNet, dict]:
    """The trained network and its figures (val accuracy per class when ``val`` is given).

    ``plankton``: (n_classes + 1,) flags by label, for ``cfg.plankton_share``.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    # channels-last convolutions: about 0.34 s against 0.44 s an iteration on 2 cores
    net = VignetteNet(n_classes + 1, cfg.net.width).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    present = np.unique(train.labels)
    by_class = [np.flatnonzero(train.labels == c) for c in present]
    p = draw_probabilities(present, np.array([len(b) for b in by_class]), cfg, plankton)
    t0 = time.monotonic()
    history = []
    for it in range(cfg.iterations):
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations))
        for g in opt.param_groups:
            g["lr"] = lr
        cls = rng.choice(len(present), size=cfg.batch_size, p=p)
        idx = np.array([by_class[c][rng.integers(len(by_class[c]))] for c in cls])
        x = torch.from_numpy(_augment(train.x[idx].astype(np.float32), rng)).to(memory_format=torch.channels_last)
        s = torch.from_numpy(train.scalars[idx])
        y = torch.from_numpy(train.labels[idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(x, s)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if progress and ((it + 1) % 50 == 0 or it + 1 == cfg.iterations):
            progress(it + 1, {"loss": float(np.mean(history[-50:])), "lr": lr})
    net.eval()
    metrics = {"iterations": cfg.iterations, "seconds": round(time.monotonic() - t0, 1),
               "final_loss": float(np.mean(history[-50:])), "train_vignettes": int(len(train.labels))}
    if val is not None:
        metrics.update(accuracy(net, cfg.net, val, n_classes))
    return net, metrics


def accuracy(net: VignetteNet, cfg: ClassifierConfig, data: VignetteSet, n_classes: int) -> dict:
    """Overall and per-class (by label, 0: not an object) accuracy of ``net`` on ``data``."""
    probs = VignetteClassifier(net, cfg, torch.device("cpu")).predict(data.x.astype(np.float32), data.scalars)
    pred = probs.argmax(1)
    per = {int(c): float((pred[data.labels == c] == c).mean()) for c in np.unique(data.labels)}
    return {"val_accuracy": float((pred == data.labels).mean()), "val_accuracy_per_label": per,
            "val_vignettes": int(len(data.labels))}


def names_taxa(ckpt: Checkpoint) -> bool:
    """Whether the classifier of ``ckpt`` names classes of its own: the detector finds only
    plankton and non-plankton (trained with ``classes: plankton``, as its record says)."""
    trained_as = (ckpt.trained_on.get("train_config") or {}).get("classes")
    return ckpt.detector_classes is not None or trained_as == "plankton"


def fit_classifier(ckpt: Checkpoint, train_coco: Sequence[Path], out: Path, val_coco: Sequence[Path] = (),
                   cfg: ClassifierTrainConfig = ClassifierTrainConfig(), pipeline: PipelineConfig = PipelineConfig(),
                   image_root: Path | None = None, mine_frames: int | None = None,
                   progress: Callable[[str, int, int, dict], None] | None = None,
                   cache: Path | None = None, library: Path | None = None, library_held_out: float = 0.2,
                   library_seed: int = 0, library_pixel_size_um: float | None = None) -> Checkpoint:
    """``ckpt`` with a classifier trained on ``train_coco`` (its classes, matched by name), saved at ``out``.

    The detector's candidates are mined on the first ``mine_frames`` training frames (all when
    None, none when 0); validation vignettes are the detector's candidates on the val frames,
    so the accuracy reported is the one inference meets. ``cache``: an .npz where the cut
    vignettes are kept, so a second run with other training settings skips the mining.

    With a plankton/non-plankton detector (``names_taxa``) the classifier's classes are the
    annotation files' categories and the taxa of ``library`` (a vignette library whose
    training split, ``library_held_out`` of each taxon kept out with ``library_seed``, joins
    the training vignettes): the new checkpoint's classes, its detector's kept beside them.
    """
    torch.set_num_threads(cfg.threads)  # mining runs the detector too
    polarity, measure, px = pipeline.instrument.polarity, pipeline.measure, pipeline.instrument.pixel_size_um
    from .library import open_library

    own = names_taxa(ckpt)
    living: dict[str, bool] = {}  # the library's taxa
    key = ""
    if library is not None:
        if not own:
            raise ValueError("a library trains the classifier of a plankton/non-plankton detector (train config "
                             "`classes: plankton`); this detector names classes of its own")
        with open_library(Path(library), pixel_size_um=library_pixel_size_um) as lib:
            living = {n: lib.taxa[n].living for n in lib.taxon_names}
            key = f"{lib.digest()}:{library_held_out}:{library_seed}"
    classes: ClassMap = _taxa_classes(train_coco, living) if own else ckpt.classes
    step = (lambda stage, total: (lambda k, row: progress(stage, k, total, row))) if progress else (lambda *_: None)
    store = VignetteCache(cache, ckpt, [*train_coco, *val_coco], cfg.net.size, pipeline, mine_frames,
                          extra=f"{key}:{classes.names}" if key else "")
    cached = store.load()
    if cached is not None:
        train, val, mined_count = cached
        log.info("%s: vignettes reused (%d)", cache, len(train.labels))
    else:
        frames, _, _ = load_coco_frames(list(train_coco), image_root, polarity, classes=classes)
        parts = [vignette_set(frames, polarity, measure, cfg.net.size, px)]
        if library is not None:
            with open_library(Path(library), pixel_size_um=library_pixel_size_um) as lib:
                items = [it for it in lib.split(library_held_out, library_seed)[0] if it.taxon]
                labels = {n: k + 1 for k, n in enumerate(classes.names)}
                parts.append(library_vignette_set(lib, items, labels, cfg.net.size, px,
                                                  step("library", len(items)))[0])
        mined = frames[:mine_frames] if mine_frames is not None else frames
        if mined:
            parts.append(mine(ckpt, mined, pipeline, cfg.net.size, px, step("mine", len(mined))))
        train = VignetteSet.cat(parts)
        mined_count = len(mined)
        val = None
        if val_coco:
            vframes, _, _ = load_coco_frames(list(val_coco), image_root, polarity, classes=classes)
            val = mine(ckpt, vframes, pipeline, cfg.net.size, px, step("validate", len(vframes)))
        store.save(train, val, mined_count)
    net, metrics = train_classifier(cfg, train, len(classes), val, step("train", cfg.iterations),
                                    np.array([False, *classes.is_plankton]))
    per = metrics.pop("val_accuracy_per_label", None)
    if per is not None:
        metrics["val_accuracy_per_class"] = {("not an object" if k == 0 else classes.name(k)): v for k, v in per.items()}
    metrics["mined_frames"] = mined_count
    trained = {"train": [str(p) for p in train_coco], "val": [str(p) for p in val_coco] or None,
               "config": cfg.record(px),
               **({"library": str(library), "library_held_out": library_held_out, "library_seed": library_seed}
                  if library is not None else {}), **metrics}
    new = ckpt.with_classifier(cfg.net, net.state_dict(), trained)
    if own:
        new = dataclasses.replace(new, classes=classes, detector_classes=ckpt.network_classes)
    new.save(out)
    return new


def _taxa_classes(train_coco: Sequence[Path], living: dict[str, bool]) -> ClassMap:
    """The annotation files' categories, then the library's taxa they lack (``living``: plankton or not)."""
    base = ClassMap.from_coco_categories(coco_categories(list(train_coco)))
    extra = [n for n in living if n not in base.names]
    return ClassMap(base.names + tuple(extra), base.is_plankton + tuple(living[n] for n in extra))


# --- from a vignette library ---------------------------------------------------------------

def library_vignette_set(lib: "VignetteLibrary", items: Sequence["LibraryItem"], labels: dict[str, int], size: int,
                         pixel_size_um: float, progress: Callable[[int, dict], None] | None = None
                         ) -> tuple[VignetteSet, list[str]]:
    """Vignettes of a library's items cut as inference cuts a frame's objects; (set, their sources).

    Each is the organism's mask from its own background, in a window around its box: what
    the classifier sees of a refined object in a frame.
    """
    xs, ss, ys, sources = [], [], [], []
    for k, v in enumerate(lib.vignettes(items)):
        x, s = organism_vignette(v.image, v.mask, v.polarity, v.pixel_size_um or pixel_size_um, size)
        xs.append(x.astype(np.float16))
        ss.append(s)
        ys.append(labels[v.taxon])
        sources.append(v.source)
        if progress and (k + 1) % 500 == 0:
            progress(k + 1, {"vignettes": k + 1})
    if not xs:
        raise ValueError(f"{lib.root}: no usable vignette to cut")
    return VignetteSet(np.concatenate(xs), np.concatenate(ss), np.asarray(ys, np.int64)), sources


def fit_library_classifier(library: Path, out: Path, cfg: ClassifierTrainConfig = ClassifierTrainConfig(),
                           held_out: float = 0.2, split_seed: int = 0, pixel_size_um: float | None = None,
                           statuses: Sequence[str] | None = ("validated",),
                           progress: Callable[[str, int, int, dict], None] | None = None,
                           report_dir: Path | None = None) -> "TaxaClassifier":
    """A classifier of a library's taxa, trained on all but ``held_out`` of each taxon and
    scored on that held-out part (top-1, macro-F1, per class and per taxonomic level).

    ``pixel_size_um``: the library's pixel size where it states none (the scale its size
    inputs are read at; ``classify`` assumes the same for vignettes that state none).
    """
    from .classify import classification_report, confusion_figure
    from .library import open_library
    from .model.taxa_classifier import TaxaClassifier

    step = (lambda stage, total: (lambda k, row: progress(stage, k, total, row))) if progress else (lambda *_: None)
    with open_library(library, statuses, pixel_size_um) as lib:
        taxa = [lib.taxa[n] for n in lib.taxon_names]
        labels = {t.name: k + 1 for k, t in enumerate(taxa)}
        train_items, test_items = lib.split(held_out, split_seed) if held_out > 0 else (list(lib.items), [])
        train_items = [it for it in train_items if it.taxon]
        px = float(pixel_size_um or next((it.pixel_size_um for it in lib.items if it.pixel_size_um), 10.0))
        train, _ = library_vignette_set(lib, train_items, labels, cfg.net.size, px, step("cut", len(train_items)))
        test = library_vignette_set(lib, test_items, labels, cfg.net.size, px)[0] if test_items else None
        skipped = dict(lib.skipped)
        digest = lib.digest()
    net, metrics = train_classifier(cfg, train, len(taxa), None, step("train", cfg.iterations),
                                    np.array([False, *(t.living for t in taxa)]))
    clf = TaxaClassifier(cfg.net, tuple(taxa), net.state_dict(), px)
    report = None
    if test is not None:
        probs = clf.build().predict(test.x.astype(np.float32), test.scalars)[:, 1:]
        names = [t.name for t in taxa]
        report = classification_report([names[i - 1] for i in test.labels], [names[i] for i in probs.argmax(1)],
                                       {t.name: t for t in taxa})
        if report_dir is not None:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            (Path(report_dir) / "classify_report.json").write_text(json.dumps(report, indent=1))
            confusion_figure([names[i - 1] for i in test.labels], [names[i] for i in probs.argmax(1)],
                             {t.name: t for t in taxa}, Path(report_dir) / "confusion.png")
    clf.trained_on = {"library": str(library), "library_digest": digest, "held_out": held_out,
                      "split_seed": split_seed, "train_vignettes": int(len(train.labels)),
                      "held_out_vignettes": 0 if test is None else int(len(test.labels)), "skipped": skipped,
                      "config": cfg.record(px), "seconds": metrics["seconds"]}
    clf.metrics = {} if report is None else {k: v for k, v in report.items() if k != "per_class"}
    clf.save(out)
    return clf
