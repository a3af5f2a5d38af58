"""A vignette classifier on its own: the network, the taxa it names and the scale it assumes.

A detector checkpoint (``checkpoint.py``) carries a classifier over the detector's own
classes. A classifier trained from a vignette library names the library's taxa instead
(121 NDSB classes, an EcoTaxa project's categories), with their hierarchy, reporting group
and living flag, so ``segplank classify`` can write a taxon, its group and whether it is
living for any folder of vignettes. Same network and input as inference
(``classifier.vignettes``): a vignette is cut exactly as a frame's object is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..taxonomy import Taxon
from .checkpoint import CheckpointError, load_payload, pack, save_payload
from .classifier import ClassifierConfig, VignetteClassifier, VignetteNet

FORMAT = "segplank-classifier"
FORMAT_VERSION = 1
# what `segplank classify` uses without --model: the 121 ISIIS taxa of the NDSB library
# (tools/make_isiis_model.sh), what an ISIIS user's vignettes are; the bundled detector's own
# classifier knows only the drawn synthetic classes
BUNDLED_CLASSIFIER = Path(__file__).resolve().parent.parent / "data" / "isiis_classifier.pt"


@dataclass
class TaxaClassifier:
    """Label ``k`` (1-based) is ``taxa[k - 1]``; 0 is "not an object"."""

    config: ClassifierConfig
    taxa: tuple[Taxon, ...]
    state_dict: dict[str, torch.Tensor]
    pixel_size_um: float  # the scale of the size inputs it was trained at
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    segplank_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.taxa]

    def build(self, device: torch.device | str = "cpu") -> VignetteClassifier:
        net = VignetteNet(len(self.taxa) + 1, self.config.width)
        try:
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()})
        except RuntimeError as e:
            raise CheckpointError(f"classifier weights do not fit its config ({str(e).splitlines()[0]})") from None
        return VignetteClassifier(net, self.config, torch.device(device))

    def save(self, path: Path) -> Path:
        payload = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "segplank_version": self.segplank_version,
            "created": self.created, "config": self.config.to_dict(), "pixel_size_um": self.pixel_size_um,
            "taxa": [{"name": t.name, "path": list(t.path), "group": t.group, "living": t.living} for t in self.taxa],
            "state_dict": pack(self.state_dict), "trained_on": self.trained_on, "metrics": self.metrics,
        }
        return save_payload(payload, path)


def load_taxa_classifier(path: Path) -> TaxaClassifier:
    """A classifier file, or the vignette classifier of a detector checkpoint (its classes as taxa)."""
    from ..taxonomy import group_of, prefix_path
    from .checkpoint import load_checkpoint

    path = Path(path)
    fix = "pass a file written by `segplank train-classifier --library` or a checkpoint with a classifier"
    payload = load_payload(path, "classifier", fix, "classifier file")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: classifier format {payload['format_version']} is newer than this segplank "
                                  "reads; upgrade segplank")
        taxa = tuple(Taxon(t["name"], tuple(t["path"]), t["group"], bool(t["living"])) for t in payload["taxa"])
        return TaxaClassifier(ClassifierConfig.from_dict(payload["config"]), taxa, payload["state_dict"],
                              float(payload["pixel_size_um"]), payload.get("trained_on", {}),
                              payload.get("metrics", {}), payload.get("segplank_version", "?"),
                              payload.get("created", ""))
    ckpt = load_checkpoint(path)
    if ckpt.classifier is None:
        raise CheckpointError(f"{path}: this checkpoint has no vignette classifier; {fix}")
    names = set(ckpt.classes.names)
    paths = [prefix_path(n, names) for n in ckpt.classes.names]
    taxa = tuple(Taxon(n, q, group_of(q, p), p) for n, q, p in zip(ckpt.classes.names, paths, ckpt.classes.is_plankton))
    px = float(ckpt.classifier["trained_on"].get("config", {}).get("pixel_size_um", 10.0))
    return TaxaClassifier(ClassifierConfig.from_dict(ckpt.classifier["config"]), taxa,
                          ckpt.classifier["state_dict"], px, ckpt.classifier["trained_on"])


__all__ = ["BUNDLED_CLASSIFIER", "TaxaClassifier", "load_taxa_classifier"]
