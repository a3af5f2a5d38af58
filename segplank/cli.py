"""The `segplank` command line."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__

# help texts are plain text: rich markup would eat `pip install 'segplank[ray]'`
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Detect, segment, classify and measure plankton in in situ camera frames.")
console = Console(stderr=True)
out = Console()


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)], force=True)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # damaged TIFFs are reported once, by the frame source


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"segplank {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")) -> None:
    _setup_logging()


@app.command()
def synth(out_dir: Path = typer.Argument(..., help="Folder to write the synthetic cruise into."),
          frames: int = typer.Option(10, "--frames", "-n", min=0, help="Number of frames."),
          seed: int = typer.Option(0, help="Random seed: the same seed gives byte-identical files."),
          preset: str = typer.Option("isiis", help="isiis (a line-scan shadowgraph: dark objects on bright), uvp "
                                     "(lit objects on dark) or cfe (an area-camera shadowgraph: strong vignetting, "
                                     "gain drift, JPEG frames)."),
          density: str = typer.Option("mixed", help="sparse, mixed or dense (1,000-2,500 objects per 2048² frame)."),
          plankton_share: Optional[float] = typer.Option(None, min=0, max=1, help="Share of plankton among objects."),
          size: int = typer.Option(2048, min=64, help="Frame height and width in pixels."),
          frame_rate: float = typer.Option(2.0, min=1e-4, help="Frames per second (lower it to spread a few frames over the tow-yo's depths)."),
          workers: int = typer.Option(1, min=1, help="Processes; output does not depend on it."),
          line_scan: bool = typer.Option(False, "--line-scan", help="A line-scan cruise (the isiis preset): frames "
                                         "are cuts of one stream; ground_truth_stream.json holds each object once."),
          avi: bool = typer.Option(False, "--avi", help="Also write the frames as one lossless AVI in OUT_DIR/avi, "
                                   "a cruise folder of its own (segplank infer OUT_DIR/avi)."),
          organisms: Optional[Path] = typer.Option(None, "--organisms", help="A vignette library (a folder per taxon, "
                                                   "or an EcoTaxa export): its organisms replace the drawn plankton "
                                                   "and detritus; the truth's categories are its taxa."),
          organisms_split: str = typer.Option("all", help="With --organisms: all, train or held_out (the split of "
                                              "`train-classifier --library` with the same --organisms-seed)."),
          organisms_seed: int = typer.Option(0, min=0, help="With --organisms: the seed of that split."),
          library_pixel_size: Optional[float] = typer.Option(None, min=1e-3, help="With --organisms: µm per pixel of "
                                                             "its vignettes where it states none (default: the "
                                                             "cruise's, drawn 1:1)."),
          backgrounds: Optional[Path] = typer.Option(None, "--backgrounds", help="A folder of your own frames drawn "
                                                     "behind the objects; their own objects become ignore (iscrowd) "
                                                     "regions of the ground truth.")) -> None:
    """Write a synthetic ISIIS/UVP cruise with exact COCO ground truth, navigation and CTD."""
    from .library import LibraryError
    from .synth import make_cruise

    if line_scan and preset != "isiis":
        _fail(f"--line-scan is the isiis preset; --preset {preset} takes snapshots, not a line stream")
    if preset not in ("isiis", "uvp", "cfe"):
        _fail(f"--preset {preset!r}: choose isiis, uvp or cfe")
    if backgrounds is not None and not backgrounds.is_dir():
        _fail(f"--backgrounds {backgrounds}: not a folder of frames")
    if density not in ("sparse", "mixed", "dense"):
        _fail(f"--density {density!r}: choose sparse, mixed or dense")
    if organisms_split not in ("all", "train", "held_out"):
        _fail(f"--organisms-split {organisms_split!r}: choose all, train or held_out")
    try:
        summary = make_cruise(out_dir, frames, seed, preset=preset, density=density, plankton_share=plankton_share,
                              size=(size, size), workers=workers, frame_rate_hz=frame_rate, avi=avi,
                              organisms=organisms, organisms_split=organisms_split, organisms_seed=organisms_seed,
                              library_pixel_size_um=library_pixel_size, backgrounds=backgrounds)
    except (FileExistsError, ValueError, LibraryError) as e:
        _fail(str(e))
    out.print(str(summary))


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
def infer(cruise_dir: Path = typer.Argument(..., help="Cruise folder: frames anywhere below it, nav*.csv, ctd*.csv."),
          output: Path = typer.Option(Path("segplank_out"), "-o", "--output", help="Output folder."),
          model: Optional[Path] = typer.Option(None, "--model", "-m", help="Checkpoint (default: the bundled demo model)."),
          config: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline config YAML (see configs/)."),
          device: str = typer.Option("auto", help="auto, cpu or cuda."),
          keep_non_plankton: bool = typer.Option(False, "--keep-non-plankton", help="Also write non-plankton rows."),
          force: bool = typer.Option(False, "--force", help="Replace a previous run in the output folder."),
          limit: Optional[int] = typer.Option(None, min=1, help="Process at most this many (new) frames."),
          threads: Optional[int] = typer.Option(None, min=1, help="Torch CPU threads."),
          engine: Optional[Engine] = typer.Option(None, "--engine", help="local (this machine, default) or ray "
                                                  "(a Ray cluster; pip install 'segplank[ray]')."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address, e.g. ray://head:10001 "
                                                "(default: RAY_ADDRESS, else Ray starts on this machine)."),
          decode_workers: Optional[int] = typer.Option(None, "--decode-workers", min=0,
                                                       help="Processes decoding frames ahead (local engine; 0: none)."),
          stream: Optional[bool] = typer.Option(None, "--stream/--no-stream", help="Line-scan frames as one stream: objects "
                                                "across frame cuts come out once, whole (default: the config's stream.enabled; "
                                                "unset, on when the instrument scans lines: instrument.line_rate_hz)."),
          segment_frames: Optional[int] = typer.Option(None, "--segment-frames", min=1,
                                                       help="Line streams: frames per segment, what one worker runs and "
                                                            "writes (default: 64 under Ray, the whole stream locally)."),
          verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    """Detect, segment, classify, measure and write every object of a cruise. Reruns resume."""
    from .config import ConfigError, load_config
    from .engine import make_runner
    from .engine.outdir import Interrupted, RunError
    from .model.checkpoint import DEMO_MODEL, CheckpointError, load_checkpoint

    _setup_logging(verbose)
    if not cruise_dir.is_dir():
        _fail(f"{cruise_dir}: not a folder; pass the cruise folder that holds the frames")
    overrides = {"device": device}
    if keep_non_plankton:
        overrides["filter"] = {"keep_non_plankton": True}
    if stream is not None:
        overrides["stream"] = {"enabled": stream}
    run_opts = {"kind": engine.value if engine else None, "ray_address": address, "decode_workers": decode_workers,
                "segment_frames": segment_frames}
    if any(v is not None for v in run_opts.values()):
        overrides["engine"] = {k: v for k, v in run_opts.items() if v is not None}
    try:
        cfg = load_config(config, cruise_dir, overrides)
        model_path = model or DEMO_MODEL
        ckpt = load_checkpoint(model_path)
        if model is None:
            console.print("[yellow]Using the bundled demo model, trained on synthetic frames only: "
                          "train your own with `segplank train` for real data.[/]")
        runner = make_runner(cfg, ckpt, model_path, threads)
    except (ConfigError, CheckpointError, RunError) as e:
        _fail(str(e))
    progress = Progress(TextColumn("[bold]infer"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    with progress:
        task = progress.add_task("frames", total=None, rate="")

        def on_frame(stats, n_obj: int) -> None:
            el = max(1e-6, time.time() - started)
            progress.update(task, completed=stats.frames_done, total=stats.frames_found - stats.frames_resumed,
                            rate=f"{_rate(stats.frames_done, el)} frames/s, {_rate(stats.objects, el)} objects/s")

        started = time.time()
        try:
            stats = runner.run(cruise_dir, output, force=force, on_frame=on_frame, limit=limit)
        except RunError as e:
            progress.stop()
            _fail(str(e))
        except Interrupted as e:
            progress.stop()
            _fail(f"{e}: the frames written so far are kept; rerun the same command to resume", 130)
    _summary(stats, output)
    if stats.interrupted:
        _fail(f"interrupted ({stats.interrupted}) after {stats.frames_done} frame(s), all written to {output}; "
              "rerun the same command to resume", 130)
    if stats.frames_done == 0 and stats.frames_resumed == 0:
        raise typer.Exit(1)


def _rate(n: float, seconds: float) -> str:
    """Three significant figures: 0.4 objects/s is not "0 objects/s"."""
    return f"{n / seconds:.3g}" if seconds > 0 else "-"


def _summary(stats, output: Path) -> None:
    t = Table(title=f"segplank infer → {output}", show_header=True)
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("frames found", str(stats.frames_found))
    t.add_row("frames processed (this run)", str(stats.frames_done))
    if stats.frames_resumed:
        t.add_row("frames already done (resumed)", str(stats.frames_resumed))
    t.add_row("frames skipped", str(len(stats.skipped)))
    t.add_row("empty tiles skipped", f"{stats.skipped_tile_share:.0%}")
    t.add_row("objects written", str(stats.objects))
    detected = sum(stats.per_class.values())
    plank = sum(n for k, n in stats.per_class.items() if k in stats.plankton_names)
    t.add_row("plankton share of detections", f"{plank / detected:.1%}" if detected else "-")
    if stats.frames_done:  # a run with nothing left to do has no rate
        t.add_row("throughput", f"{_rate(stats.frames_done, stats.seconds)} frames/s, "
                                f"{_rate(detected, stats.seconds)} detections/s")
    total = sum(stats.stage_seconds.values())
    if total:
        t.add_row("time per stage", ", ".join(f"{k} {v / total:.0%}" for k, v in stats.stage_seconds.items()))
    out.print(t)
    if stats.per_class:
        c = Table(title="objects per class", show_header=True,
                  caption="detected: every object the model found; written: those in the output (plankton at or "
                          "above its score threshold; non-plankton only with --keep-non-plankton)")
        c.add_column("class")
        c.add_column("detected", justify="right")
        c.add_column("written", justify="right")
        for name, n in sorted(stats.per_class.items(), key=lambda kv: -kv[1]):
            c.add_row(name, str(n), str(stats.written_per_class.get(name, 0)))
        out.print(c)
    for s in stats.skipped:
        out.print(f"[yellow]skipped[/] {s.path}: {s.reason}", highlight=False)


@app.command()
def train(coco: list[Path] = typer.Argument(..., help="COCO annotations of full frames (several are merged by category name)."),
          output: Path = typer.Option(Path("model.pt"), "-o", "--output", help="Best checkpoint; .last.pt, .state.pt, .metrics.csv/.png beside it."),
          images: Optional[Path] = typer.Option(None, help="Image root (default: each COCO file's folder)."),
          val: Optional[list[Path]] = typer.Option(None, help="Validation COCO file(s): val loss and mask AP each epoch."),
          config: Optional[Path] = typer.Option(None, "--config", "-c", help="Training config YAML (configs/train_*.yaml)."),
          iterations: Optional[int] = typer.Option(None, min=1),
          polarity: str = typer.Option("dark_on_bright", help="dark_on_bright (ISIIS) or bright_on_dark (UVP)."),
          init: Optional[str] = typer.Option(None, "--init", help="none | imagenet | coco (torchvision downloads them) | a checkpoint.pt."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUTPUT's .state.pt (same result as no interruption)."),
          demo: bool = typer.Option(False, hidden=True)) -> None:
    """Train a Mask R-CNN on chips cut from annotated frames; writes self-describing checkpoints."""
    from .config import ConfigError, TrainConfig, build_config, read_yaml
    from .model.checkpoint import CheckpointError
    from .train import RunFiles
    from .train import train as run_train

    if polarity not in ("dark_on_bright", "bright_on_dark"):
        _fail(f"--polarity {polarity!r}: choose dark_on_bright or bright_on_dark")
    try:
        data = read_yaml(config) if config else {}
        if iterations:
            data["iterations"] = iterations
        cfg = build_config(data, str(config or "defaults"), TrainConfig)
    except ConfigError as e:
        _fail(str(e))
    for path in [*coco, *(val or [])]:
        if not path.is_file():
            _fail(f"{path}: annotation file not found")
    start = init if init in (None, "none", "imagenet", "coco") else Path(init)
    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("train", total=cfg.iterations, info="")

        def on_iter(it: int, row: dict) -> None:
            info = f"loss {row['loss']:.3f}"
            if "val_loss" in row:
                info += f" val {row['val_loss']:.3f} mask AP {row.get('mask_AP', float('nan')):.3f}"
            progress.update(task, completed=it, info=info)

        try:
            ckpt = run_train(cfg, coco if len(coco) > 1 else coco[0], output, images, val or None, polarity, on_iter,
                             demo=demo, init=start, resume=resume)
        except (ValueError, CheckpointError) as e:
            progress.stop()
            _fail(str(e))
    files = RunFiles.beside(output)
    out.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, best), {files.last.name}, "
              f"{files.csv.name}, {files.png.name}; metrics: {ckpt.metrics}")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


@app.command("train-classifier")
def train_classifier_cmd(
        coco: Optional[list[Path]] = typer.Argument(None, help="COCO annotations of full frames (the checkpoint's class names)."),
        model: Optional[Path] = typer.Option(None, "--model", "-m", help="The detector checkpoint the classifier joins."),
        output: Path = typer.Option(Path("model.pt"), "-o", "--output", help="The checkpoint with its classifier."),
        library: Optional[Path] = typer.Option(None, "--library", help="A vignette library (a folder per taxon, or an "
                                               "EcoTaxa export .zip/folder). Alone: a classifier of its taxa. With COCO "
                                               "files and a plankton/non-plankton --model: its training split joins "
                                               "the training vignettes and its taxa the classes."),
        held_out: float = typer.Option(0.2, "--held-out", min=0.0, max=0.9, help="With --library: share of each taxon "
                                       "kept out of training and scored (top-1, macro-F1, per level)."),
        split_seed: int = typer.Option(0, "--split-seed", min=0, help="With --library: the seed of that split (the "
                                       "same as `synth --organisms-seed` for frames of the other part)."),
        pixel_size: Optional[float] = typer.Option(None, "--pixel-size", min=1e-3, help="With --library: µm per pixel of "
                                                   "vignettes that state none (EcoTaxa's process_pixel otherwise)."),
        all_statuses: bool = typer.Option(False, "--all-statuses", help="With --library: every EcoTaxa row, not only "
                                          "validated ones."),
        class_power: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Classes drawn in proportion to their "
                                                    "count ** this (0: equally often; default 0, 0.5 with --library)."),
        plankton_share: Optional[float] = typer.Option(None, min=0.01, max=0.99, help="Share of the objects drawn that "
                                                       "are plankton, however many classes each side has (default "
                                                       "0.5 for a classifier that names a library's taxa beside a "
                                                       "plankton/non-plankton detector; otherwise by --class-power)."),
        images: Optional[Path] = typer.Option(None, help="Image root (default: each COCO file's folder)."),
        val: Optional[list[Path]] = typer.Option(None, help="Validation COCO file(s): accuracy per class on the detector's candidates."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline config of the annotated frames "
                                              "(polarity, pixel size, refinement: as `infer` will run)."),
        mine_frames: Optional[int] = typer.Option(None, min=0, help="Training frames the detector's candidates are "
                                                  "mined on (default all; 0: annotations only)."),
        iterations: int = typer.Option(1500, min=1), batch_size: int = typer.Option(128, min=2),
        size: int = typer.Option(48, min=16, help="Vignette side (px)."), width: int = typer.Option(24, min=4),
        lr: float = typer.Option(2e-3, min=1e-6), seed: int = typer.Option(0, min=0),
        threads: int = typer.Option(2, min=1),
        bf16: bool = typer.Option(False, "--bf16", help="Train in bfloat16 autocast: about 1.6x faster on a CPU with "
                                  "AVX512-BF16 (lscpu: avx512_bf16), slower on other CPUs."),
        vignettes: Optional[Path] = typer.Option(None, help="An .npz that keeps the cut vignettes: a rerun with the "
                                                 "same detector, annotations and config skips the mining.")) -> None:
    """Train the vignette classifier that names every refined candidate, and add it to a checkpoint;
    or, with --library, a classifier of a vignette library's taxa (for `segplank classify`)."""
    from .config import ConfigError, load_config
    from .model.checkpoint import CheckpointError, load_checkpoint
    from .model.classifier import ClassifierConfig
    from .library import LibraryError
    from .train_classifier import ClassifierTrainConfig, fit_classifier
    from .train_data import CocoError

    if library is not None and not coco and model is None:
        cfg = ClassifierTrainConfig(ClassifierConfig(size, width), iterations, batch_size, lr, seed=seed,
                                    threads=threads, class_power=0.5 if class_power is None else class_power,
                                    plankton_share=plankton_share, bf16=bf16)
        _train_library_classifier(library, output, cfg, held_out, split_seed, pixel_size,
                                  None if all_statuses else ("validated",))
        return
    if not coco or model is None:
        _fail("pass COCO annotation file(s) and --model (a detector checkpoint), or --library LIB alone "
              "(a classifier of the library's taxa)")
    for path in [*coco, *(val or [])]:
        if not path.is_file():
            _fail(f"{path}: annotation file not found")
    try:
        pipeline = load_config(config, coco[0].parent, {})
        ckpt = load_checkpoint(model)
    except (ConfigError, CheckpointError) as e:
        _fail(str(e))
    from .train_classifier import names_taxa

    taxa = names_taxa(ckpt)  # a plankton/non-plankton detector: the classifier names the taxa
    cfg = ClassifierTrainConfig(ClassifierConfig(size, width, "plankton_first" if taxa else "flat"), iterations,
                                batch_size, lr, seed=seed, threads=threads,
                                class_power=(0.5 if taxa else 0.0) if class_power is None else class_power,
                                plankton_share=(0.5 if taxa else None) if plankton_share is None else plankton_share,
                                bf16=bf16)
    with _progress() as progress:
        on_step = _stage_steps(progress)
        try:
            new = fit_classifier(ckpt, coco, output, val or (), cfg, pipeline, images, mine_frames, on_step,
                                 vignettes, library, held_out, split_seed, pixel_size)
        except (ValueError, CocoError, LibraryError) as e:
            progress.stop()
            _fail(str(e))
    t = new.classifier["trained_on"]
    acc = f"; validation accuracy {t['val_accuracy']:.3f} on {t['val_vignettes']} objects" if "val_accuracy" in t else ""
    out.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB): {t['train_vignettes']} training vignettes, "
              f"{t['seconds']} s{acc}")
    for name, a in t.get("val_accuracy_per_class", {}).items():
        out.print(f"  {name}: {a:.3f}")


def _stage_steps(progress: Progress):
    """A ``progress(stage, k, total, row)`` callback: one bar per stage (cut, mine, train...)."""
    tasks: dict[str, int] = {}

    def on_step(stage: str, k: int, total: int, row: dict) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total, info="")
        info = (f"loss {row['loss']:.3f}" if "loss" in row else
                f"{row['candidates']} candidates" if "candidates" in row else f"{row.get('vignettes', k)} vignettes")
        progress.update(tasks[stage], completed=k, info=info)

    return on_step


def _train_library_classifier(library: Path, output: Path, cfg, held_out: float, split_seed: int,
                              pixel_size: Optional[float], statuses) -> None:
    from .library import LibraryError
    from .train_classifier import fit_library_classifier

    report_dir = output.parent / f"{output.stem}_report"
    with _progress() as progress:
        on_step = _stage_steps(progress)
        try:
            clf = fit_library_classifier(library, output, cfg, held_out, split_seed, pixel_size, statuses, on_step,
                                         report_dir)
        except (LibraryError, ValueError) as e:
            progress.stop()
            _fail(str(e))
    t, m = clf.trained_on, clf.metrics
    out.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB): {len(clf.taxa)} taxa, {t['train_vignettes']} "
              f"training vignettes, {t['seconds']} s")
    if t["skipped"]:
        out.print("left out: " + ", ".join(f"{n} {r}" for r, n in t["skipped"].items()))
    if m:
        levels = ", ".join(f"{k} {v:.3f}" for k, v in m["levels"].items())
        out.print(f"held out ({t['held_out_vignettes']} vignettes, {t['held_out']:.0%} of each taxon): top-1 "
                  f"{m['top1']:.3f}, macro-F1 {m['macro_f1']:.3f}, group {m['group_accuracy']:.3f}, living "
                  f"{m['living_accuracy']:.3f}; by level: {levels}")
        out.print(f"per class and confusion figure: {report_dir}/")


@app.command()
def classify(folder: Path = typer.Argument(..., help="Vignettes: a folder of images, a folder per taxon, or an EcoTaxa "
                                                     "export (.zip or folder)."),
             model: Optional[Path] = typer.Option(None, "--model", "-m", help="A classifier from `train-classifier "
                                                  "--library`, or a checkpoint with a classifier (default: the bundled "
                                                  "ISIIS classifier of the 121 NDSB taxa)."),
             output: Path = typer.Option(Path("predictions.csv"), "-o", "--output", help="CSV: path, taxon, group, "
                                         "probability, living (and true_taxon for a labelled library)."),
             pixel_size: Optional[float] = typer.Option(None, "--pixel-size", min=1e-3, help="µm per pixel of the "
                                                        "vignettes (default: the classifier's training scale)."),
             all_statuses: bool = typer.Option(False, "--all-statuses", help="EcoTaxa: every row, not only validated ones."),
             split: str = typer.Option("all", help="all, train or held_out: that part of a labelled library, split as "
                                       "`train-classifier --library` splits it (with --held-out and --split-seed)."),
             held_out: float = typer.Option(0.2, "--held-out", min=0.0, max=0.9, help="With --split: the share of "
                                            "each taxon held out."),
             split_seed: int = typer.Option(0, "--split-seed", min=0, help="With --split: the seed of the split."),
             tta: bool = typer.Option(False, "--tta", help="Average each vignette's 8 flips and quarter turns: about "
                                      "a point more top-1, 8 times the time.")) -> None:
    """Name every vignette of a folder: its taxon, reporting group, probability and whether it is living."""
    from .classify import classification_report, classify_library, write_predictions
    from .library import LibraryError, open_library
    from .model.checkpoint import CheckpointError
    from .model.taxa_classifier import BUNDLED_CLASSIFIER, load_taxa_classifier

    path = model or BUNDLED_CLASSIFIER
    try:
        clf = load_taxa_classifier(path)
        lib = open_library(folder, None if all_statuses else ("validated",), pixel_size, unlabelled=True)
    except (CheckpointError, LibraryError) as e:
        _fail(str(e))
    if split not in ("all", "train", "held_out"):
        _fail(f"--split {split!r}: choose all, train or held_out")
    with lib:
        items = None if split == "all" else lib.split(held_out, split_seed)[0 if split == "train" else 1]
        preds = classify_library(clf, lib, items, views=8 if tta else 1)
    labelled = [p for p in preds if p.true_taxon]
    write_predictions(preds, output, with_truth=bool(labelled))
    skipped = sum(lib.skipped.values())
    out.print(f"wrote {output}: {len(preds)} vignettes classified" + (f", {skipped} left out" if skipped else ""))
    taxa = {t.name: t for t in clf.taxa}
    known = [p for p in labelled if p.true_taxon in taxa]
    if labelled and len(known) < len(labelled):
        out.print(f"{len(labelled) - len(known)} labelled vignettes are of taxa the classifier does not know (not scored)")
    if known:
        r = classification_report([p.true_taxon for p in known], [p.taxon for p in known], taxa)
        out.print(f"against the library's labels ({len(known)} vignettes): top-1 {r['top1']:.3f}, macro-F1 "
                  f"{r['macro_f1']:.3f}, group {r['group_accuracy']:.3f}, living {r['living_accuracy']:.3f}")


@app.command()
def demo(out_dir: Path = typer.Argument(Path("demo_out"), help="Where to write the demo cruise and results."),
         frames: int = typer.Option(12, min=1), seed: int = typer.Option(20261125)) -> None:
    """The whole chain on a small synthetic cruise: infer, score, CTD join, profile, EcoTaxa export."""
    from .concentration import concentrations
    from .ctd import join_ctd, read_ctd
    from .eval_stream import stream_run_coco, stream_truth_coco
    from .evaluate import object_match
    from .export.ecotaxa import export_ecotaxa
    from .plots import profile_figure, track_map
    from .runs import is_line_stream, read_frames, read_manifest, read_objects, rewrite_shards
    from .synth import make_cruise

    cruise, results = out_dir / "cruise", out_dir / "results"
    if not (cruise / "ground_truth.coco.json").exists():
        # 1024² frames 25 s apart: a dozen frames span most of a tow-yo, so the profile has depths
        out.print(str(make_cruise(cruise, frames, seed, size=(1024, 1024), frame_rate_hz=0.04)))
    infer(cruise, output=results, model=None, config=None, device="auto", keep_non_plankton=False,
          force=True, limit=None, threads=None, engine=None, address=None, decode_workers=None, stream=None,
          segment_frames=None, verbose=False)
    stream_truth = cruise / "ground_truth_stream.json"
    if is_line_stream(read_manifest(results)) and stream_truth.exists():
        # a line stream: each organism once, whole, as the run wrote it
        truth = json.loads(stream_truth.read_text())
        scores = object_match(stream_truth_coco(truth), stream_run_coco(results, truth))
    else:
        scores = object_match(cruise / "ground_truth.coco.json", results / "predictions.coco.json")
    out.print(f"against the ground truth (mask IoU ≥ 0.5): plankton recall {scores['plankton_recall']:.3f}, "
              f"plankton precision {scores['plankton_precision']:.3f} "
              f"({scores['gt_plankton']} organisms, {scores['pred_plankton']} written as plankton)")
    record = read_ctd(cruise / "ctd.csv")
    for kind in ("objects", "frames"):
        rewrite_shards(results, kind, lambda df: join_ctd(df, record))
    objects, frames_t = read_objects(results), read_frames(results)
    volume, source = _volume_per_frame(read_manifest(results), None, results)  # the synthetic cruise states it
    caption = f"{volume:g} L imaged per frame ({source})"
    conc = concentrations(objects, frames_t, volume, depth_bin_m=10.0)
    (results / "profile").mkdir(exist_ok=True)
    conc.to_csv(results / "profile" / "concentrations.csv", index=False)
    profile_figure(conc, results / "profile" / "profile.png", title=f"Plankton concentration per depth bin\n{caption}")
    track_map(frames_t, objects, results / "profile" / "track.png", volume_per_frame_l=volume, distance_bin_km=0.1,
              title=f"Plankton concentration along the track\n{caption}")
    zips = export_ecotaxa(results, sample_by="all")
    out.print(f"CTD joined; profile in {results / 'profile'}, with {caption}; "
              f"EcoTaxa zip {zips[0] if zips else '(no objects)'}")


@app.command("eval")
def evaluate_cmd(gt: Path = typer.Argument(..., help="Ground-truth COCO file of full frames, or a line-scan cruise's "
                                                     "ground_truth_stream.json (each organism once, whole)."),
                 pred: Optional[Path] = typer.Argument(None, help="Predictions (COCO), or with a stream ground truth the "
                                                              "output folder of an `infer --stream` run; omit to run "
                                                              "--model on the frames."),
                 model: Optional[Path] = typer.Option(None, "--model", "-m", help="Checkpoint to run on the GT frames."),
                 iou: float = typer.Option(0.5, min=0.05, max=1.0, help="Mask IoU that makes a match."),
                 min_score: float = typer.Option(0.0, min=0.0, max=1.0, help="Object-level figures count predictions from this score."),
                 target_precision: Optional[float] = typer.Option(
                     None, min=0.0, max=1.0, help="Choose per-class score thresholds reaching this precision."),
                 write_model: Optional[Path] = typer.Option(None, help="With --target-precision: the checkpoint with those thresholds."),
                 out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Write eval.json, confusion.csv/.png, pr_curves.png here."),
                 coco: bool = typer.Option(True, help="Also COCOeval AP for boxes and masks."),
                 max_dets: int = typer.Option(10000, min=100, help="COCOeval's largest detections per frame and class."),
                 json_out: Optional[Path] = typer.Option(None, "--json", help="Save the figures as JSON.")) -> None:
    """Object-level recall/precision/F1 (plankton vs non-plankton, per class), confusion, PR curves, COCO AP."""
    import tempfile

    from .eval_report import coco_table, format_table
    from .eval_stream import is_stream_truth, stream_run_coco, stream_truth_coco
    from .evaluate import evaluate, to_json
    from .io.atomic import write_json
    from .model.checkpoint import DEMO_MODEL, CheckpointError, load_checkpoint

    if not gt.is_file():
        _fail(f"{gt}: ground-truth file not found")
    if write_model is not None and target_precision is None:
        _fail("--write-model writes the thresholds chosen for --target-precision: give --target-precision too")
    try:
        truth = json.loads(gt.read_text())
    except (OSError, ValueError) as e:
        _fail(f"{gt}: not a JSON ground truth ({type(e).__name__})")
    stream = is_stream_truth(truth)
    if stream and target_precision is not None:
        _fail(f"{gt}: thresholds are chosen on a frame-by-frame ground truth (ground_truth.coco.json), "
              "not on the stream one")
    if pred is not None and not (pred.is_dir() if stream else pred.is_file()):
        _fail(f"{pred}: no `segplank infer --stream` output folder there" if stream else
              f"{pred}: predictions file not found")
    if pred is None:
        model_path = model or DEMO_MODEL
        run_dir = Path(tempfile.mkdtemp(prefix="segplank_eval_"))
        low = run_dir / "low.yaml"
        # every candidate is written when thresholds are to be chosen; else the model's own thresholds apply
        low.write_text("filter: {score_threshold: 0.05}\n" if target_precision is not None else "{}\n")
        try:
            ckpt = load_checkpoint(model_path)
        except CheckpointError as e:
            _fail(str(e))
        if target_precision is not None:
            model_path = ckpt.with_thresholds(None).save(run_dir / "unthresholded.pt")
        infer(gt.parent, output=run_dir / "out", model=model_path, config=low, device="auto",
              keep_non_plankton=target_precision is not None, force=True, limit=None, threads=None, engine=None,
              address=None, decode_workers=None, stream=stream, segment_frames=None, verbose=False)  # as the truth counts
        pred = run_dir / "out" if stream else run_dir / "out" / "predictions.coco.json"
    gt_src, pred_src = gt, pred
    if stream:
        try:
            gt_src, pred_src = stream_truth_coco(truth), stream_run_coco(pred, truth)
        except FileNotFoundError as e:
            _fail(str(e))
    from .evaluate import EvalError

    try:
        res = evaluate(gt_src, pred_src, out_dir, iou, min_score=min_score, target_precision=target_precision,
                       iou_types=("bbox", "segm") if coco else (), max_dets=(1, 100, max_dets))
    except EvalError as e:
        _fail(f"{pred}: {e}")
    out.print(format_table(res))
    if "coco" in res:
        out.print(coco_table(res))
    o = res["objects"]
    out.print(f"plankton recall {o['plankton_recall']:.3f} ({o['gt_plankton']} organisms); "
              f"plankton precision {o['plankton_precision']:.3f} ({o['pred_plankton']} written as plankton)")
    if target_precision is not None:
        thr, at = res["thresholds"], res["at_thresholds"]
        out.print("per-class thresholds: " + ", ".join(f"{k} {v:.2f}" for k, v in thr.items()))
        out.print(f"with them: plankton recall {at['plankton_recall']:.3f}, precision {at['plankton_precision']:.3f}")
        if write_model:
            load_checkpoint(model or DEMO_MODEL).with_thresholds(thr).save(write_model)
            out.print(f"wrote {write_model}")
    if json_out:
        write_json(json_out, to_json(res))
    if out_dir:
        out.print(f"wrote {', '.join(Path(p).name for p in res['files'].values())} in {out_dir}")


@app.command()
def bench(output: Path = typer.Option(Path("bench.json"), "-o", "--output", help="JSON results."),
          model: Optional[Path] = typer.Option(None, "--model", "-m"),
          work: Optional[Path] = typer.Option(None, help="Folder for the bench cruises (kept between runs)."),
          sparse_frames: int = typer.Option(20, min=1), dense_frames: int = typer.Option(4, min=1),
          threads: int = typer.Option(2, min=1),
          memory: bool = typer.Option(False, help="Also 200- and 2,000-frame runs (512² sparse frames) and 50- and 500-frame "
                                                  "line-stream runs (384² mixed): peak memory must not grow."),
          device: str = typer.Option("auto", help="auto, cpu or cuda."),
          decode_workers: Optional[int] = typer.Option(None, min=0, help="Processes decoding frames ahead (default: "
                                                       "2 on CUDA, none on CPU)."),
          case: Optional[list[str]] = typer.Option(None, "--case", help="Run only this case (repeatable): sparse, "
                                                   "'sparse, no skip', mixed, dense.")) -> None:
    """Frames/s, detections/s, time per stage and peak memory on fixed synthetic cruises; stitcher scaling."""
    from .bench import run_bench, write_json
    from .model.checkpoint import DEMO_MODEL

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device {device}: use auto, cpu or cuda")
    try:
        result = run_bench(model or DEMO_MODEL, work, sparse_frames, dense_frames, threads,
                           memory_frames=(200, 2000) if memory else (), stream_frames=(50, 500) if memory else (),
                           device=device, decode_workers=decode_workers, cases=tuple(case) if case else None)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    write_json(result, output)
    t = Table(title=f"segplank bench ({result['machine']})")
    for col in ("case", "frames/s", "det/frame", "det/s", "tiles run", "recall", "peak MB", "detector", "classifier",
                "other"):
        t.add_column(col, justify="right")
    for name, r in result["cases"].items():
        share = r["stage_share"]
        nets = share.get("model", 0), share.get("classify", 0)
        t.add_row(name, f"{r['frames_per_s']:.2f}", f"{r['detections_per_frame']:.0f}", f"{r['detections_per_s']:.0f}",
                  f"{r['tiles_run']}/{r['tiles']}", f"{r['plankton_recall']:.3f}", f"{r['peak_rss_mb']:.0f}",
                  f"{nets[0]:.0%}", f"{nets[1]:.0%}", f"{1 - sum(nets):.0%}")
    out.print(t)
    s = Table(title="stitcher: seconds per frame against objects per frame")
    for col in ("objects", "detections in", "seconds", "µs per object"):
        s.add_column(col, justify="right")
    for r in result["stitch_scaling"]:
        s.add_row(str(r["objects"]), str(r["detections_in"]), f"{r['seconds']:.3f}", f"{r['us_per_object']:.0f}")
    out.print(s)
    out.print(f"wrote {output}")


@app.command("join-ctd")
def join_ctd_cmd(run_dir: Path = typer.Argument(..., help="Output folder of `segplank infer`."),
                 ctd_file: Path = typer.Argument(..., help="CTD record: Sea-Bird .cnv or CSV with a time column."),
                 tolerance: float = typer.Option(5.0, min=0, help="Seconds: objects further than this from any CTD sample get NaN."),
                 time_source: str = typer.Option("auto", help="For .cnv: auto, nmea or start_time (which header time starts the cast).")) -> None:
    """Add the CTD variables (ctd_*) to every object and processed frame, interpolated at their UTC time.

    A file without a CTD variable (a navigation file) or without a sample near the run's times is
    refused before anything is rewritten: its join would replace good ctd_* columns with wrong ones."""
    import pandas as pd

    from .ctd import CtdError, check_join, join_ctd, read_ctd
    from .io.atomic import write_json
    from .runs import RunFolderError, read_frames, read_manifest, read_objects, rewrite_shards

    if time_source not in ("auto", "nmea", "start_time"):
        _fail(f"--time-source {time_source!r}: choose auto, nmea or start_time")
    try:
        manifest = read_manifest(run_dir)
        record = read_ctd(ctd_file, time_source=time_source)
    except (RunFolderError, CtdError) as e:
        _fail(str(e))
    except FileNotFoundError:
        _fail(f"{ctd_file}: CTD file not found")
    for w in record.warnings:
        logging.getLogger("segplank").warning("%s: %s", ctd_file, w)

    def join(df):
        df = join_ctd(df.drop(columns=[c for c in df.columns if c.startswith("ctd_")]), record, tolerance_s=tolerance)
        return _fill_depth(df)

    if not manifest.get("complete", False):
        _fail(f"{run_dir}: the run is not finished (frames left to do); let `segplank infer` complete, then join")
    try:
        check_join(record, pd.concat([read_objects(run_dir, ["time"])["time"], read_frames(run_dir, ["time"])["time"]]),
                   tolerance_s=tolerance)
        n_obj = rewrite_shards(run_dir, "objects", join)
        n_frames = rewrite_shards(run_dir, "frames", join)
    except (RunFolderError, CtdError) as e:
        _fail(str(e))
    frames = read_frames(run_dir)
    added = sorted(c for c in frames.columns if c.startswith("ctd_"))
    missing = int(frames[added[0]].isna().sum()) if added else n_frames
    manifest["ctd_join"] = {"file": str(ctd_file), "time_source": record.time_source, "tolerance_s": tolerance,
                            "columns": added, "frames_without_ctd": missing}
    write_json(run_dir / "manifest.json", manifest)
    out.print(f"joined {', '.join(added) or 'nothing'} from {ctd_file} (times from {record.time_source}) to "
              f"{n_obj} objects and {n_frames} frames; {missing} frames had no CTD sample within {tolerance:g} s")


def _fill_depth(df):
    """Objects and frames without a depth (no CTD in the cruise folder at `infer` time) take the
    joined CTD's: its depth column, else its pressure through TEOS-10 at their latitude."""
    from .geo import pressure_to_depth

    if "depth_m" not in df.columns:
        return df
    missing = df["depth_m"].isna()
    if "ctd_depth_m" in df.columns:
        df.loc[missing, "depth_m"] = df.loc[missing, "ctd_depth_m"]
    elif "ctd_pressure_dbar" in df.columns:
        df.loc[missing, "depth_m"] = pressure_to_depth(df.loc[missing, "ctd_pressure_dbar"].to_numpy(),
                                                       df.loc[missing, "lat"].to_numpy())
    return df


def _volume_per_frame(manifest: dict, given: float | None, run_dir: Path) -> tuple[float, str]:
    """The litres per frame concentrations divide by, and where it comes from: never a guess,
    since every concentration scales with it (``given``: --volume-per-frame)."""
    stated = ((manifest.get("config") or {}).get("instrument") or {}).get("volume_per_frame_l")
    if given is not None:
        if given <= 0:
            _fail(f"--volume-per-frame {given:g}: give the litres imaged per frame, a positive number")
        if stated is not None and stated != given:
            console.print(f"[yellow]--volume-per-frame {given:g} L replaces the {stated:g} L the run's config states[/]",
                          highlight=False)
        return float(given), "--volume-per-frame"
    if stated is None:
        _fail(f"{run_dir}: no volume per frame stated: set instrument.volume_per_frame_l in the config or "
              "cruise.yaml, or pass --volume-per-frame L")
    return float(stated), "instrument.volume_per_frame_l of the run"


@app.command()
def profile(run_dir: Path = typer.Argument(..., help="Output folder of `segplank infer` (after `join-ctd` for CTD means)."),
            depth_bin: float = typer.Option(5.0, min=0.1, help="Depth bin, metres."),
            distance_bin: Optional[float] = typer.Option(None, min=0.001, help="Along-track distance bin, km: adds a section GeoTIFF per taxon."),
            taxa: str = typer.Option("plankton", help="plankton or all (non-plankton rows are only there with --keep-non-plankton)."),
            output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder (default RUN_DIR/profile)."),
            volume_per_frame: Optional[float] = typer.Option(
                None, "--volume-per-frame", help="Litres of water imaged per frame (default: the run's "
                "instrument.volume_per_frame_l; with neither, no concentrations).")) -> None:
    """Concentrations (individuals per m³) per taxon and depth bin, with CTD means; profile, track map and section."""
    from .concentration import concentrations
    from .plots import profile_figure, section_geotiff, track_map
    from .runs import RunFolderError, read_frames, read_manifest, read_objects

    try:
        manifest = read_manifest(run_dir)
        objects, frames = read_objects(run_dir), read_frames(run_dir)
    except RunFolderError as e:
        _fail(str(e))
    if taxa not in ("plankton", "all"):
        _fail(f"--taxa {taxa!r}: choose plankton or all")
    volume, source = _volume_per_frame(manifest, volume_per_frame, run_dir)
    caption = f"{volume:g} L imaged per frame ({source})"
    dest = output or run_dir / "profile"
    dest.mkdir(parents=True, exist_ok=True)
    conc = concentrations(objects, frames, volume, depth_bin_m=depth_bin, taxa=taxa)
    if conc.empty:
        _fail(f"{run_dir}: no processed frame has a depth, so there is nothing to bin; put the CTD "
              "(ctd*.csv or *.cnv) in the cruise folder before `infer`, or run `segplank join-ctd` first")
    conc.to_csv(dest / "concentrations.csv", index=False)
    conc.to_parquet(dest / "concentrations.parquet", index=False)
    profile_figure(conc, dest / "profile.png", title=f"Plankton concentration per depth bin\n{caption}")
    written = ["concentrations.csv", "concentrations.parquet", "profile.png"]
    if frames[["lat", "lon"]].notna().all(axis=1).any():
        track_map(frames, objects, dest / "track.png", volume_per_frame_l=volume, distance_bin_km=distance_bin or 1.0,
                  title=f"Plankton concentration along the track\n{caption}")
        written.append("track.png")
    else:
        console.print("no frame has a position (no navigation record): no track map")
    if distance_bin:
        section = concentrations(objects, frames, volume, depth_bin_m=depth_bin, distance_bin_m=distance_bin * 1000,
                                 taxa=taxa)
        for taxon in sorted(section["taxon"].unique()):
            name = "section_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(taxon)) + ".tif"
            section_geotiff(section, dest / name, taxon=taxon)
            written.append(name)
    ex = conc.attrs.get("excluded_frames", 0)
    out.print(f"wrote {', '.join(written)} in {dest}, with {caption}"
              + (f"; {ex} frames without a depth were left out" if ex else ""))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="Output folder of `segplank infer`."),
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="HTML file (default RUN_DIR/report.html)."),
           cruise_dir: Optional[Path] = typer.Option(None, help="Where the frames are, if the cruise folder moved since `infer`."),
           per_taxon: int = typer.Option(8, min=1, help="Vignettes of the least and of the most confident objects per taxon.")) -> None:
    """One self-contained HTML page of a run, to look at before trusting it: summary, vignettes per taxon, figures, warnings."""
    from .report import write_report
    from .runs import RunFolderError

    try:
        path = write_report(run_dir, output, cruise_dir=cruise_dir, per_taxon=per_taxon)
    except RunFolderError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename or output}: cannot write the report ({e.strerror}); choose another -o")
    out.print(f"wrote {path}; open it in a browser (one file, images included)")


export_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Write a run's objects for other tools: EcoTaxa zips, COCO for annotation.")
app.add_typer(export_app, name="export")


@export_app.command("ecotaxa")
def export_ecotaxa_cmd(run_dir: Path = typer.Argument(..., help="Output folder of `segplank infer`."),
                       output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder for the zips (default RUN_DIR/ecotaxa)."),
                       sample_by: str = typer.Option("window", help="window (fixed UTC windows), cast (one per profile) or all."),
                       window_minutes: float = typer.Option(60.0, min=0.1),
                       all_objects: bool = typer.Option(False, "--all", help="Also non-plankton rows, when the run kept them."),
                       scale_bar_mm: Optional[float] = typer.Option(1.0, help="Scale bar on each vignette (mm); 0 for none."),
                       features: bool = typer.Option(True, help="Compute the ZooProcess features (needs the frames)."),
                       project: Optional[str] = typer.Option(None, help="Prefix of the sample ids (default: the cruise folder's name)."),
                       cruise_dir: Optional[Path] = typer.Option(None, help="Where the frames are, if the cruise folder moved since `infer`."),
                       check: bool = typer.Option(True, help="Validate each zip against EcoTaxa's import rules.")) -> None:
    """EcoTaxa import zips: ecotaxa_*.tsv (with its type row) and PNG vignettes, one per sample."""
    from .export.ecotaxa import export_ecotaxa
    from .export.ecotaxa_check import check_ecotaxa_zip
    from .runs import RunFolderError

    if sample_by not in ("window", "cast", "all"):
        _fail(f"--sample-by {sample_by!r}: choose window, cast or all")
    try:
        zips = export_ecotaxa(run_dir, output, sample_by=sample_by, window_minutes=window_minutes,
                              plankton_only=not all_objects, scale_bar_mm=scale_bar_mm or None, features=features,
                              project=project, cruise_dir=cruise_dir)
    except (RunFolderError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    bad = 0
    for z in zips:
        problems = check_ecotaxa_zip(z) if check else []
        bad += bool(problems)
        for p in problems:
            console.print(f"[red]{z.name}:[/] {p}")
    out.print(f"wrote {len(zips)} EcoTaxa zip(s) in {output or run_dir / 'ecotaxa'}"
              + ("" if not check else ("; all pass the import rules" if not bad else f"; {bad} with problems")))
    if bad:
        raise typer.Exit(1)


@export_app.command("coco")
def export_coco_cmd(run_dir: Path = typer.Argument(..., help="Output folder of `segplank infer`."),
                    output: Path = typer.Argument(..., help="Folder for images/ and annotations.coco.json."),
                    for_annotation: bool = typer.Option(False, "--for-annotation", help="Images plus editable polygons for CVAT / Label Studio."),
                    unit: str = typer.Option("frame", help="frame or tile: what one annotation image is."),
                    tile_size: int = typer.Option(1024, min=64, help="With --unit tile."),
                    uncertain_first: bool = typer.Option(False, help="Order images by model uncertainty, most uncertain first (active learning)."),
                    plankton_only: bool = typer.Option(False, help="Leave non-plankton predictions out."),
                    cruise_dir: Optional[Path] = typer.Option(None, help="Where the frames are, if the cruise folder moved since `infer`.")) -> None:
    """The run's predictions as a COCO set of images and polygons, to correct and feed back to `segplank train`."""
    from .annotate import AnnotationExportError, export_for_annotation
    from .runs import RunFolderError

    if not for_annotation:
        _fail(f"the run's COCO predictions are already in {run_dir / 'predictions.coco.json'}; "
              "add --for-annotation to write images and editable polygons")
    if unit not in ("frame", "tile"):
        _fail(f"--unit {unit!r}: choose frame or tile")
    try:
        path = export_for_annotation(run_dir, output, unit=unit, tile_size=tile_size, uncertain_first=uncertain_first,
                                     include_non_plankton=not plankton_only, cruise_dir=cruise_dir)
    except (AnnotationExportError, RunFolderError, FileNotFoundError) as e:
        _fail(str(e))
    out.print(f"wrote {path} and its images; correct it in CVAT or Label Studio, then `segplank train {path}`")


import_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Bring validations back from other tools (EcoTaxa).")
app.add_typer(import_app, name="import")


@import_app.command("ecotaxa")
def import_ecotaxa_cmd(export: Path = typer.Argument(..., help="EcoTaxa export (.tsv, or a .zip of them) of objects segplank wrote."),
                       output: Path = typer.Argument(..., help="Folder for train.coco.json and images/."),
                       run: list[Path] = typer.Option(..., "--run", help="Output folder(s) of the `segplank infer` runs the objects came from."),
                       cruise_dir: Optional[Path] = typer.Option(None, help="Where the frames are, if the cruise folder moved."),
                       drop_category: Optional[list[str]] = typer.Option(None, help="Validated categories to drop (replaces the default set).")) -> None:
    """A COCO training set from EcoTaxa validations: segplank's masks, the experts' classes."""
    from .import_ecotaxa import DROP_CATEGORIES, EcoTaxaImportError, import_ecotaxa
    from .runs import RunFolderError

    try:
        s = import_ecotaxa(export, output, run_dirs=run, cruise_dir=cruise_dir,
                           drop_categories=drop_category or DROP_CATEGORIES)
    except (EcoTaxaImportError, RunFolderError, FileNotFoundError) as e:
        _fail(str(e))
    out.print(f"{s.rows} rows: {s.validated} validated and kept, {s.not_validated} not validated, "
              f"{s.discarded} discarded, {s.unmatched} not found in the run(s); "
              f"{s.frames} frames, {s.ignore_regions} objects marked as ignore regions")
    if s.new_categories:
        out.print("new categories: " + ", ".join(s.new_categories))
    out.print(f"wrote {s.path}; train on it with `segplank train {s.path}`")


import_model_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                               help="Bring a model trained elsewhere in as a segplank checkpoint (detectron2).")
app.add_typer(import_model_app, name="import-model")


@import_model_app.command("detectron2")
def import_detectron2_cmd(weights: Path = typer.Argument(..., help="detectron2's model_final.pth, or a model zoo .pkl."),
                          output: Path = typer.Option(Path("model.pt"), "-o", "--output", help="The segplank checkpoint to write."),
                          config: Optional[Path] = typer.Option(None, "--config", help="The model's merged detectron2 config "
                                                                "(output/config.yaml): input format, pixel mean, anchors, "
                                                                "test thresholds (default: detectron2's defaults)."),
                          classes: Optional[str] = typer.Option(None, "--classes", help="Class names in the model's order, "
                                                                "comma-separated (detectron2's thing_classes); a one-class "
                                                                "model is 'plankton' without it."),
                          non_plankton: Optional[str] = typer.Option(None, "--non-plankton", help="Comma-separated classes "
                                                                     "that are not plankton (counted, not written)."),
                          tile_size: int = typer.Option(512, min=64, help="Tile size the model runs on (px).")) -> None:
    """A detectron2 Mask R-CNN (R50-FPN) as a segplank checkpoint that gives detectron2's detections."""
    from .model.checkpoint import CheckpointError
    from .model.detectron2 import import_detectron2

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
    try:
        ckpt, ignored = import_detectron2(weights, config, split(classes), split(non_plankton), tile_size)
    except CheckpointError as e:
        _fail(str(e))
    ckpt.save(output, half=False)  # fp32: the weights as detectron2 ran them
    out.print(f"wrote {output}: {len(ckpt.classes)} class(es) ({', '.join(ckpt.classes.names)}), every tensor of "
              f"{weights.name} used" + (f" but {len(ignored)}, ignored: {', '.join(ignored[:5])}" if ignored else ""))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: rerun the same command to resume")
        sys.exit(130)
