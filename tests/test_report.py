"""`segplank report`: one self-contained HTML page per run, read back with the stdlib's HTML parser."""
import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segplank.cli import app
from segplank.frames import read_frame
from segplank.report import MIN_SIDE_PX, OUTLINE_BGR, PAD_PX, _draw, _galleries, _pick
from segplank.runs import frame_paths, read_manifest, read_objects, rewrite_shards

from .conftest import tiny_run

runner = CliRunner()
ODD = '<b>odd & "taxon"</b>'  # a class name that must come out as text, not markup
INJECTED = "a frame called <script>alert('x')</script> & friends"


class Page(HTMLParser):
    """What the tests read back: images, gallery sections, warnings and the keyed cells."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[dict] = []
        self.taxa: list[str] = []
        self.warnings: list[str] = []
        self.cells: dict[str, str] = {}
        self.text: list[str] = []
        self.captions: dict[str, list[str]] = {}  # taxon -> its vignettes' captions, in page order
        self._row_taxon = ""
        self._sections: list[str] = []  # the taxon of each open <section>, "" for the others
        self._open: tuple[str, str, list[str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "section":
            taxon = a["data-taxon"] if "taxon" in (a.get("class") or "").split() else ""
            self._sections.append(taxon)
            if taxon:
                self.taxa.append(taxon)
                self.captions[taxon] = []
        elif tag == "figcaption" and self._sections and self._sections[-1]:
            self._open = ("figcaption", self._sections[-1], [])
        elif tag == "tr":
            self._row_taxon = a.get("data-taxon", "")
        elif tag == "li" and a.get("class") == "warning":
            self._open = ("li", "", [])
        elif tag == "td" and "data-key" in a:
            key = f"{self._row_taxon}.{a['data-key']}" if self._row_taxon else a["data-key"]
            self._open = ("td", key, [])

    def handle_data(self, data):
        self.text.append(data)
        if self._open is not None:
            self._open[2].append(data)

    def handle_endtag(self, tag):
        if tag == "section":
            self._sections.pop()
        if self._open is not None and tag == self._open[0]:
            kind, key, parts = self._open
            if kind == "li":
                self.warnings.append("".join(parts))
            elif kind == "figcaption":
                self.captions[key].append("".join(parts))
            else:
                self.cells[key] = parts[0].strip()  # the value; a note follows in its own span
            self._open = None


def _number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%")) / (100 if cell.endswith("%") else 1)


def _png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()
    return Image.open(io.BytesIO(data))


def _report(run, *more) -> tuple[Page, str]:
    r = runner.invoke(app, ["report", str(run), *more])
    assert r.exit_code == 0, r.output
    out = next((Path(more[i + 1]) for i, m in enumerate(more) if m in ("-o", "--output")), run / "report.html")
    text = out.read_text(encoding="utf-8")
    return Page(text), text


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_cruise, tiny_checkpoint):
    """A line-stream run of the small cruise, its last frame cut short (skipped, with its reason),
    relabelled as if the model told three taxa apart (one with a name full of markup), and one
    warning added that is markup too."""
    d = tmp_path_factory.mktemp("report")
    cruise = d / "cruise"
    shutil.copytree(small_cruise, cruise)
    last = max((cruise / "frames").glob("*.png"))
    last.write_bytes(last.read_bytes()[:2000])
    out = tiny_run(cruise, d / "run", tiny_checkpoint)

    def relabel(df):
        k = np.arange(len(df))
        df.loc[k % 3 == 1, "label_name"] = "chaetognath"
        df.loc[k % 3 == 2, "label_name"] = ODD
        return df

    rewrite_shards(out, "objects", relabel)
    m = read_manifest(out)
    written = read_objects(out, ["label_name"])["label_name"].value_counts().to_dict()
    m["counts"]["written_per_class"] = m["counts"]["detected_per_class"] = written
    m["warnings"].append(INJECTED)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_report_is_one_file_with_the_runs_numbers(run):
    page, text = _report(run)
    m = read_manifest(run)
    objects = read_objects(run)
    # every image is an embedded PNG: one file, nothing beside it
    assert page.imgs and all(_png(i["src"]) for i in page.imgs)
    assert not [p for p in run.iterdir() if p.suffix == ".png"]
    # a gallery per taxon of the object table, the markup-named one escaped
    assert sorted(page.taxa) == sorted(objects["label_name"].unique()) and ODD in page.taxa
    assert "<b>odd" not in text and "<script>" not in text
    # every warning of the manifest, in its order, as text
    assert page.warnings == m["warnings"] and INJECTED in page.warnings and len(m["warnings"]) > 1
    c = page.cells
    fr = m["frames"]
    assert _number(c["frames.found"]) == fr["found"] == 3
    assert _number(c["frames.done_this_run"]) == fr["done_this_run"] == 2
    assert _number(c["frames.skipped"]) == len(fr["skipped"]) == 1
    assert fr["skipped"][0]["reason"] in " ".join(page.text) and fr["skipped"][0]["path"] in " ".join(page.text)
    assert _number(c["tiles.total"]) == m["tiles"]["total"]
    assert _number(c["tiles.skipped_share"]) == pytest.approx(m["tiles"]["skipped_share"], abs=5e-4)
    assert _number(c["objects_written"]) == m["counts"]["objects_written"] == len(objects)
    for taxon, n in m["counts"]["written_per_class"].items():
        assert _number(c[f"{taxon}.written"]) == n == (objects["label_name"] == taxon).sum()
        assert _number(c[f"{taxon}.detected"]) == m["counts"]["detected_per_class"][taxon]
    geo = m["geo"]
    assert _number(c["coverage.frames"]) == geo["frames"] == 2
    assert _number(c["coverage.no_time"]) == geo["no_time"]
    assert _number(c["coverage.no_position"]) == geo["no_time"] + geo["outside_nav"]
    assert _number(c["coverage.no_depth"]) == geo["no_time"] + geo["outside_ctd"]
    inst = m["config"]["instrument"]
    assert _number(c["instrument.pixel_size_um"]) == inst["pixel_size_um"]
    assert _number(c["instrument.volume_per_frame_l"]) == pytest.approx(inst["volume_per_frame_l"], rel=1e-6)
    assert c["model.demo"] == "no"
    # no `segplank profile` yet: the page says how to make the figures
    assert f"segplank profile {run}" in " ".join(page.text)


def test_galleries_hold_the_least_and_most_confident(run):
    page, _ = _report(run, "--per-taxon", "2")
    objects = read_objects(run)
    per_taxon = objects["label_name"].value_counts()
    # two images (as recorded, outlined) per vignette; a taxon of more than 4 objects shows 2 + 2
    assert len(page.imgs) == 2 * sum(min(n, 4) for n in per_taxon)
    for taxon, rows in objects.groupby("label_name"):
        s = np.sort(rows["score"].to_numpy())
        expected = [*s[:2], *s[::-1][:2]] if len(s) > 4 else list(s)
        shown = [float(c.split("·")[0]) for c in page.captions[taxon]]
        assert shown == [float(f"{v:.2f}") for v in expected]
        assert all(c.split("·")[1].strip().endswith("µm") for c in page.captions[taxon])


def test_line_stream_vignettes_reach_into_the_frame_above(run):
    """An object across a frame cut is cut from its frame stacked with the one it reaches into."""
    m = read_manifest(run)
    assert m["config"]["stream"]["enabled"]
    objects = read_objects(run)
    galleries, problem, notes = _galleries(run, m, objects.drop(columns="mask_rle"), None, 10_000)
    assert not problem and not notes
    shown = {v.object_id: v for g in galleries for v in g.least + g.most}
    assert len(shown) == len(objects) and all(v.raw is not None for v in shown.values())
    paths = frame_paths(run)
    cruise = m["cruise_dir"]
    crossing = objects[objects["bbox_y"] < 0]
    assert len(crossing)
    for r in crossing.itertuples():
        above = read_frame(f"{cruise}/{paths[r.frame_index - 1]}")
        v = shown[r.object_id]
        z = int(v.zoom)
        assert z == v.zoom and z * max(r.bbox_w, r.bbox_h) + 2 * PAD_PX * z >= MIN_SIDE_PX
        raw = np.asarray(Image.open(io.BytesIO(v.raw)))[::z, ::z]  # whole-factor zoom, nearest: undone exactly
        assert raw.shape == (r.bbox_h + 2 * PAD_PX, r.bbox_w + 2 * PAD_PX)
        reach = PAD_PX - r.bbox_y  # rows of the frame above in the vignette
        x0, x1 = max(r.bbox_x - PAD_PX, 0), min(r.bbox_x + r.bbox_w + PAD_PX, above.shape[1])
        left = x0 - (r.bbox_x - PAD_PX)
        assert np.array_equal(raw[:reach, left:left + x1 - x0], above[-reach:, x0:x1])


def test_figures_of_segplank_profile_are_embedded(run, tmp_path):
    r = runner.invoke(app, ["profile", str(run)])
    assert r.exit_code == 0, r.output
    page, _ = _report(run, "-o", str(tmp_path / "page.html"))
    figures = [i for i in page.imgs if i["alt"] in ("Vertical profile", "Track map")]
    assert len(figures) == 2
    assert [_png(i["src"]).size for i in figures] == [Image.open(run / "profile" / n).size
                                                      for n in ("profile.png", "track.png")]


def test_missing_cruise_folder_still_gives_a_report(run, tmp_path):
    moved = tmp_path / "copied_run"
    shutil.copytree(run, moved)
    m = read_manifest(moved)
    cruise = m["cruise_dir"]
    m["cruise_dir"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(m))
    page, _ = _report(moved)
    said = " ".join(" ".join(page.text).split())
    assert "not found" in said and "--cruise-dir" in said
    assert sorted(page.taxa) == sorted(read_objects(moved)["label_name"].unique())  # listed without images
    assert not [i for i in page.imgs if i["alt"] not in ("Vertical profile", "Track map")]
    assert page.warnings == m["warnings"] and page.cells["frames.found"] == "3"
    page, _ = _report(moved, "--cruise-dir", cruise)
    assert len(page.imgs) > 2 and all(_png(i["src"]) for i in page.imgs)
    # a cruise copied in part: the frames that are there give their vignettes, the others are named
    part = tmp_path / "part"
    shutil.copytree(cruise, part)
    gone = read_objects(moved, ["frame_path"])["frame_path"].iloc[0]
    (part / gone).unlink()
    page, _ = _report(moved, "--cruise-dir", str(part))
    said = " ".join(" ".join(page.text).split())
    assert f"{part / gone}: cannot read the file" in said and "frame unreadable" in said
    assert page.imgs and all(_png(i["src"]) for i in page.imgs)


def test_a_folder_without_manifest_is_one_line_exit_2(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "no manifest.json" in lines[0] and str(tmp_path.name) in lines[0]
    assert not (tmp_path / "report.html").exists()


def test_pick_never_shows_an_object_twice():
    import pandas as pd

    rows = pd.DataFrame({"object_id": list("abcde"), "score": [0.5, 0.1, 0.9, 0.3, 0.7]})
    least, most = _pick(rows, 2)
    assert least["object_id"].tolist() == ["b", "d"] and most["object_id"].tolist() == ["c", "e"]
    least, most = _pick(rows.iloc[:4], 2)
    assert least["object_id"].tolist() == ["b", "d", "a", "c"] and most.empty
    least, most = _pick(rows.iloc[:0], 2)
    assert least.empty and most.empty


def test_one_pixel_object_is_enlarged_and_outlined():
    vignette = np.full((1 + 2 * PAD_PX, 1 + 2 * PAD_PX), 200, np.uint8)
    vignette[PAD_PX, PAD_PX] = 20
    raw, outlined, zoom = _draw(vignette, np.ones((1, 1), bool))
    assert zoom == 3  # 21 px -> 63 px, at least MIN_SIDE_PX
    a = np.asarray(Image.open(io.BytesIO(raw)))
    assert a.shape == (63, 63) and np.array_equal(a[::3, ::3], vignette)
    b = np.asarray(Image.open(io.BytesIO(outlined)).convert("RGB"))
    ink = np.all(b == OUTLINE_BGR[::-1], axis=2)
    ys, xs = np.nonzero(ink)
    assert ink.any() and ys.min() >= 3 * PAD_PX and ys.max() < 3 * PAD_PX + 3 and xs.min() >= 3 * PAD_PX


def test_container_members_are_looked_for_as_their_file():
    from segplank.frames import source_file

    assert source_file(Path("cast1/clip.avi/clip_000012")) == Path("cast1/clip.avi")
    assert source_file(Path("stack.tif/stack_000002")) == Path("stack.tif")
    assert source_file(Path("frames/x_000001.png")) == Path("frames/x_000001.png")


def test_video_cruise_gives_vignettes(tmp_path, tiny_checkpoint):
    """Frames that are members of a video (``clip.avi/clip_000001``) are found and read as frames."""
    from segplank.synth import make_cruise

    make_cruise(tmp_path / "c", 2, seed=5, size=(256, 256), avi=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tiling:\n  tile_size: 256\n  overlap: 32\nfilter:\n  score_threshold: 0.0\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["infer", str(tmp_path / "c" / "avi"), "-o", str(out), "--model", str(tiny_checkpoint),
                            "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert read_objects(out, ["frame_path"])["frame_path"].str.contains(r"\.avi/").all()
    page, _ = _report(out, "--per-taxon", "1")
    assert "frame not found" not in " ".join(page.text) and "frame unreadable" not in " ".join(page.text)
    per_taxon = read_objects(out, ["label_name"])["label_name"].value_counts()
    assert len(page.imgs) == 2 * sum(min(n, 2) for n in per_taxon) and all(_png(i["src"]) for i in page.imgs)
