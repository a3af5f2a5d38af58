"""Mask R-CNN for plankton tiles: building, self-describing checkpoints, tile inference."""
from .build import build_model
from .checkpoint import DEMO_MODEL, Checkpoint, CheckpointError, ClassMap, load_checkpoint
from .predict import TilePredictor

__all__ = ["build_model", "Checkpoint", "CheckpointError", "ClassMap", "DEMO_MODEL", "load_checkpoint", "TilePredictor"]
