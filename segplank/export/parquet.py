"""The object table: one row per object, written in Parquet shards that appear atomically."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..frames import split_container_frame
from ..measure import COLUMNS as MEASURE_COLUMNS
from ..structures import Detections
from ..taxonomy import taxon_from_prefix
from ..io.atomic import atomic_path
from ..io.rle import encode_cropped

# mask_rle is box-relative: the COCO RLE of the mask cropped to (bbox_x, bbox_y, bbox_w, bbox_h).
BASE_SCHEMA = pa.schema([
    ("object_id", pa.string()),
    ("frame_path", pa.string()),
    ("frame_index", pa.int64()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("lat", pa.float64()),
    ("lon", pa.float64()),
    ("depth_m", pa.float64()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("group", pa.string()),  # the reporting group of label_name (taxonomy.py): copepods, detritus...
    ("score", pa.float32()),
    ("is_plankton", pa.bool_()),
    ("bbox_x", pa.int32()),
    ("bbox_y", pa.int32()),
    ("bbox_w", pa.int32()),
    ("bbox_h", pa.int32()),
    ("mask_rle", pa.string()),
])
SCHEMA = pa.schema(list(BASE_SCHEMA) + [pa.field(k, pa.from_numpy_dtype(np.dtype(v))) for k, v in MEASURE_COLUMNS.items()])


@lru_cache(maxsize=16)
def groups_of(names: tuple[str, ...]) -> tuple[str, ...]:
    """The reporting group of each class name, its hierarchy read by prefix among ``names``."""
    known = set(names)
    return tuple(taxon_from_prefix(n, known).group for n in names)


def frame_key(frame_path: str) -> str:
    """A frame's part of its objects' ids: its path in the cruise, folders joined by ``-``, no extension.

    Two casts may both hold ``img_0001.png``: the folders keep their objects apart, and the
    id depends on nothing but the frame's own path, so it is the same in every run. A
    video's (or stack's) frames are named by the video's folder and their own name.
    """
    p = PurePosixPath(frame_path)
    folder = p.parent.parent if split_container_frame(Path(frame_path)) is not None else p.parent
    return "-".join([*(part for part in folder.parts if part not in ("/", ".")), p.stem])


def object_rows(dets: Detections, names: list[str], is_plankton: np.ndarray, frame_path: str,
                time, lat: np.ndarray, lon: np.ndarray, depth: np.ndarray, measures: dict[str, np.ndarray]) -> pa.Table:
    """Rows for one frame's objects (numpy Detections with CroppedMasks, tight boxes)."""
    n = len(dets)
    f = dets.frame
    masks = dets.masks
    bw = np.array([b.shape[1] for b in masks.bitmaps], np.int32)
    bh = np.array([b.shape[0] for b in masks.bitmaps], np.int32)
    cols = {
        "object_id": [f"{frame_key(frame_path)}_{k:05d}" for k in range(n)],
        "frame_path": [frame_path] * n,
        "frame_index": np.full(n, f.index, np.int64),
        "time": pa.array(time if time is not None else [None] * n, pa.timestamp("us", tz="UTC")),
        "lat": lat, "lon": lon, "depth_m": depth,
        "label": dets.labels.astype(np.int32),
        "label_name": [names[k - 1] for k in dets.labels],
        "group": [groups_of(tuple(names))[k - 1] for k in dets.labels],
        "score": dets.scores.astype(np.float32),
        "is_plankton": is_plankton.astype(bool),
        "bbox_x": masks.origins[:, 0].astype(np.int32),
        "bbox_y": masks.origins[:, 1].astype(np.int32),
        "bbox_w": bw, "bbox_h": bh,
        "mask_rle": [encode_cropped(b)["counts"] for b in masks.bitmaps],
        **{k: measures[k] for k in MEASURE_COLUMNS},
    }
    return pa.table({k: cols[k] for k in SCHEMA.names}, schema=SCHEMA)


def write_shard(tables: list[pa.Table], path: Path) -> int:
    """Write one shard atomically; returns its row count (an empty shard is still written)."""
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table.num_rows
