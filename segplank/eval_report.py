"""What ``segplank eval`` shows and saves: tables, confusion matrix (CSV, PNG), precision-recall curves.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot (as in
``plots``): no global figure state, no display needed.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from .evaluate import pr_curves, stat_names, to_json
from .io.atomic import atomic_path, write_json


def _save(fig: Figure, path: Path) -> Path:
    """Write a figure through its own Agg canvas, whole or not at all."""
    with atomic_path(Path(path)) as tmp:
        FigureCanvasAgg(fig).print_figure(str(tmp), dpi=150, format="png")
    return Path(path)


def confusion_csv(confusion: Mapping, path: Path) -> Path:
    """Counts with ground-truth classes as rows and predicted classes as columns."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ground truth \\ predicted", *confusion["columns"]])
        for name, row in zip(confusion["rows"], confusion["counts"]):
            w.writerow([name, *row])
    return Path(path)


def confusion_figure(confusion: Mapping, path: Path, *, title: str = "Confusion matrix (object level)") -> Path:
    """Counts in each cell, colour by share of the row, so rare classes read as clearly as copepods.

    The last column holds ground-truth objects no prediction matched, the last row
    predictions that matched nothing.
    """
    counts = np.asarray(confusion["counts"], np.int64)
    share = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    n = counts.shape[0]
    side = 2.0 + 0.55 * n
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), c in np.ndenumerate(counts):
        if c:
            ax.text(j, i, str(c), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), confusion["columns"], rotation=45, ha="right")
    ax.set_yticks(range(n), confusion["rows"])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Ground-truth class")
    ax.axhline(n - 1.5, color="grey", lw=0.8)
    ax.axvline(n - 1.5, color="grey", lw=0.8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Share of row")
    return _save(fig, path)


def pr_figure(curves: Mapping[str, Mapping[str, np.ndarray]], path: Path, *,
              thresholds: Mapping[str, float] | None = None, title: str = "Precision-recall per class") -> Path:
    """One line per class as its score threshold falls; a dot where a chosen threshold sits."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for name, c in curves.items():
        k = _thin(len(c["score"]))
        (line,) = ax.plot(c["recall"][k], c["precision"][k], lw=1.4, label=name)
        if thresholds and name in thresholds:
            k = np.flatnonzero(c["score"] >= thresholds[name])
            if k.size:
                ax.plot(c["recall"][k[-1]], c["precision"][k[-1]], "o", color=line.get_color(), ms=5)
    ax.set_xlim(-0.02, 1.02)  # a curve at 0 or 1 is drawn inside the frame, not on its border
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("Recall (share of the class found and named right)")
    ax.set_ylabel("Precision")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)  # off the curves
    else:
        ax.text(0.5, 0.5, "no class has both ground truth and predictions", ha="center", va="center")
    ax.set_title(title)
    return _save(fig, path)


def _thin(n: int, most: int = 2000) -> np.ndarray:
    """At most ``most`` indices spread over ``n`` points, first and last kept: a curve over a
    whole cruise's detections draws as fast as a small one."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int)) if n else np.arange(0)


def write_report(result: dict, out_dir: Path) -> dict[str, Path]:
    """eval.json, confusion.csv, confusion.png and pr_curves.png from an ``evaluate`` result."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = result["objects"]
    files = {"json": out_dir / "eval.json", "confusion_csv": out_dir / "confusion.csv",
             "confusion_png": out_dir / "confusion.png", "pr_curves": out_dir / "pr_curves.png"}
    write_json(files["json"], to_json(result))
    confusion_csv(objects["confusion"], files["confusion_csv"])
    confusion_figure(objects["confusion"], files["confusion_png"],
                     title=f"Confusion matrix (mask IoU ≥ {objects['iou']:g})")
    curves = pr_curves(objects["detections"], {c: v["gt"] for c, v in objects["per_class"].items()})
    pr_figure(curves, files["pr_curves"], thresholds=result.get("thresholds"))
    return files


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def format_table(result: dict) -> Table:
    """Object-level figures per class, then plankton and non-plankton pooled; COCO mask AP where run.

    Takes an ``evaluate`` result or an ``object_match`` result.
    """
    objects = result.get("objects", result)
    segm = result.get("coco", {}).get("segm", {}).get("per_class", {})
    spf = objects["segments_per_frame"]
    t = Table(title=f"Object-level match (mask IoU ≥ {objects['iou']:g})",
              caption=" ".join([f"{spf['frames']} frames; segments per frame: {spf['pred']:.1f} predicted, "
                                f"{spf['gt']:.1f} true; plankton per frame: {spf['pred_plankton']:.1f} predicted, "
                                f"{spf['gt_plankton']:.1f} true. Found: matched by any prediction; "
                                "recall/precision/F1: matched and named right.",
                                *(f"Note: {n}." for n in objects.get("notes", []))]))
    for col in ("class", "group", "ground truth", "predicted", "found", "recall", "precision", "F1"):
        t.add_column(col, justify="left" if col in ("class", "group") else "right")
    if segm:
        t.add_column("mask AP", justify="right")
    plankton = set(objects["plankton_classes"])
    names = [c for c in objects["classes"] if objects["per_class"][c]["gt"] or objects["per_class"][c]["pred"]]
    for k, c in enumerate(names):
        group = "plankton" if c in plankton else "non-plankton"
        _row(t, c, group, objects["per_class"][c], segm.get(c, {}).get("AP") if segm else False,
             end_section=k == len(names) - 1)
    for key, label in (("plankton", "all plankton"), ("non_plankton", "all non-plankton")):
        _row(t, label, "", objects[key], "" if segm else False)
    return t


def _row(t: Table, name: str, group: str, s: dict, ap: float | str | None | bool, end_section: bool = False) -> None:
    """``ap``: False without an AP column, "" for a blank cell."""
    cells = [name, group, str(s["gt"]), str(s["pred"]), _f(s["detection_recall"]), _f(s["recall"]),
             _f(s["precision"]), _f(s["f1"])]
    if ap is not False:
        cells.append(ap if isinstance(ap, str) else _f(ap))  # type: ignore[arg-type]
    t.add_row(*cells, end_section=end_section)


def coco_table(result: dict) -> Table:
    """COCOeval's summary figures, one column per iou type."""
    coco = result["coco"]
    types = [t for t in ("bbox", "segm") if t in coco]
    t = Table(title="COCOeval", caption=f"maxDets {'/'.join(map(str, coco['max_dets']))} per frame and class; "
                                        "–: no ground truth in that size range")
    t.add_column("figure")
    for kind in types:
        t.add_column("boxes" if kind == "bbox" else "masks", justify="right")
    for name in [*stat_names(coco["max_dets"]), "AP_plankton", "AP50_plankton"]:
        t.add_row(name, *(_f(coco[kind][name]) for kind in types), end_section=name == "AR_large")
    return t


__all__ = ["confusion_csv", "confusion_figure", "pr_figure", "write_report", "format_table", "coco_table"]
