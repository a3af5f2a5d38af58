"""A finished run's output folder, read back as pandas tables (and rewritten shard by shard).

The later commands (``join-ctd``, ``profile``, ``export ecotaxa``) start from what
``segplank infer`` wrote, not from the cruise: the manifest holds the config (pixel size,
imaged volume) and the cruise folder, the shards hold the objects and processed frames.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .io.atomic import atomic_path
from .frames import source_file


class RunFolderError(ValueError):
    """An output folder that is not (or not yet) a finished segplank run."""


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir}: no manifest.json; pass the output folder of `segplank infer`") from None
    except json.JSONDecodeError:
        raise RunFolderError(f"{path}: unreadable manifest; re-run `segplank infer` into a fresh folder") from None


def read_objects(run_dir: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every object row of the run (all shards), ``time`` as tz-aware UTC."""
    return _read(Path(run_dir) / "objects", columns)


def read_frames(run_dir: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per processed frame (skipped frames are not in it: they imaged no volume)."""
    return _read(Path(run_dir) / "frames", columns)


def is_line_stream(manifest: dict) -> bool:
    """Whether the run stitched its frames as a line stream: its objects may reach past their frame."""
    return bool(((manifest.get("config") or {}).get("stream") or {}).get("enabled"))


def frame_paths(run_dir: Path) -> dict[int, str]:
    """Frame index -> frame path, for every processed frame (a line stream's neighbours)."""
    t = read_frames(run_dir, ["frame_index", "frame_path"])
    return dict(zip(t["frame_index"].tolist(), t["frame_path"].tolist()))


def frames_root(manifest: dict, run_dir: Path, cruise_dir: Path | None, frames: list[str]) -> Path:
    """The folder the run's frame paths are relative to: the first candidate holding one of
    ``frames`` (the manifest's cruise_dir may be relative to where `infer` ran)."""
    if cruise_dir is not None:
        candidates = [Path(cruise_dir)]
    else:
        given = Path(str(manifest.get("cruise_dir", "")))
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, run_dir.parent / given, run_dir / given]
    for root in candidates:
        # an absolute frame path ignores the root; a video's (or TIFF stack's) frame is its file's
        if any(source_file(root / fp).is_file() for fp in frames):
            return root
    raise FileNotFoundError(f"frame {frames[0]} not found below {', '.join(map(str, candidates))}: "
                            "pass the cruise folder (cruise_dir=... or --cruise-dir)")


def rewrite_shards(run_dir: Path, kind: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> int:
    """Apply ``fn`` to each shard of ``objects`` or ``frames`` and replace it atomically; rows rewritten.

    Shard by shard, so memory follows the largest shard, not the cruise; a crash leaves each
    shard either old or new, never half written.
    """
    n = 0
    for path in sorted((Path(run_dir) / kind).glob("part-*.parquet")):
        old = pq.read_table(path)
        df = fn(old.to_pandas())
        table = pa.Table.from_pandas(df, preserve_index=False)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        n += table.num_rows
    return n


def _read(folder: Path, columns: list[str] | None) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise RunFolderError(f"{folder.parent}: no {folder.name}/part-*.parquet; run `segplank infer` into it first")
    # shards written before and after a CTD join may differ in columns: concatenate per shard
    return pd.concat([pq.read_table(p, columns=columns).to_pandas() for p in parts], ignore_index=True)
