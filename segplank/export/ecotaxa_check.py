"""Check an EcoTaxa import zip against the rules EcoTaxa's importer applies (see ``ecotaxa.py``).

Public, so users can check a zip from any tool before uploading it; the export runs it on
every zip it writes.
"""
from __future__ import annotations

import csv
import io
import posixpath
import re
import zipfile
from datetime import date
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .ecotaxa import (BOM, PNG_SIGNATURE, PREDEFINED, PREFIXES, STATUSES, TEXT_MAX, TSV_NAME, _NUMBER,
                      check_limits)


class _Problems:
    """Problems found, at most ``per_rule`` messages per rule and column, then a count."""

    def __init__(self, per_rule: int = 5) -> None:
        self.per_rule = per_rule
        self.items: list[str] = []
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, rule: tuple[str, str], message: str) -> None:
        k = self.counts.get(rule, 0) + 1
        self.counts[rule] = k
        if k <= self.per_rule:
            self.items.append(message)

    def result(self) -> list[str]:
        more = [f"{rule[0]} ({rule[1]}): {k - self.per_rule} more like this"
                for rule, k in self.counts.items() if k > self.per_rule]
        return self.items + more


def check_ecotaxa_zip(path: Path) -> list[str]:
    """Problems EcoTaxa's importer would have with this zip (an empty list: none).

    Checks the TSV's name, BOM, header prefixes, the ids each prefix needs, the type row,
    every cell against its type (numbers, dates, times, coordinates, statuses, text length),
    the free-column limits, unique object ids, and that each ``img_file_name`` is in the zip
    and decodes as PNG. Stricter than EcoTaxa in places (exactly 8-digit dates and 6-digit
    times, no ``nan`` text in numeric cells, non-empty parent ids).
    """
    path = Path(path)
    problems = _Problems()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        return [f"{path.name}: not a readable zip file ({e})"]
    with zf:
        names = zf.namelist()
        members = set(names)
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.add(("duplicate entry", dup), f"{path.name}: entry {dup} appears more than once")
        tsvs = [n for n in names if TSV_NAME.fullmatch(posixpath.basename(n))]
        for n in names:
            base = posixpath.basename(n)
            if base.lower().endswith((".tsv", ".txt")) and n not in tsvs:
                problems.add(("tsv name", n), f"{path.name}: {n} is not named ecotaxa_*.tsv, EcoTaxa ignores it")
        if not tsvs:
            problems.add(("no tsv", ""), f"{path.name}: no ecotaxa_*.tsv inside, nothing would be imported")
        for t in tsvs:
            _check_tsv(zf, t, members, problems)
    return problems.result()


def _check_tsv(zf: zipfile.ZipFile, name: str, members: set[str], problems: _Problems) -> None:
    raw = zf.read(name)
    if not raw.startswith(BOM):
        problems.add(("bom", name), f"{name}: no UTF-8 byte-order mark at the start; EcoTaxa would read it as latin-1")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        problems.add(("encoding", name), f"{name}: not valid UTF-8 ({e})")
        text = raw.decode("latin-1")
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"') if r]
    plain = [line.split("\t") for line in re.split(r"\r\n|\r|\n", text) if line]  # csv skips blank lines too
    if rows != plain:
        problems.add(("quotes", name), f"{name}: a double quote changes how EcoTaxa's csv reader splits the rows")
    if len(rows) < 2:
        problems.add(("structure", name), f"{name}: needs a header row and a type row")
        return
    header = [h.strip(" \t").lower() for h in rows[0]]
    types = rows[1]
    if not _check_header(name, header, types, problems):
        return
    data = rows[2:]
    if not data:
        problems.add(("empty", name), f"{name}: no object rows")
    _check_rows(zf, name, header, types, data, members, problems)


def _check_header(name: str, header: list[str], types: list[str], problems: _Problems) -> bool:
    """Names, prefixes, ids, types, limits; False when the rows cannot be read against it."""
    ok = True
    if len(types) != len(header):
        problems.add(("types", name), f"{name}: the type row has {len(types)} cells for {len(header)} columns")
        ok = False
    for col in sorted({h for h in header if header.count(h) > 1}):
        problems.add(("duplicate column", col), f"{name}: column {col} appears more than once")
        ok = False
    prefixes = set()
    for col, kind in zip(header, types):
        prefix, _, rest = col.partition("_")
        if not rest or prefix not in PREFIXES:
            problems.add(("prefix", col), f"{name}: column {col!r}: names must be <prefix>_<name>, prefix one of "
                                          f"{', '.join(PREFIXES)}")
            continue
        prefixes.add(prefix)
        if prefix == "img" and col not in PREDEFINED:
            problems.add(("prefix", col), f"{name}: column {col}: img_ has only img_file_name and img_rank")
        if kind not in ("[t]", "[f]"):
            problems.add(("type", col), f"{name}: column {col}: type {kind!r} is neither [t] nor [f]")
        elif col in PREDEFINED and kind != f"[{PREDEFINED[col]}]":
            problems.add(("type", col), f"{name}: column {col} must be typed [{PREDEFINED[col]}], not {kind}")
    for prefix in sorted(prefixes & {"sample", "acq", "process"}) + ["object"]:
        if f"{prefix}_id" not in header:
            problems.add(("ids", prefix), f"{name}: column {prefix}_id is mandatory"
                                          + (f" when there are {prefix}_ columns" if prefix != "object" else ""))
    if "img_file_name" not in header:
        problems.add(("ids", "img"), f"{name}: column img_file_name is mandatory")
    for p in check_limits(header, [t.strip("[]") for t in types]):
        problems.add(("limits", p), f"{name}: {p}")
    return ok


def _check_rows(zf: zipfile.ZipFile, name: str, header: list[str], types: list[str], data: list[list[str]],
                members: set[str], problems: _Problems) -> None:
    checks = [_cell_check(col, kind) for col, kind in zip(header, types)]
    seen: list[set[str]] = [set() for _ in header]  # values already checked, per column
    at = {col: k for k, col in enumerate(header)}
    ids: set[str] = set()
    acq_sample: dict[str, str] = {}
    images: dict[str, str | None] = {}
    folder = posixpath.dirname(name)
    for line, row in enumerate(data, start=3):
        if len(row) != len(header):
            problems.add(("fields", name), f"{name}: line {line} has {len(row)} cells, the header {len(header)}")
            continue
        for k, (value, check) in enumerate(zip(row, checks)):
            if value in seen[k]:
                continue
            why = check(value)
            if why:
                problems.add(("cell", header[k]), f"{name}: line {line}, {header[k]}: {why}")
            else:
                seen[k].add(value)
        get = lambda col: row[at[col]].strip() if col in at else ""  # noqa: E731
        _check_row(name, line, get, ids, acq_sample, problems)
        if "img_file_name" in at:
            _check_image(zf, name, line, folder, get("img_file_name"), members, images, problems)


def _check_row(name: str, line: int, get: Callable[[str], str], ids: set[str], acq_sample: dict[str, str],
               problems: _Problems) -> None:
    """Rules across cells of one row: unique object id, depths in order, status with a
    category, one sample per acquisition."""
    oid = get("object_id")
    if not oid:
        problems.add(("object_id", name), f"{name}: line {line}: empty object_id")
    elif oid in ids:
        problems.add(("object_id", name), f"{name}: line {line}: object_id {oid} appears twice")
    ids.add(oid)
    lo, hi = get("object_depth_min"), get("object_depth_max")
    if _NUMBER.fullmatch(lo) and _NUMBER.fullmatch(hi) and float(lo) > float(hi):
        problems.add(("depth", name), f"{name}: line {line}: object_depth_min {lo} > object_depth_max {hi}")
    status = get("object_annotation_status").lower()
    if status in STATUSES and not (get("object_annotation_category") or get("object_annotation_category_id")):
        problems.add(("status", name), f"{name}: line {line}: status {status} without a category")
    acq, sample = get("acq_id"), get("sample_id")
    if acq and acq_sample.setdefault(acq, sample) != sample:
        problems.add(("topology", acq), f"{name}: line {line}: acquisition {acq} is in samples "
                                        f"{acq_sample[acq]} and {sample}; one acquisition belongs to one sample")


def _check_image(zf: zipfile.ZipFile, name: str, line: int, folder: str, file_name: str, members: set[str],
                 images: dict[str, str | None], problems: _Problems) -> None:
    if not file_name:
        problems.add(("image", name), f"{name}: line {line}: empty img_file_name")
        return
    member = posixpath.normpath(posixpath.join(folder, file_name))
    if member not in images:
        if file_name.startswith("/") or member.startswith("../") or "\\" in file_name:
            images[member] = "must be a path inside the zip, relative to the TSV, with / separators"
        elif member not in members:
            images[member] = "not in the zip"
        else:
            images[member] = _png_problem(zf.read(member))
    why = images[member]
    if why:
        problems.add(("image", name), f"{name}: line {line}: image {file_name}: {why}")


def _png_problem(data: bytes) -> str | None:
    """Why these bytes are not a PNG EcoTaxa can read, or None."""
    from PIL import Image

    if not data.startswith(PNG_SIGNATURE):
        kind = ("TIFF" if data[:4] in (b"II*\x00", b"MM\x00*") else "JPEG" if data[:3] == b"\xff\xd8\xff"
                else "unknown")
        return f"not a PNG (content: {kind})"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format != "PNG":
                return f"decodes as {im.format}, not PNG"
    except Exception as e:  # any decoder failure means EcoTaxa cannot read it either
        return f"does not decode as PNG ({e})"
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        return "OpenCV cannot decode it"
    return None


def _cell_check(col: str, kind: str) -> Callable[[str], str | None]:
    """The validator of one column's cells: returns why a value is wrong, or None."""
    special = {"object_date": _check_date, "object_time": _check_time,
               "object_lat": lambda v: _check_range(v, -90, 90), "object_lon": lambda v: _check_range(v, -180, 180),
               "object_annotation_status": _check_status}
    if col in special:
        return special[col]
    if col in ("sample_id", "acq_id", "process_id"):
        return lambda v: "empty id" if not v.strip() else _check_text(v)
    if kind == "[f]" or PREDEFINED.get(col) == "f":
        return _check_number
    return _check_text


def _check_text(v: str) -> str | None:
    return f"text of {len(v)} characters, more than {TEXT_MAX}" if len(v) > TEXT_MAX else None


def _check_number(v: str) -> str | None:
    v = v.strip()
    if not v:
        return None
    if v.lower() in ("nan", "na", "inf", "-inf", "+inf", "infinity", "-infinity"):
        return f"{v!r} written as text: leave the cell empty for a missing number"
    return None if _NUMBER.fullmatch(v) else f"{v!r} is not a number"


def _check_range(v: str, lo: float, hi: float) -> str | None:
    why = _check_number(v)
    if why or not v.strip():
        return why
    return None if lo <= float(v) <= hi else f"{v} is outside [{lo}, {hi}]"


def _check_date(v: str) -> str | None:
    v = v.strip()
    if not v:
        return None
    if not re.fullmatch(r"\d{8}", v):
        return f"{v!r} is not YYYYMMDD"
    try:
        date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        return f"{v} is not a valid date"
    return None


def _check_time(v: str) -> str | None:
    v = v.strip()
    if not v:
        return None
    if not re.fullmatch(r"\d{6}", v):
        return f"{v!r} is not HHMMSS (six digits)"
    if int(v[:2]) > 23 or int(v[2:4]) > 59 or int(v[4:]) > 59:
        return f"{v} is not a valid time"
    return None


def _check_status(v: str) -> str | None:
    v = v.strip().lower()
    return None if not v or v in STATUSES else f"{v!r} is not one of {', '.join(STATUSES)}"
