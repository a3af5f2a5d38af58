"""Self-describing checkpoints: weights plus everything needed to use them.

Like torchvision's weights enums, a checkpoint carries its categories and recipe; ours
also carries each class's plankton flag and score threshold, the segplank version and
what it was trained on, so ``--model ckpt.pt`` needs nothing else.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import ModelConfig
from ..io.atomic import atomic_path
from .build import build_model
from .fuse import fused_for_inference

if TYPE_CHECKING:
    from .classifier import ClassifierConfig, VignetteClassifier

FORMAT = "segplank-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class ClassMap:
    """Model label ``k`` (1-based, 0 is background) is ``names[k - 1]``."""

    names: tuple[str, ...]
    is_plankton: tuple[bool, ...]
    thresholds: tuple[float | None, ...] = ()  # per-class score thresholds; None: the config's default

    def __post_init__(self) -> None:
        if len(self.names) != len(self.is_plankton):
            raise ValueError("names and is_plankton differ in length")
        if not self.thresholds:
            object.__setattr__(self, "thresholds", (None,) * len(self.names))

    def __len__(self) -> int:
        return len(self.names)

    def name(self, label: int) -> str:
        return self.names[label - 1]

    def plankton_mask(self, labels: np.ndarray | torch.Tensor):
        """Vectorised ``is_plankton`` for an array of model labels."""
        table = [False, *self.is_plankton]
        if isinstance(labels, torch.Tensor):
            return torch.tensor(table, device=labels.device)[labels]
        return np.asarray(table)[labels]

    def threshold_array(self, default: float) -> np.ndarray:
        """(K + 1,) float32 score threshold per label id, background first."""
        return np.array([1.0] + [default if t is None else t for t in self.thresholds], np.float32)

    @staticmethod
    def from_coco_categories(categories: list[dict]) -> "ClassMap":
        cats = sorted(categories, key=lambda c: c["id"])
        return ClassMap(
            names=tuple(c["name"] for c in cats),
            is_plankton=tuple(_is_plankton(c) for c in cats),
        )

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"name": n, "is_plankton": p, "score_threshold": t}
                for n, p, t in zip(self.names, self.is_plankton, self.thresholds)]

    @staticmethod
    def from_dict(items: list[dict[str, Any]]) -> "ClassMap":
        return ClassMap(tuple(c["name"] for c in items), tuple(bool(c["is_plankton"]) for c in items),
                        tuple(c.get("score_threshold") for c in items))


def _is_plankton(category: dict) -> bool:
    if "is_plankton" in category:
        return bool(category["is_plankton"])
    sup = str(category.get("supercategory", "")).lower().replace("_", "-")
    return not (sup.startswith("non") or sup in {"detritus", "artefact", "artifact"})


@dataclass
class Checkpoint:
    model_config: ModelConfig
    classes: ClassMap
    state_dict: dict[str, torch.Tensor]
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    segplank_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    demo: bool = False
    # the vignette classifier (model/classifier.py), when trained: {"config", "state_dict", "trained_on"}
    classifier: dict[str, Any] | None = None
    # the network's own classes when they are not ``classes``: a detector of plankton and
    # non-plankton (train config ``classes: plankton``) whose vignette classifier names each
    # object's taxon among ``classes``
    detector_classes: ClassMap | None = None

    @property
    def network_classes(self) -> ClassMap:
        """The classes the network's box and mask heads predict."""
        return self.detector_classes or self.classes

    def label_map(self) -> np.ndarray | None:
        """(Kd + 1,) int64: each network label as one of ``classes`` with its plankton flag
        (the classifier renames it), or None when the network predicts ``classes`` itself."""
        if self.detector_classes is None:
            return None
        first = {flag: self.classes.is_plankton.index(flag) + 1 for flag in (True, False)
                 if flag in self.classes.is_plankton}
        try:
            return np.array([0, *(first[p] for p in self.detector_classes.is_plankton)], np.int64)
        except KeyError:
            raise CheckpointError("the detector finds a kind of object (plankton or non-plankton) that none of the "
                                  "classifier's classes is; retrain the classifier with both") from None

    def with_classifier(self, cfg: "ClassifierConfig", state_dict: dict[str, torch.Tensor],
                        trained_on: dict[str, Any]) -> "Checkpoint":
        return dataclasses.replace(self, classifier={"config": cfg.to_dict(), "state_dict": state_dict,
                                                     "trained_on": trained_on})

    def build_classifier(self, device: torch.device | str = "cpu", amp: bool = False) -> "VignetteClassifier | None":
        """The vignette classifier on ``device`` (``amp``: in bfloat16 autocast), or None when
        the checkpoint has none."""
        from .classifier import ClassifierConfig, VignetteClassifier, VignetteNet

        if self.classifier is None:
            return None
        cfg = ClassifierConfig.from_dict(self.classifier["config"])
        net = VignetteNet(len(self.classes) + 1, cfg.width)
        try:
            net.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in self.classifier["state_dict"].items()})
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise CheckpointError(f"classifier weights do not fit its config in the checkpoint ({first})") from None
        return VignetteClassifier(net, cfg, torch.device(device), amp=amp)

    def replace_config(self, model_config: ModelConfig) -> "Checkpoint":
        """The same weights under inference-time settings (proposal counts, thresholds)."""
        return dataclasses.replace(self, model_config=model_config)

    def with_thresholds(self, thresholds: dict[str, float] | None) -> "Checkpoint":
        """Per-class score thresholds set by name (None clears them: the config's default applies)."""
        c = self.classes
        thr = tuple((thresholds or {}).get(n) for n in c.names)
        return dataclasses.replace(self, classes=ClassMap(c.names, c.is_plankton, thr))

    def build(self, device: torch.device | str = "cpu", tile_size: int | None = None) -> nn.Module:
        """The network, ready for inference on tiles of ``tile_size`` (never resized): in eval
        mode, batch norms folded into their convolutions."""
        cfg = self.model_config if tile_size is None else self.model_config.model_copy(update={"tile_size": tile_size})
        model = build_model(cfg, len(self.network_classes), pretrained=False)  # the weights come from the checkpoint
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()})
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise CheckpointError(f"weights do not fit the model config in the checkpoint ({first})") from None
        return fused_for_inference(model.to(device))

    def save(self, path: Path, half: bool = True) -> Path:
        """Atomically write; fp16 weights halve the file at no cost to CPU/GPU inference."""
        sd = pack(self.state_dict, half)
        classifier = None if self.classifier is None else {**self.classifier,
                                                           "state_dict": pack(self.classifier["state_dict"], half)}
        payload = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "segplank_version": self.segplank_version,
            "created": self.created, "model_config": self.model_config.model_dump(mode="json"),
            "classes": self.classes.to_dict(), "trained_on": self.trained_on, "metrics": self.metrics,
            "demo": self.demo, "state_dict": sd, "classifier": classifier,
            "detector_classes": None if self.detector_classes is None else self.detector_classes.to_dict(),
        }
        return save_payload(payload, path)


def pack(weights: dict[str, torch.Tensor], half: bool = True) -> dict[str, torch.Tensor]:
    """Weights as stored: on the CPU, contiguous, floating point as fp16 when ``half``."""
    return {k: (v.half() if half and v.is_floating_point() else v).cpu().contiguous() for k, v in weights.items()}


def save_payload(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` that never leaves a half-written model file."""
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_payload(path: Path, what: str, fix: str, missing: str = "model file") -> Any:
    """A model file's contents, read with ``weights_only`` (tensors and plain containers, never code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing} not found; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or truncated files
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}); {fix}") from None


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    fix = "pass a checkpoint written by `segplank train` (or omit --model for the demo model)"
    payload = load_payload(path, "segplank checkpoint", fix)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a segplank checkpoint (no '{FORMAT}' header); {fix}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload['format_version']} is newer than this segplank reads; upgrade segplank")
    try:
        ckpt = Checkpoint(
            model_config=ModelConfig.model_validate(payload["model_config"]),
            classes=ClassMap.from_dict(payload["classes"]),
            state_dict=payload["state_dict"],
            trained_on=payload.get("trained_on", {}),
            metrics=payload.get("metrics", {}),
            segplank_version=payload.get("segplank_version", "?"),
            created=payload.get("created", ""),
            demo=bool(payload.get("demo", False)),
            classifier=payload.get("classifier"),
            detector_classes=ClassMap.from_dict(payload["detector_classes"]) if payload.get("detector_classes") else None,
        )
    except Exception as e:
        raise CheckpointError(f"{path}: checkpoint is incomplete or damaged ({type(e).__name__}: {str(e).splitlines()[0]}); {fix}") from None
    n_out = ckpt.state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if n_out is not None and n_out.shape[0] != len(ckpt.network_classes) + 1:
        raise CheckpointError(f"{path}: the weights predict {n_out.shape[0] - 1} classes but the checkpoint lists "
                              f"{len(ckpt.network_classes)}; the file was edited or mixed up, retrain or re-export it")
    if ckpt.detector_classes is not None and ckpt.classifier is None:
        raise CheckpointError(f"{path}: a plankton/non-plankton detector without the vignette classifier that names "
                              "its objects; train one with `segplank train-classifier`")
    return ckpt


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DEMO_MODEL = Path(__file__).resolve().parent.parent / "data" / "demo_model.pt"
