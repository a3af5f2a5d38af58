"""The output folder: one run and one cruise per folder, unique object ids, writes that survive a
power cut, and what cannot be written said in one line (issue 18)."""
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from filelock import FileLock

from segplank.config import load_config
from segplank.engine.local import LocalRunner, RunError
from segplank.engine.outdir import LOCK_NAME
from segplank.io import atomic
from segplank.model.checkpoint import load_checkpoint

CFG = {"tiling": {"tile_size": 256, "overlap": 32}, "filter": {"score_threshold": 0.0}, "output": {"shard_frames": 1}}


@pytest.fixture(scope="module")
def go(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    before = torch.get_num_threads()

    def run(cruise, out, cfg=CFG, **kw):
        runner = LocalRunner(load_config(None, cruise, cfg), ckpt, tiny_checkpoint, torch.device("cpu"), threads=1)
        return runner.run(cruise, out, **kw)

    yield run
    torch.set_num_threads(before)


def _objects(out):
    return pq.read_table(out / "objects").to_pandas().sort_values("object_id").reset_index(drop=True)


def test_another_cruise_into_the_same_folder_is_refused(go, small_cruise, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(small_cruise, other)  # same frame names, another cruise
    out = tmp_path / "out"
    go(small_cruise, out)
    with pytest.raises(RunError, match=rf"out: holds the cruise {small_cruise.resolve()}; use another -o folder"):
        go(other, out)
    assert json.loads((out / "manifest.json").read_text())["cruise_path"] == str(small_cruise.resolve())
    assert go(small_cruise, out).frames_resumed == 3  # its own cruise still resumes


def test_a_frame_changed_since_it_was_done_is_refused(go, small_cruise, tmp_path):
    cruise = tmp_path / "c"
    shutil.copytree(small_cruise, cruise)
    out = tmp_path / "out"
    go(cruise, out)
    frame = sorted((cruise / "frames").glob("*.png"))[1]
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-copied: same name, new file
    with pytest.raises(RunError, match=rf"1 frame\(s\) changed since this run processed them .* e.g. frames/{frame.name}"):
        go(cruise, out)


def test_a_second_run_on_a_locked_folder_is_refused_and_the_lock_is_released(go, small_cruise, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / LOCK_NAME):  # another process's run holds the folder
        with pytest.raises(RunError, match="another segplank run is writing to this folder"):
            go(small_cruise, out)
    assert not (out / "manifest.json").exists()  # refused before touching anything
    assert go(small_cruise, out).frames_done == 3
    assert FileLock(out / LOCK_NAME, timeout=0).acquire()  # released at the end of the run


def test_object_ids_are_unique_across_folders_and_stable(go, small_cruise, tmp_path):
    cruise = tmp_path / "c"
    frame = sorted((small_cruise / "frames").glob("*.png"))[0]
    for cast in ("castA", "castB"):
        (cruise / cast).mkdir(parents=True)
        shutil.copy(frame, cruise / cast / "img_0001.png")
    out = tmp_path / "out"
    go(cruise, out)
    t = _objects(out)
    assert len(t) > 1 and t["object_id"].is_unique
    assert set(t["object_id"].str.rsplit("_", n=1).str[0]) == {"castA-img_0001", "castB-img_0001"}
    again = tmp_path / "again"
    go(cruise, again)
    assert _objects(again)["object_id"].tolist() == t["object_id"].tolist()


def test_frames_that_would_share_object_ids_are_refused(go, small_cruise, tmp_path):
    cruise = tmp_path / "c"
    (cruise / "frames").mkdir(parents=True)
    frame = sorted((small_cruise / "frames").glob("*.png"))[0]
    shutil.copy(frame, cruise / "frames" / "img.png")
    (cruise / "frames" / "img.tif").write_bytes(b"")  # found as a frame, whatever its contents
    with pytest.raises(RunError, match=r"frames/img\.\w+ and frames/img\.\w+ would give their objects the same ids"):
        go(cruise, tmp_path / "out")


def test_an_output_path_that_is_a_file_is_one_line(go, small_cruise, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(RunError, match="out: is a file, not a folder; choose another -o folder"):
        go(small_cruise, out)


def test_a_read_only_output_folder_is_one_line(go, small_cruise, tmp_path, monkeypatch):
    def refused(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "objects" / "part-00000.parquet"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refused)
    with pytest.raises(RunError, match=r"out: cannot write the output \(Permission denied\); make it writable"):
        go(small_cruise, tmp_path / "out")


def test_a_shard_is_written_after_shard_seconds_of_work(go, small_cruise, tmp_path):
    out = tmp_path / "out"
    go(small_cruise, out, {**CFG, "output": {"shard_frames": 200, "shard_seconds": 1e-6}})
    assert len(list((out / "frames").glob("part-*.parquet"))) == 3  # one per frame, not one for all


def test_files_are_flushed_before_their_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: calls.append(("replace", str(b))) or real_replace(a, b))
    atomic.write_json(tmp_path / "x.json", {"a": 1})
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert calls[0][1].endswith(".tmp") and calls[2][1] == str(tmp_path)


def test_a_torn_shard_is_redone_on_resume(go, small_cruise, tmp_path, caplog):
    out = tmp_path / "out"
    go(small_cruise, out)
    whole = _objects(out)
    shard = sorted((out / "objects").glob("part-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # renamed in place before its data landed
    stats = go(small_cruise, out)
    assert stats.frames_done == 1 and stats.frames_resumed == 2
    assert f"shard {shard.stem} does not read back" in caplog.text
    assert _objects(out).equals(whole)


def test_every_warning_of_the_run_is_in_its_manifest(go, small_cruise, tmp_path):
    cruise = tmp_path / "c"
    shutil.copytree(small_cruise, cruise)
    bad = sorted((cruise / "frames").glob("*.png"))[2]
    bad.write_bytes(bad.read_bytes()[:1500])
    out = tmp_path / "out"
    go(cruise, out)
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert any(w.startswith(f"skipped {bad}: truncated PNG data") for w in warnings)
    go(cruise, out)  # a resumed run keeps what the runs before it said
    assert any(w.startswith(f"skipped {bad}") for w in json.loads((out / "manifest.json").read_text())["warnings"])


def test_frames_without_a_time_are_not_blamed_on_the_navigation(go, small_cruise, tmp_path, caplog):
    cruise = tmp_path / "c"
    shutil.copytree(small_cruise, cruise)
    for k, f in enumerate(sorted((cruise / "frames").glob("*.png"))):
        f.rename(f.with_name(f"frame{k}.png"))
    go(cruise, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["geo"]["no_time"] == 3 and manifest["geo"]["outside_nav"] == 0
    assert "3 of 3 frames have no time" in caplog.text and "outside the navigation record" not in caplog.text
