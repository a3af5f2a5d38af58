"""Train a Mask R-CNN on chips cut from annotated full frames.

A small loop (torchvision's ``train_one_epoch`` spirit): SGD, linear warm-up then cosine
decay, validation every ``val_every`` iterations (val loss and COCO mask AP on the
validation frames cut into a chip grid), and self-describing checkpoints.

Files written beside ``out`` (``model.pt`` here):
    model.pt           the best checkpoint by validation mask AP (the last without a val set)
    model.last.pt      the newest weights
    model.state.pt     the training state (weights, optimizer, history): ``resume=True``
    model.metrics.csv  one row per iteration; validation columns on validation rows
    model.metrics.png  loss and mask AP curves

Every random draw is seeded from ``(seed, iteration)`` or ``(seed, chip index)``, so a run
resumed from its state gives the same weights as one never interrupted (bit-identical on
CPU with the same thread count).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from .config import ModelConfig, Polarity, TrainConfig, build_config
from .io.atomic import atomic_path
from .io.rle import encode_in_frame
from .model.build import build_model
from .model.checkpoint import Checkpoint, ClassMap, file_sha256, load_checkpoint
from .model.predict import TilePredictor
from .tiling import tile_grid
from .train_data import ChipSampler, CocoError, TrainFrame, load_coco_frames, to_target

log = logging.getLogger("segplank")

STATE_FORMAT = "segplank-train-state"
VAL_LOSS_CHIPS = 32  # validation chips the validation loss is computed on
_TORCH_STREAM, _VAL_STREAM = 2, 3  # random streams of one seed (train_data uses 0 and 1)
LOSSES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
COLUMNS = ("iteration", "lr", "loss", *LOSSES, "val_loss", "mask_AP", "mask_AP50", "seconds")
_HEAD_ROWS = {  # class-indexed parameters of the heads, and rows per class
    "roi_heads.box_predictor.cls_score.weight": 1, "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4, "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1, "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}


@dataclass(frozen=True)
class RunFiles:
    best: Path
    last: Path
    state: Path
    csv: Path
    png: Path

    @staticmethod
    def beside(out: Path) -> "RunFiles":
        out = Path(out)
        stem = out.with_suffix("")
        return RunFiles(out, Path(f"{stem}.last.pt"), Path(f"{stem}.state.pt"), Path(f"{stem}.metrics.csv"),
                        Path(f"{stem}.metrics.png"))


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 10 % of ``lr``, then cosine decay to 2 %."""
    if it < cfg.warmup_iters:
        return cfg.lr * (0.1 + 0.9 * it / max(1, cfg.warmup_iters))
    t = (it - cfg.warmup_iters) / max(1, cfg.iterations - cfg.warmup_iters)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def train(cfg: TrainConfig, train_coco: Path | Sequence[Path], out: Path, image_root: Path | None = None,
          val_coco: Path | Sequence[Path] | None = None, polarity: Polarity = "dark_on_bright",
          progress: Callable[[int, dict], None] | None = None, demo: bool = False,
          init: str | Path | None = None, resume: bool = False) -> Checkpoint:
    """Train, writing the files listed in the module docstring; returns the checkpoint at ``out``.

    ``init``: ``none``, ``imagenet``, ``coco`` (torchvision weights, overriding
    ``model.init``) or a segplank checkpoint to start from. ``resume``: continue from
    ``<out>.state.pt`` with the same data and config.
    """
    files = RunFiles.beside(out)
    if resume and not files.state.is_file():
        raise ValueError(f"{files.state}: no training state to resume (start without --resume)")
    cfg, init_ckpt = _resolve_init(cfg, init)
    torch.set_num_threads(cfg.threads)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    train_paths, val_paths = _paths(train_coco), _paths(val_coco)
    by_plankton = cfg.classes == "plankton"
    frames, classes, categories = load_coco_frames(train_paths, image_root, polarity, by_plankton=by_plankton)
    sampler = ChipSampler(frames, cfg.chip_size, len(classes), cfg.seed, cfg.background_chip_share,
                          cfg.sampling, cfg.rfs_threshold, cfg.augment)
    val = _val_set(val_paths, classes, polarity, cfg.chip_size, frames, by_plankton) if val_paths else None
    model = _model(cfg, classes, init_ckpt).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    fingerprint = _fingerprint(cfg, train_paths, val_paths, polarity)
    state = _load_state(files.state, fingerprint, model, opt) if resume else _State()
    if not resume and files.state.exists():
        log.warning("%s: a previous run's state is overwritten (pass --resume to continue it)", files.state)
    trained_on = {"train": [str(p) for p in train_paths], "val": [str(p) for p in val_paths] or None,
                  "frames": len(frames), "objects": len(sampler.index), "categories": categories,
                  "train_config": cfg.model_dump(mode="json"), "init": str(init) if init is not None else None}
    t0 = time.monotonic() - state.seconds
    for it in range(state.iteration, cfg.iterations):
        row = _step(model, opt, params, sampler, cfg, it, device)
        n = it + 1
        if val is not None and (n % cfg.val_every == 0 or n == cfg.iterations):
            row.update(validate(model, val, classes, device, cfg.batch_size, _seed(cfg.seed, _VAL_STREAM)))
        row["seconds"] = round(time.monotonic() - t0, 1)
        state.history.append(row)
        state.iteration, state.seconds = n, row["seconds"]
        if "mask_AP" in row and (state.best is None or _rank(row) > _rank(state.best)):
            state.best = row
            _checkpoint(cfg, model, classes, trained_on, state.history, demo).save(files.best)
        if n % cfg.checkpoint_every == 0 or n % cfg.val_every == 0 or n == cfg.iterations:
            _save_progress(files, cfg, model, opt, classes, trained_on, state, val is None, demo, fingerprint)
        if progress:
            progress(n, row)
    return load_checkpoint(files.best)


def _paths(coco: Path | Sequence[Path] | None) -> list[Path]:
    if coco is None:
        return []
    return [Path(coco)] if isinstance(coco, (str, Path)) else [Path(p) for p in coco]


def _resolve_init(cfg: TrainConfig, init: str | Path | None) -> tuple[TrainConfig, Checkpoint | None]:
    """``none|imagenet|coco`` set ``model.init`` (checked: coco needs resnet50_v2); anything else is a
    checkpoint, whose network is trained unless the config names another."""
    if init is None:
        return cfg, None
    if str(init) in ("none", "imagenet", "coco"):
        model = build_config({**cfg.model.model_dump(), "init": str(init)}, "--init", ModelConfig)
        return cfg.model_copy(update={"model": model}), None
    start = load_checkpoint(Path(init))
    if cfg.model == ModelConfig():  # no network named in the config: the checkpoint's (an imported detectron2 one too)
        cfg = cfg.model_copy(update={"model": start.model_config.model_copy(update={"init": "none"})})
    return cfg, start


def _model(cfg: TrainConfig, classes: ClassMap, init_ckpt: Checkpoint | None) -> nn.Module:
    """The network in training mode; the same random heads for the same seed."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.model_copy(update={"tile_size": cfg.chip_size}), len(classes))
    if init_ckpt is not None:
        _load_init(model, init_ckpt, classes)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = cfg.roi_samples_per_image
    return model.train()


def _load_init(model: nn.Module, start: Checkpoint, classes: ClassMap) -> None:
    """Start from a checkpoint's weights; class heads are matched by class name.

    With other classes (fine-tuning on new categories) the box and mask predictors keep the
    rows of the classes both share and start afresh for the others, with a warning.
    """
    weights = {k: v.float() if v.is_floating_point() else v for k, v in start.state_dict.items()}
    try:
        start_names = start.network_classes.names
        if start_names != classes.names:
            weights = adapt_heads(weights, model.state_dict(), start_names, classes.names)
            shared = [n for n in classes.names if n in start_names]
            log.warning("--init checkpoint: its classes differ from the training set's; the class heads keep the "
                        "rows of %d shared class(es) and start afresh for %s", len(shared),
                        [n for n in classes.names if n not in shared] or "none")
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as e:
        first = (str(e).splitlines()[1:] or [str(e)])[0].strip()
        raise ValueError(f"--init checkpoint: its weights do not fit the model in the training config ({first}); "
                         "train with its model settings") from None


def adapt_heads(weights: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], old_names: Sequence[str],
                new_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``weights`` with class-indexed head parameters rebuilt for ``new_names``.

    Rows of background and of classes in both lists are copied (by name), others are
    taken from ``fresh`` (the new model's own initialisation).
    """
    old = {n: k + 1 for k, n in enumerate(old_names)}
    pairs = np.array([(0, 0)] + [(k + 1, old[n]) for k, n in enumerate(new_names) if n in old])
    out = dict(weights)
    for key, rows in _HEAD_ROWS.items():
        dst = torch.from_numpy((pairs[:, :1] * rows + np.arange(rows)).ravel())
        src = torch.from_numpy((pairs[:, 1:] * rows + np.arange(rows)).ravel())
        w = fresh[key].detach().clone()
        w[dst] = weights[key][src].to(w.dtype)
        out[key] = w
    return out


def _step(model: nn.Module, opt: torch.optim.Optimizer, params: list[nn.Parameter], sampler: ChipSampler,
          cfg: TrainConfig, it: int, device: torch.device) -> dict[str, Any]:
    """One SGD step on batch ``it``; the RPN/ROI samplers draw from a torch seed of ``(seed, it)``."""
    torch.manual_seed(_seed(cfg.seed, _TORCH_STREAM, it))
    lr = lr_at(it, cfg)
    for g in opt.param_groups:
        g["lr"] = lr
    batch = sampler.batch(it, cfg.batch_size)
    images = [b[0].to(device) for b in batch]
    targets = [{k: v.to(device) for k, v in b[1].items()} for b in batch]
    losses = model(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    opt.step()
    return {"iteration": it + 1, "lr": lr, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}}


# --- validation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ValSet:
    """Validation frames cut into a grid of chips, each one COCO image for COCOeval.

    Chips are cut again when needed rather than kept: dense frames hold many full-chip masks.
    """

    frames: list[TrainFrame]
    windows: np.ndarray  # (T, 3) int64: frame index, x0, y0 of chip t (COCO image t + 1)
    chip: int
    gt: COCO

    def cut(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f, x0, y0 = (int(v) for v in self.windows[t])
        return self.frames[f].chip(x0, y0, self.chip)


def _val_set(paths: list[Path], classes: ClassMap, polarity: Polarity, chip: int,
             train_frames: list[TrainFrame], by_plankton: bool = False) -> ValSet:
    frames, _, _ = load_coco_frames(paths, None, polarity, classes=classes, by_plankton=by_plankton)
    if not any(fr.annotations for fr in frames):
        raise CocoError(f"{', '.join(map(str, paths))}: the validation set holds no annotated object")
    shared = {fr.path for fr in frames} & {fr.path for fr in train_frames}
    if shared:
        log.warning("%d validation frame(s) are also training frames (e.g. %s): mask AP will be optimistic",
                    len(shared), sorted(shared)[0].name)
    return make_val_set(frames, classes, chip)


def make_val_set(frames: Sequence[TrainFrame], classes: ClassMap, chip: int) -> ValSet:
    """Chips on a grid without overlap (the last row and column move inward), not augmented.

    Objects cut by a chip border count as one object per chip, as the model sees them.
    """
    windows, anns = [], []
    for f, fr in enumerate(frames):
        h, w = fr.pixels.shape
        windows += [(f, int(x0), int(y0)) for x0, y0, _, _ in tile_grid(h, w, chip, 0)]
    val = ValSet(list(frames), np.array(windows, np.int64).reshape(-1, 3), chip, COCO())
    for t in range(len(windows)):
        _, masks, labels = val.cut(t)
        for m, label in zip(masks, labels):
            rle = mask_utils.encode(np.asfortranarray(m))
            anns.append({"id": len(anns) + 1, "image_id": t + 1, "category_id": int(label), "iscrowd": 0,
                         "segmentation": rle, "area": float(mask_utils.area(rle)),
                         "bbox": mask_utils.toBbox(rle).tolist()})
    val.gt.dataset = {"images": [{"id": t + 1, "height": chip, "width": chip} for t in range(len(windows))],
                      "annotations": anns,
                      "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes.names)]}
    with redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        val.gt.createIndex()
    return val


def validate(model: nn.Module, val: ValSet, classes: ClassMap, device: torch.device, batch: int,
             seed: int) -> dict[str, float]:
    """Validation loss and COCO mask AP (maxDets 10000: dense chips) on the validation chips."""
    torch.manual_seed(seed)
    loss = validation_loss(model, val, device, batch)
    predictor = TilePredictor(model, classes, device, score_thresholds=np.zeros(len(classes) + 1, np.float32),
                              masks_for_non_plankton=True, batch_size=batch, amp=False)
    results = []
    for s in range(0, len(val.windows), batch):
        tiles = torch.from_numpy(np.stack([val.cut(t)[0] for t in range(s, min(s + batch, len(val.windows)))]))
        for t, dets in enumerate(predictor(tiles), start=s + 1):
            dets = dets.numpy()
            cropped = dets.masks.to_cropped(dets.boxes)
            for bitmap, origin, label, score in zip(cropped.bitmaps, cropped.origins, dets.labels, dets.scores):
                results.append({"image_id": t, "category_id": int(label), "score": float(score),
                                "segmentation": encode_in_frame(bitmap, origin, val.chip, val.chip)})
    model.train()
    ap, ap50 = mask_ap(val.gt, results)
    return {"val_loss": loss, "mask_AP": ap, "mask_AP50": ap50}


@torch.no_grad()
def validation_loss(model: nn.Module, val: ValSet, device: torch.device, batch: int) -> float:
    """Mean detection loss (train-mode losses, frozen batch-norm statistics) on validation chips.

    At most ``VAL_LOSS_CHIPS`` chips, spread evenly: the loss is a trend line, the mask AP
    (on every chip) is what picks the best checkpoint.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    ids = np.unique(np.linspace(0, len(val.windows) - 1, VAL_LOSS_CHIPS).round().astype(int))
    total = []
    for s in range(0, len(ids), batch):
        pairs = [to_target(*val.cut(t)) for t in ids[s:s + batch]]
        images = [image.to(device) for image, _ in pairs]
        targets = [{k: v.to(device) for k, v in target.items()} for _, target in pairs]
        total.append(float(sum(model(images, targets).values())))
    model.train()
    return float(np.mean(total))


def mask_ap(gt: COCO, results: list[dict]) -> tuple[float, float]:
    """COCO mask AP@[.5:.95] and AP@.5 with up to 10000 detections per image."""
    if not results:
        return 0.0, 0.0
    with redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.params.maxDets = [1, 100, 10000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, float(ev.stats[0])), max(0.0, float(ev.stats[1]))


def _rank(row: dict) -> tuple[float, float]:
    """Best checkpoint order: mask AP, then the lower validation loss."""
    return row["mask_AP"], -row["val_loss"]


# --- checkpoints, training state, metrics -----------------------------------------------------

def _checkpoint(cfg: TrainConfig, model: nn.Module, classes: ClassMap, trained_on: dict, history: list[dict],
                demo: bool) -> Checkpoint:
    """The checkpoint as of the last row of ``history``."""
    last_val = next((h for h in reversed(history) if "val_loss" in h), {})
    return Checkpoint(
        model_config=cfg.model, classes=classes, state_dict=model.state_dict(),
        trained_on={**trained_on, "seconds": history[-1]["seconds"]},
        metrics={"iterations": history[-1]["iteration"],
                 "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
                 "val_loss": last_val.get("val_loss"), "mask_AP": last_val.get("mask_AP"),
                 "mask_AP50": last_val.get("mask_AP50")},
        demo=demo,
    )


@dataclass
class _State:
    """What a resumed run needs besides weights and optimizer: everything else derives from the iteration."""

    iteration: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # the history row of the best checkpoint
    seconds: float = 0.0


def _save_progress(files: RunFiles, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                   classes: ClassMap, trained_on: dict, state: _State, no_val: bool, demo: bool,
                   fingerprint: dict) -> None:
    """Last checkpoint (also ``out`` without a val set), metrics, then the resume point."""
    ckpt = _checkpoint(cfg, model, classes, trained_on, state.history, demo)
    ckpt.save(files.last)
    if no_val:
        ckpt.save(files.best)
    write_metrics(state.history, files.csv, files.png)
    payload = {"format": STATE_FORMAT, "fingerprint": fingerprint, "iteration": state.iteration,
               "history": state.history, "best": state.best, "seconds": state.seconds,
               "model": model.state_dict(), "optimizer": opt.state_dict()}
    with atomic_path(files.state) as tmp:
        torch.save(payload, tmp)


def _fingerprint(cfg: TrainConfig, train_paths: list[Path], val_paths: list[Path], polarity: Polarity) -> dict:
    """What must not change between a run and its resumption (threads and device may)."""
    config = cfg.model_dump(mode="json", exclude={"threads", "device"})
    return {"config": config, "polarity": polarity,
            "train": [[str(p), file_sha256(p)] for p in train_paths],
            "val": [[str(p), file_sha256(p)] for p in val_paths]}


def _load_state(path: Path, fingerprint: dict, model: nn.Module, opt: torch.optim.Optimizer) -> _State:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or truncated files
        raise ValueError(f"{path}: unreadable training state ({type(e).__name__}); start without --resume") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a segplank training state; start without --resume")
    changed = _differences(payload["fingerprint"], fingerprint)
    if changed:
        raise ValueError(f"{path}: cannot resume, the run changed since it was saved ({'; '.join(changed[:5])}); "
                         "restore them or start without --resume")
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    return _State(payload["iteration"], payload["history"], payload["best"], payload["seconds"])


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    return [] if old == new else [f"{key}: {old!r} -> {new!r}"]


def write_metrics(history: list[dict], csv_path: Path, png_path: Path) -> None:
    """The metrics log (CSV, every iteration) and its loss / AP figure, each written atomically."""
    with atomic_path(csv_path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", restval="")
            w.writeheader()
            w.writerows(history)
    with atomic_path(png_path) as tmp:
        FigureCanvasAgg(metrics_figure(history)).print_figure(str(tmp), dpi=100, format="png")


def metrics_figure(history: list[dict]) -> Figure:
    """Training loss (raw and running mean), validation loss, and mask AP against iteration."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_loss, ax_ap = fig.subplots(1, 2)
    it = np.array([h["iteration"] for h in history])
    loss = np.array([h["loss"] for h in history])
    ax_loss.plot(it, loss, color="0.75", lw=0.6, label="train")
    k = min(20, len(loss))
    if k > 1:
        ax_loss.plot(it[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), color="C0", label=f"train, mean of {k}")
    val = [h for h in history if "val_loss" in h]
    ax_loss.plot([h["iteration"] for h in val], [h["val_loss"] for h in val], "o-", color="C1", label="validation")
    ax_loss.set(xlabel="iteration", ylabel="loss", yscale="log" if loss.min() > 0 else "linear")
    ax_loss.legend()
    for key, colour in (("mask_AP", "C2"), ("mask_AP50", "C3")):
        ax_ap.plot([h["iteration"] for h in val], [h[key] for h in val], "o-", color=colour, label=key)
    ax_ap.set(xlabel="iteration", ylabel="validation mask AP", ylim=(-0.02, 1.02))
    if val:
        ax_ap.legend()
    else:
        ax_ap.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_ap.transAxes)
    return fig
