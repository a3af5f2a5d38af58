"""Name every vignette of a folder, and score a classifier the way taxonomists judge one.

A wrong species in the right family is a smaller error than a copepod called detritus, so
besides top-1 and macro-F1 the report gives the accuracy at each level of the taxonomy
(the root of each name's path, then deeper), at the reporting group, and for living vs
not living.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .library import LibraryItem, VignetteLibrary
from .model.taxa_classifier import TaxaClassifier
from .taxonomy import Taxon

COLUMNS = ("path", "taxon", "group", "probability", "living")


@dataclass(frozen=True)
class Prediction:
    source: str
    taxon: str
    group: str
    probability: float
    living: bool
    true_taxon: str  # "" when the vignette has no label


def classify_library(clf: TaxaClassifier, lib: VignetteLibrary, items: Sequence[LibraryItem] | None = None,
                     batch: int = 512, views: int = 1) -> list[Prediction]:
    """One prediction per usable vignette of ``lib`` (or of its ``items``; unusable ones are
    counted in ``lib.skipped``); ``views``: see ``VignetteClassifier.predict``."""
    from .model.classifier import organism_vignette

    model = clf.build()
    out: list[Prediction] = []
    pending: list[tuple[np.ndarray, np.ndarray, str, str]] = []

    def flush() -> None:
        if not pending:
            return
        probs = model.predict(np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending]), views)
        probs = probs[:, 1:]  # a library's vignettes are objects: "not an object" is not an answer here
        probs = probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)
        best = probs.argmax(1)
        for (_, _, src, true), k, p in zip(pending, best, probs[np.arange(len(best)), best]):
            t = clf.taxa[int(k)]
            out.append(Prediction(src, t.name, t.group, float(p), t.living, true))
        pending.clear()

    for v in lib.vignettes(items):
        x, s = organism_vignette(v.image, v.mask, v.polarity, v.pixel_size_um or clf.pixel_size_um, clf.config.size)
        pending.append((x, s, v.source, v.taxon))
        if len(pending) >= batch:
            flush()
    flush()
    return out


def write_predictions(preds: Sequence[Prediction], path: Path, with_truth: bool) -> None:
    """CSV with COLUMNS (plus ``true_taxon`` for a labelled library); ``living`` as true/false."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*COLUMNS, *(["true_taxon"] if with_truth else [])])
        for p in preds:
            w.writerow([p.source, p.taxon, p.group, f"{p.probability:.4f}", "true" if p.living else "false",
                        *([p.true_taxon] if with_truth else [])])
    tmp.replace(path)


def _f1(true: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, dict]:
    out = {}
    for n in names:
        tp = int(((true == n) & (pred == n)).sum())
        support, called = int((true == n).sum()), int((pred == n).sum())
        prec = tp / called if called else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[n] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "support": support}
    return out


def classification_report(true: Sequence[str], pred: Sequence[str], taxa: dict[str, Taxon]) -> dict:
    """Top-1, macro-F1 (over the taxa present in ``true``), per class, per level, group, living."""
    t, p = np.asarray(true, dtype=object), np.asarray(pred, dtype=object)
    present = sorted(set(true))
    per = _f1(t, p, present)
    depth = max(len(taxa[n].path) for n in taxa)
    levels = {}
    for d in range(depth):
        levels[f"level_{d}"] = float(np.mean([taxa[a].level(d) == taxa[b].level(d) for a, b in zip(t, p)]))
    report = {
        "vignettes": int(len(t)), "taxa": len(present),
        "top1": float(np.mean(t == p)) if len(t) else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per.values()])) if per else 0.0,
        "group_accuracy": float(np.mean([taxa[a].group == taxa[b].group for a, b in zip(t, p)])) if len(t) else 0.0,
        "living_accuracy": float(np.mean([taxa[a].living == taxa[b].living for a, b in zip(t, p)])) if len(t) else 0.0,
        "levels": levels,
        "per_class": per,
    }
    return report


def confusion_figure(true: Sequence[str], pred: Sequence[str], taxa: dict[str, Taxon], path: Path) -> Path:
    """Row-normalised confusion of reporting groups (left) and of every taxon (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(18, 9), gridspec_kw={"width_ratios": [1, 1.4]})
    for ax, key, title in ((axes[0], lambda n: taxa[n].group, "reporting groups"),
                           (axes[1], lambda n: n, "taxa")):
        t = [key(n) for n in true]
        p = [key(n) for n in pred]
        names = sorted(set(t) | set(p))
        idx = {n: i for i, n in enumerate(names)}
        m = np.zeros((len(names), len(names)))
        for a, b in zip(t, p):
            m[idx[a], idx[b]] += 1
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{title}: row-normalised (true → predicted)")
        if len(names) <= 30:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks(range(len(names)), names, fontsize=3)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


__all__ = ["COLUMNS", "Prediction", "classification_report", "classify_library", "confusion_figure",
           "write_predictions"]
