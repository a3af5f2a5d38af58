"""Typed configuration, one small model per stage, loaded from YAML in a separate step.

Every stage object is built from plain keyword arguments (its section below); reading
YAML, merging a cruise's own ``cruise.yaml`` and reporting mistakes happen here only. A
wrong key or value fails at start with the file, the key, the value and what is allowed.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_VERSION = 1
Polarity = Literal["dark_on_bright", "bright_on_dark"]
Device = Literal["auto", "cpu", "cuda"]
log = logging.getLogger("segplank")


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names file, key and remedy."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstrumentConfig(_Section):
    """What the camera is: polarity, scale, sampled volume and how it names its frames."""

    name: str = "ISIIS"
    polarity: Polarity = "dark_on_bright"  # shadowgraph (ISIIS) or lit (UVP)
    pixel_size_um: float = Field(10.0, gt=0)
    # litres of water imaged per frame: every concentration scales with it, so it has no default;
    # None (not stated) and `segplank profile` refuses to compute concentrations
    volume_per_frame_l: float | None = Field(None, gt=0)
    frame_rate_hz: float = Field(2.0, gt=0)
    # The frame's UTC time is read from its file name: `timestamp_regex` must have a group
    # named `ts`, parsed with `timestamp_format` (strptime). Frames without a match fall
    # back to the index file or file order. An optional group `frame` (digits) is a frame counter:
    # the time is ts + frame / frame_rate_hz (MBARI CFE ISIIS `..._0042.jpg`). configs/ has the
    # patterns of UVP5, UVP6, ISIIS and CFE ISIIS.
    timestamp_regex: str = r"(?P<ts>\d{8}_\d{6}_\d{3})"
    timestamp_format: str = "%Y%m%d_%H%M%S_%f"
    extensions: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".avi")  # a video (AVI, MP4, MOV) or multi-page TIFF: its frames, in order
    # line-scan cameras (ISIIS): lines per second. When set, an object's time is its frame's
    # start time + the row of its centroid / line_rate_hz, so position and depth are those of
    # its own line; None: every object takes its frame's time (UVP, or an unknown rate)
    line_rate_hz: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _regex_has_ts(self) -> "InstrumentConfig":
        import re

        try:
            rx = re.compile(self.timestamp_regex)
        except re.error as e:
            raise ValueError(f"timestamp_regex is not a valid regular expression: {e}") from None
        if "ts" not in rx.groupindex:
            raise ValueError("timestamp_regex needs a named group (?P<ts>...) around the timestamp")
        return self


class TilingConfig(_Section):
    tile_size: int = Field(560, ge=64, le=4096)  # 4 x 4 tiles cover 2048 px with 64 px overlap
    overlap: int = Field(64, ge=8)  # px shared by neighbouring tiles: where seams are decided
    skip_empty: bool = True
    fg_contrast: float = Field(12.0, gt=0)  # grey levels from the local background that count as foreground
    fg_min_pixels: int = Field(3, ge=1)  # foreground pixels (downsampled) that make a tile worth running
    downsample: int = Field(4, ge=1, le=16)  # foreground test resolution
    # divide each frame's own illumination out (illumination.py) before the empty-tile test,
    # the model and refinement: an area camera's corners fall to 60 % of its centre. None: on
    # for area cameras (instrument.line_rate_hz unset); a line scan has stream.flat_field
    illumination: bool | None = None

    @model_validator(mode="after")
    def _overlap_fits(self) -> "TilingConfig":
        if self.overlap * 2 >= self.tile_size:
            raise ValueError(f"overlap ({self.overlap}) must be less than half of tile_size ({self.tile_size})")
        return self


class DetectorConfig(_Section):
    """Inference-time knobs of the model; None keeps the checkpoint's own value."""

    proposals_per_tile: int | None = Field(600, ge=50)  # RPN proposals scored per tile
    candidates_per_level: int | None = Field(2000, ge=50)  # RPN candidates per FPN level before NMS
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (detector and vignette classifier)
    batch_tiles: int | None = Field(None, ge=1)  # tiles per model call; None: 4 on a CPU, 16 on a GPU
    # connected pieces of the foreground map go to the box head beside the RPN's proposals:
    # long, thin and large organisms that anchors miss are boxed whole
    component_proposals: bool = True
    # a checkpoint with a vignette classifier: every box-head detection scoring at least
    # candidate_score (any class) is refined, then named by the classifier, whose probability
    # is the score the per-class thresholds apply to
    vignette_classifier: bool = True
    candidate_score: float = Field(0.05, ge=0, le=1)


class StitchConfig(_Section):
    match_iou: float = Field(0.3, gt=0, le=1)  # mask IoU inside two tiles' shared window that joins two parts
    duplicate_iou: float = Field(0.6, gt=0, le=1)  # mask IoU of two detections of one tile that makes them one
    mask_size: int = Field(56, ge=14, le=256)  # soft-mask resolution after merging
    batch_pairs: int = Field(4096, ge=64)


class FilterConfig(_Section):
    score_threshold: float = Field(0.5, ge=0, le=1)  # for classes without their own threshold in the checkpoint
    min_size_um: float = Field(0.0, ge=0)  # equivalent spherical diameter bounds
    max_size_um: float | None = Field(None, gt=0)
    keep_non_plankton: bool = False


class MeasureConfig(_Section):
    refine: bool = True  # re-segment each object at full resolution inside its dilated predicted mask
    refine_dilate_px: int = Field(4, ge=0, le=64)
    refine_grow: bool = False  # follow organisms past their predicted mask (fragments); may fuse touching organisms
    duplicate_iou: float = Field(0.7, gt=0, le=1)  # refined objects whose boxes overlap this much are one
    # with a classifier: an object with this share of its own pixels inside a more confident one is part of it
    contained_share: float = Field(0.4, gt=0, le=1)
    # ...unless it is named another plankton class with at least this probability: an organism
    # lying over another (shadowgraphs overlap), not a part of it. null turns it off. On the
    # calibration cruise 0.9 and 0.95 change nothing and 0.8 adds one organism and one false row
    overlying_score: float | None = Field(0.9, gt=0, le=1)
    # 8-bit grey levels from the background that are object (x257 on 16-bit frames): 12 rather
    # than 10 keeps faint antennae and halos from joining touching organisms (calibration, demo cruises)
    refine_contrast: float = Field(12.0, gt=0)
    # with a classifier: each refined candidate is also cut into the pieces an opening of this
    # radius separates (touching organisms, joined by an antenna); 0 turns it off. 8 was
    # chosen over 5 and 12 on the calibration cruise
    refine_split_px: int = Field(8, ge=0, le=64)


class OutputConfig(_Section):
    shard_objects: int = Field(20000, ge=1)  # objects buffered per Parquet shard
    shard_frames: int = Field(200, ge=1)  # frames at most per shard, so progress is saved often
    shard_seconds: float = Field(60.0, gt=0)  # and at most this much work: what a kill or power cut can lose
    coco: bool = True


class GeoConfig(_Section):
    """Where the navigation and CTD records lie below the cruise folder (glob patterns, first match wins)."""

    nav: tuple[str, ...] = ("nav*.csv", "nav*.nmea", "*.nmea", "nav*.log", "nav*.txt")
    ctd: tuple[str, ...] = ("ctd*.csv", "*.cnv")
    max_gap_s: float = Field(60.0, gt=0)  # no interpolation across a longer gap in a record: NaN there


class StreamConfig(_Section):
    """Line-scan cameras (ISIIS): consecutive frames are cuts of one stream of lines.

    Enabled, an object cut by a frame boundary comes out once, whole, measured on all its
    rows and attributed to the frame of its first line (segplank/stream.py). Frame by frame,
    such an organism is counted in each frame it reaches, and as pieces.
    """

    enabled: bool | None = None  # None: on for a line-scan camera (instrument.line_rate_hz set)
    band: int = Field(2, ge=1, le=64)  # rows at each side of a cut where parts meet
    match_iou: float = Field(0.3, gt=0, le=1)  # IoU of two parts' footprints on the cut that joins them
    max_gap_s: float | None = Field(None, gt=0)  # a longer time jump ends the stream (None: 1.5 frame periods)
    # an object open this many frames is cut, with a warning, at the next multiple of it in its
    # stream (so that resumed runs and segments cut it where one uncut stream does)
    max_open_frames: int = Field(4, ge=2)
    # divide each frame by a running per-column background (ColumnFlatField), in stream order,
    # before the empty-tile test and the model: the sensor's vertical streaks and slow drift go.
    # Every later stage (refinement, measurement) sees the flat-fielded frame. The background
    # starts afresh with each stream and is saved with every written frame, so a resumed run
    # continues it exactly.
    flat_field: bool = False
    flat_field_block: int = Field(64, ge=1)  # lines per background update
    flat_field_window: int = Field(2048, ge=1)  # lines the running background averages over (>= block)

    @model_validator(mode="after")
    def _flat_field_window(self) -> "StreamConfig":
        if self.flat_field_window < self.flat_field_block:
            raise ValueError("stream.flat_field_window must be >= stream.flat_field_block")
        return self


class EngineConfig(_Section):
    """How a run executes, never what it computes: left out of the run's identity, so a run
    may be resumed with other values here, or under the other engine."""

    kind: Literal["local", "ray"] = "local"
    # processes decoding and tiling frames ahead (0: in the main process). None: 2 on CUDA, 0 on
    # CPU, where they would take cores from the model (measured: no gain on 2 cores, and a few
    # seconds of start-up per run)
    decode_workers: int | None = Field(None, ge=0)
    write_queue: int = Field(1, ge=1, le=4)  # full shards that may wait for the writer thread
    ray_address: str | None = None  # None: RAY_ADDRESS if set, else a Ray runtime started on this machine
    ray_actors: int | None = Field(None, ge=1)  # model replicas (None: one per GPU, else one per ray_actor_cpus CPUs)
    ray_actor_cpus: float = Field(1.0, gt=0)  # CPUs (torch threads) per model replica
    ray_batch_frames: int = Field(1, ge=1)  # frames per model-actor call
    ray_frames_per_block: int = Field(8, ge=1)  # frames per input block (one decode task)
    # line streams: frames per segment, the unit one worker runs and writes (segplank/engine/
    # line_stream.py); None: the whole stream in one under the local engine, 64 frames under Ray
    segment_frames: int | None = Field(None, ge=1)


class PipelineConfig(_Section):
    version: int = CONFIG_VERSION
    device: Device = "auto"
    instrument: InstrumentConfig = InstrumentConfig()
    tiling: TilingConfig = TilingConfig()
    detector: DetectorConfig = DetectorConfig()
    stitch: StitchConfig = StitchConfig()
    filter: FilterConfig = FilterConfig()
    measure: MeasureConfig = MeasureConfig()
    output: OutputConfig = OutputConfig()
    geo: GeoConfig = GeoConfig()
    stream: StreamConfig = StreamConfig()
    engine: EngineConfig = EngineConfig()

    @property
    def line_stream(self) -> bool:
        """Whether frames are stitched as one line stream: ``stream.enabled``, else whether the camera scans lines."""
        return self.stream.enabled if self.stream.enabled is not None else self.instrument.line_rate_hz is not None

    @property
    def area_illumination(self) -> bool:
        """Whether each frame's illumination is divided out: ``tiling.illumination``, else whether the camera is an area camera."""
        return self.tiling.illumination if self.tiling.illumination is not None else self.instrument.line_rate_hz is None

    def with_stream(self, enabled: bool) -> "PipelineConfig":
        """This config with ``stream.enabled`` settled: what a runner records as what it did."""
        return self.model_copy(update={"stream": self.stream.model_copy(update={"enabled": enabled})})

    @model_validator(mode="after")
    def _version(self) -> "PipelineConfig":
        if self.version != CONFIG_VERSION:
            raise ValueError(f"config version {self.version} is not supported (this segplank reads version {CONFIG_VERSION})")
        return self


class ModelConfig(_Section):
    """The network: carried inside every checkpoint, so `--model ckpt.pt` needs nothing else."""

    name: str = "fast"
    # detectron2_r50: detectron2's MSRA ResNet-50 (stride in each stage's first 1x1 convolution,
    # frozen batch norm), what `segplank import-model detectron2` builds
    backbone: Literal["mobilenet_v3_large", "resnet18", "resnet50_v2", "detectron2_r50"] = "mobilenet_v3_large"
    width_mult: float = Field(1.0, gt=0, le=2)  # MobileNetV3 only
    init: Literal["none", "imagenet", "coco"] = "none"  # torchvision weights, downloaded on first use
    fpn_channels: int = Field(96, ge=16)
    box_head_dim: int = Field(256, ge=32)
    mask_head_channels: int = Field(96, ge=16)
    # Small, numerous and slender objects: anchors from specks to tile-sized organisms and
    # elongated aspect ratios (chaetognaths, appendicularian tails).
    anchor_sizes: tuple[tuple[int, ...], ...] = ((8, 16), (24, 32), (48, 64), (96, 128), (192, 384))
    aspect_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    tile_size: int = Field(512, ge=64)
    score_thresh: float = Field(0.05, ge=0, le=1)  # candidates kept per tile before the per-class thresholds
    nms_thresh: float = Field(0.5, gt=0, le=1)
    detections_per_tile: int = Field(1000, ge=1)  # a tile that fills it is reported, never silently cut
    rpn_pre_nms_top_n: int = Field(2000, ge=50)
    rpn_post_nms_top_n: int = Field(1000, ge=50)
    # How a network trained elsewhere computes (an imported detectron2 model sets them; segplank's
    # own models keep torchvision's ways): the input scale (tiles are [0, 1] grey: None is mean
    # 0.5, std 0.25; detectron2's is BGR 0-255 less its pixel mean), anchors rounded to whole
    # pixels or not, ROIAlign with the half-pixel shift (aligned) and its sampling (0: adaptive)
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    anchors_rounded: bool = True
    roi_aligned: bool = False
    roi_sampling_ratio: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _anchors(self) -> "ModelConfig":
        if len({len(s) for s in self.anchor_sizes}) != 1:
            raise ValueError("every anchor_sizes level needs the same number of sizes")
        if self.init == "coco" and self.backbone != "resnet50_v2":
            raise ValueError("init 'coco' needs backbone resnet50_v2 (torchvision's COCO Mask R-CNN weights); "
                             "use 'imagenet' or 'none' for this backbone")
        return self


class TrainConfig(_Section):
    model: ModelConfig = ModelConfig()
    device: Device = "auto"  # auto: CUDA when present
    chip_size: int = Field(384, ge=64)  # training chips cut from full frames
    batch_size: int = Field(4, ge=1)
    iterations: int = Field(2000, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(100, ge=0)
    background_chip_share: float = Field(0.1, ge=0, lt=1)  # share of chips placed anywhere, not on an object
    # proposals per chip the box head learns from (a quarter at most positive): chips hold tens
    # of objects, not hundreds, and 256 trains 1.2x faster than torchvision's 512 on 2 CPU cores
    roi_samples_per_image: int = Field(512, ge=16)
    # long-tailed data: repeat_factor (LVIS: a chip cut around an object of class c repeats
    # max(1, sqrt(rfs_threshold / f_c)) times, f_c = class c's share of annotated objects),
    # class_uniform (every class equally often), none (each object once per epoch)
    sampling: Literal["repeat_factor", "class_uniform", "none"] = "repeat_factor"
    # categories: the detector learns the annotation files' categories; plankton: two classes,
    # plankton and non-plankton (by supercategory), for a vignette classifier to name the taxon
    classes: Literal["categories", "plankton"] = "categories"
    rfs_threshold: float = Field(0.2, gt=0, le=1)
    augment: bool = True  # flips, 90° turns, mild brightness/contrast/gamma, slight blur and noise
    val_every: int = Field(500, ge=1)  # iterations between validations (val loss, mask AP): an "epoch"
    checkpoint_every: int = Field(100, ge=1)  # iterations between saved training states (resume points)
    seed: int = Field(0, ge=0)
    threads: int = Field(2, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _balanced_alias(cls, data: Any) -> Any:
        """``balanced: true|false`` (older configs) means ``sampling: class_uniform|none``."""
        if isinstance(data, dict) and "balanced" in data:
            data = dict(data)
            balanced = data.pop("balanced")
            if not isinstance(balanced, bool):
                raise ValueError(f"balanced = {balanced!r}: give true or false (or 'sampling' instead)")
            if "sampling" in data:
                raise ValueError("give 'sampling' only ('balanced' is its older spelling)")
            data["sampling"] = "class_uniform" if balanced else "none"
        return data


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}' (check the spelling; allowed keys are listed in configs/default.yaml)")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"{source}: {key}{shown}: {e['msg']}")
    return "\n".join(lines)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (pass an existing YAML file, e.g. configs/default.yaml)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def build_config(data: dict[str, Any], source: str = "config", kind: type[BaseModel] = PipelineConfig):
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


# What a cruise folder's cruise.yaml may hold: what describes the cruise (its camera, where its
# navigation and CTD lie), and the synthetic generator's record of how it made the cruise (read
# by no stage). How the run is made (detector, tiling...) is the run's: the --config file's.
CRUISE_SECTIONS = ("instrument", "geo")
CRUISE_RECORDS = ("synth",)


def _cruise_sections(cruise: dict[str, Any], path: Path) -> dict[str, Any]:
    """The sections of ``cruise.yaml`` the pipeline takes; any other key is refused, never dropped."""
    known = CRUISE_SECTIONS + CRUISE_RECORDS
    for key in cruise:
        if key in known:
            continue
        if key in PipelineConfig.model_fields:
            raise ConfigError(f"{path}: section '{key}' describes the run, not the cruise: move it to the --config "
                              f"file (a cruise.yaml holds {', '.join(known)})")
        close = difflib.get_close_matches(str(key), known + tuple(PipelineConfig.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{path}: unknown section '{key}'{hint}; a cruise.yaml holds {', '.join(known)}")
    return {k: cruise[k] for k in CRUISE_SECTIONS if k in cruise}


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every non-mapping value of a nested mapping."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def load_config(path: Path | None = None, cruise_dir: Path | None = None,
                overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults < the ``path`` (--config) file < the cruise's own ``cruise.yaml`` < ``overrides`` (command line).

    The cruise folder describes its cruise, so its ``cruise.yaml`` may set ``instrument`` and
    ``geo`` (and carry a ``synth`` record); any other section is refused. Each value it
    changes from what the ``path`` file set is logged as a warning, so a wrong volume or pixel
    size from either file is never taken silently.
    """
    data: dict[str, Any] = {}
    sources = []
    if path is not None:
        data = read_yaml(path)
        sources.append(str(path))
    if cruise_dir is not None and (Path(cruise_dir) / "cruise.yaml").is_file():
        cruise_path = Path(cruise_dir) / "cruise.yaml"
        cruise = _cruise_sections(read_yaml(cruise_path), cruise_path)
        if cruise:
            if path is not None:
                given, forced = _leaves(data), _leaves(overrides or {})
                for key, new in _leaves(cruise).items():
                    if given.get(key) is not None and given[key] != new and key not in forced:
                        log.warning("%s = %r (from %s) is overridden by %r from %s", key, given[key], path, new,
                                    cruise_path)
            data = _deep_merge(data, cruise)
            sources.append(str(cruise_path))
    if overrides:
        data = _deep_merge(data, overrides)
    return build_config(data, " + ".join(sources) or "config")


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
