"""One table of tools/gpu_bench.sh's cases: frames/s, objects/s, GPU busy, peak GPU memory.

GPU busy is the mean of nvidia-smi's utilization.gpu samples taken while the case ran
(its start and end are in the bench's JSON; the real-frame case's in real_times.json).
"""
from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from pathlib import Path


def _samples(path: Path) -> list[tuple[float, float, float]]:
    out = []
    if not path.is_file():
        return out
    for row in csv.reader(path.open()):
        try:
            t = datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((t, float(row[1]), float(row[2])))
        except (ValueError, IndexError):
            continue
    return out


def _busy(samples: list[tuple[float, float, float]], t0: float, t1: float) -> tuple[float, float]:
    inside = [(u, m) for t, u, m in samples if t0 <= t <= t1]
    if not inside:
        return float("nan"), float("nan")
    return sum(u for u, _ in inside) / len(inside), max(m for _, m in inside)


def main(out: Path) -> None:
    samples = _samples(out / "gpu_use.csv")
    rows = []
    bench = json.loads((out / "bench.json").read_text())
    for name, r in bench["cases"].items():
        busy, mem = _busy(samples, r["started"], r["ended"])
        rows.append((name, r["frames"], r["frames_per_s"], r["objects_written"] / r["seconds"],
                     r["detections_per_frame"], busy, mem, r.get("plankton_recall", float("nan"))))
    if (out / "real_manifest.json").is_file():
        m = json.loads((out / "real_manifest.json").read_text())
        times = json.loads((out / "real_times.json").read_text())
        busy, mem = _busy(samples, times["started"], times["ended"])
        frames = m["frames"]["done_this_run"]
        det = sum(m["counts"]["detected_per_class"].values())
        rows.append(("real CFE frame ×16", frames, frames / m["seconds"], m["counts"]["objects_written"] / m["seconds"],
                     det / max(frames, 1), busy, mem, float("nan")))
    print(f"segplank {bench['segplank']}, torch {bench['torch']}, {bench['machine']}")
    print("| case | frames | frames/s | objects/s | detections per frame | GPU busy | GPU memory (MiB) | plankton recall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, fps, ops, dpf, busy, mem, rec in rows:
        print(f"| {name} | {n} | {fps:.2f} | {ops:.1f} | {dpf:.0f} | {busy:.0f}% | {mem:.0f} | {rec:.3f} |")
    for name, r in bench["cases"].items():
        share = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["stage_share"].items(), key=lambda kv: -kv[1]))
        print(f"{name}: {share}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
