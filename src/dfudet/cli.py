"""The `dfudet` command: one small function per subcommand, wiring only (logic lives in the packages)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dfudet.errors import ConfigError, DfudetError

# Every other dfudet module is imported inside the command that uses it, on purpose: `dfudet --help` starts fast,
# config errors show before torch loads, and predict/serve never import Lightning (tests/test_import_isolation.py).


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless it has none, or the help already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text
                and "default:" not in text and action.option_strings):
            text += " (default: %(default)s)"
        return text


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    """The one pixel limit (width*height) of every command that decodes photos; checked from the header first."""
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="refuse images of more than N pixels (width*height), before decoding; default 50000000 "
                        "(50 MP) or env DFUDET_MAX_PIXELS; the same limit for import, prepare, evaluate, predict, "
                        "serve")


class _SubParser(argparse.ArgumentParser):
    """Parser of a subcommand: the same help formatter as the top-level parser unless one is given."""

    def __init__(self, **kwargs: Any) -> None:  # argparse's add_parser passes keywords only
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)


def _subparsers(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:
    return parser.add_subparsers(dest=dest, required=True, parser_class=_SubParser)


# ----------------------------------------------------------------------------------------------- data
def add_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operating-threshold", "--score-threshold", dest="operating_threshold", type=float,
                   metavar="T", help="score threshold for kept boxes; default: the model's operating threshold (chosen "
                   "on val during training). --score-threshold is the old name")


def add_model_options(p: argparse.ArgumentParser, checkpoint_help: str, onnx_help: str) -> None:
    """--checkpoint / --onnx / --model (one at most; none: the default shipped model)."""
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help=checkpoint_help)
    model.add_argument("--onnx", help=onnx_help)
    model.add_argument("--model", metavar="NAME",
                       help="a model shipped with dfudet (`dfudet models` lists them); default when none of "
                            "--checkpoint/--onnx/--model is given: the default shipped model")


def model_source(a: argparse.Namespace, runtime: str = "torch") -> tuple[str | None, str | None]:
    """(checkpoint, onnx) from the options; a shipped model (digest checked) when neither file is given.

    `runtime` (predict's --runtime) applies to a shipped model: "auto" runs it through ONNX Runtime when that can
    (onnxruntime and onnx installed, no --tta, no CUDA device asked for: measured 1.56x faster on CPU with the same
    detections, docs/model_card.md), exporting it once into dfudet's cache; "onnx" insists; "torch" never does.
    """
    if a.checkpoint or a.onnx:
        if runtime == "onnx" and a.checkpoint:
            raise ConfigError("--runtime onnx applies to the shipped models; for your own checkpoint run "
                              "`dfudet export --format onnx` and give --onnx MODEL.onnx")
        return a.checkpoint, a.onnx
    from dfudet.inference.zoo import MODEL_CARD, resolve

    model, path = resolve(a.model)
    onnx = _shipped_onnx(model, path, runtime, a) if runtime != "torch" else None
    how = f" through ONNX Runtime ({onnx}; --runtime torch for PyTorch)" if onnx else ""
    print(f"using the shipped model {model.name}{how} ({model.returns}; see {MODEL_CARD}); --checkpoint, --onnx or "
          "--model picks another", file=sys.stderr)
    return (None, onnx) if onnx else (str(path), None)


def _shipped_onnx(model: Any, path: Path, runtime: str, a: argparse.Namespace) -> str | None:
    """The cached ONNX export of a shipped model (exported on first use), or None to run it in PyTorch."""
    import importlib.util

    from dfudet.inference.onnx_predictor import metadata_path
    from dfudet.inference.zoo import onnx_cache_path

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if getattr(a, "tta", False) or missing:
        if runtime == "onnx":
            raise ConfigError("--runtime onnx needs " + (f"{' and '.join(missing)} (pip install 'dfudet[deploy]')"
                                                          if missing else "no --tta (the flip fusion uses torch)"))
        return None
    device = str(getattr(a, "device", "cpu") or "cpu").lower()
    if runtime == "onnx" and device not in ("cpu", "auto"):
        raise ConfigError(f"--runtime onnx runs on the CPU (ONNX Runtime's CPU provider); --device {device} asks for "
                          "another device: use --runtime torch there")
    if runtime == "auto" and device != "cpu":
        import torch  # only to ask for CUDA: a GPU runs the PyTorch model faster than ONNX Runtime on the CPU

        if device.startswith("cuda") or torch.cuda.is_available():
            return None
    out = onnx_cache_path(model)
    if out.is_file() and metadata_path(out).is_file():
        return str(out)
    print(f"exporting the shipped model {model.name} to ONNX once, into {out}", file=sys.stderr)
    try:
        from dfudet.export.onnx import export_into_cache

        return str(export_into_cache(path, out))
    except Exception as exc:  # any export failure: auto falls back to PyTorch, which needs none of it
        if runtime == "onnx":
            raise ConfigError(f"{out}: cannot export the shipped model to ONNX ({type(exc).__name__}: {exc}); set "
                              "DFUDET_CACHE_DIR to a writable folder, or use --runtime torch") from None
        print(f"could not export the model to {out} ({type(exc).__name__}: {exc}); running it in PyTorch (set "
              "DFUDET_CACHE_DIR to a writable folder for the faster ONNX Runtime path)", file=sys.stderr)
        return None


def cmd_data_import(a: argparse.Namespace) -> int:
    from dfudet.data.importers import ImportOptions, import_dataset

    opts = ImportOptions(
        min_area=a.min_area,
        negative_crops=a.negative_crops,
        crop_size=a.crop_size,
        crop_margin=a.crop_margin,
        val_fraction=a.val_fraction,
        test_fraction=a.test_fraction,
        seed=a.seed,
        patient_regex=a.patient_regex,
        patient_column=a.patient_column,
    )
    result = import_dataset(
        fmt=a.format,
        images=Path(a.images) if a.images else None,
        annotations=[Path(p) for p in a.annotations],
        healthy=[Path(p) for p in a.healthy],
        out=Path(a.out),
        skip_bad=a.skip_bad,
        options=opts,
    )
    print(result.summary_text())
    return 0


def cmd_data_prepare(a: argparse.Namespace) -> int:
    from dfudet.data.cache import prepare_cache

    manifest = prepare_cache(Path(a.dataset_dir), Path(a.out), img_size=a.img_size, jpeg_quality=a.jpeg_quality)
    print(f"LMDB cache written to {a.out}")
    for split, info in manifest["splits"].items():
        print(
            f"  {split:<6} {info['images']:>6} images  {info['ulcer_images']:>6} ulcer  "
            f"{info['healthy_images']:>6} healthy  {info['boxes']:>6} boxes"
        )
    print(f"  img_size={manifest['img_size']}  content_hash={manifest['content_hash'][:16]}")
    return 0


def cmd_data_verify(a: argparse.Namespace) -> int:
    from dfudet.data.cache import verify_cache

    r = verify_cache(Path(a.cache))
    print(f"{r['cache']}: {r['records']} record(s) checked, {len(r['damaged'])} damaged")
    if r["without_checksum"]:
        print(f"  {r['without_checksum']} record(s) were written before per-record checksums: only decoded, "
              "not compared (run `dfudet data prepare` again to add them)")
    for problem in r["damaged"]:
        print(f"  - {problem}")
    return 1 if r["damaged"] else 0


def cmd_data_demo(a: argparse.Namespace) -> int:
    from dfudet.data.demo import generate_demo

    info = generate_demo(Path(a.out), n=a.n, seed=a.seed, size=a.size)
    print(f"demo data written to {a.out}")
    for key, value in info.items():
        print(f"  {key}: {value}")
    return 0


def cmd_data_fuseg(a: argparse.Namespace) -> int:
    from dfudet.data.fuseg_source import build_fuseg

    print(build_fuseg(Path(a.source), Path(a.out)).summary_text())
    return 0


def cmd_data_shifted(a: argparse.Namespace) -> int:
    from dfudet.data.shifted import build_shifted

    s = build_shifted(Path(a.fuseg), Path(a.healthy), a.split, Path(a.out), seed=a.seed,
                      healthy_split=Path(a.healthy_split) if a.healthy_split else None)
    print(f"shifted {s['split']} set written to {a.out}: {s['images']} images, {s['wounds']} wounds "
          f"(pasted wounds on skin: {s['pasted_on_skin']} of {s['pasted_wounds']})")
    for shift, n in s["subsets"].items():
        print(f"  {shift:<7} {n['images']:>5} images  {n['wounds']:>5} wounds")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="import annotations, build LMDB caches, generate demo data, rebuild FUSeg")
    dsub = _subparsers(data, "data_cmd")

    p = dsub.add_parser("import", help="turn COCO/VOC/YOLO/DFUC CSV/masks + healthy folders into a dataset dir")
    from dfudet.data.importers import FORMATS

    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values()))
    p.add_argument("--images", help="folder of the images the annotations refer to")
    p.add_argument("--annotations", action="append", default=[], metavar="PATH",
                   help="annotation file or folder (repeatable; COCO/CSV file named train/val/test sets the split)")
    p.add_argument("--healthy", action="append", default=[], metavar="DIR",
                   help="folder of healthy-foot images (hard negatives; train/val/test subfolders set the split)")
    p.add_argument("--out", required=True, help="dataset dir to write")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad items and list them in the report instead of stopping")
    p.add_argument("--min-area", type=float, default=26.0, help="masks: drop components smaller than this many pixels")
    p.add_argument("--negative-crops", type=int, default=0, help="masks: hard-negative crops to cut per ulcer image")
    p.add_argument("--crop-size", type=int, default=256, help="masks: side of a hard-negative crop in pixels")
    p.add_argument("--crop-margin", type=int, default=32, help="masks: minimum distance of a crop from any mask pixel")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="seeded split: share of val (when the source has no split)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="seeded split: share of test")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--patient-regex", help="regex with one group extracting a patient id from the file name")
    p.add_argument("--patient-column", help="dfuc-csv: name of the column holding a patient id")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_data_import)

    p = dsub.add_parser("prepare", help="write a dataset dir into an LMDB cache (one per split)")
    p.add_argument("dataset_dir")
    p.add_argument("--out", required=True, help="cache dir to write (one LMDB env per split + manifest.json)")
    p.add_argument("--img-size", type=int, default=512, help="resize so the long side is at most this (0 = keep)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the cached images")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_data_prepare)

    p = dsub.add_parser("verify", help="check every record of an LMDB cache (checksums, index, images); exit 1 "
                                       "when any is damaged, listing them")
    p.add_argument("cache", help="cache dir written by `dfudet data prepare`")
    p.set_defaults(func=cmd_data_verify)

    p = dsub.add_parser("demo", help="generate synthetic feet with ulcer-like lesions and healthy feet (COCO)")
    p.add_argument("--out", required=True, help="folder to write (images/, healthy/, annotations/*.json)")
    p.add_argument("--n", type=int, default=300, help="number of images (about half ulcer, half healthy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (same seed, same photos)")
    p.add_argument("--size", type=int, default=320, help="image side in pixels")
    p.set_defaults(func=cmd_data_demo)

    p = dsub.add_parser("fuseg", help="rebuild the FUSeg train/val/test boxes (images, masks, COCO) from a clone of "
                                      "the public FUSeg repository")
    p.add_argument("source", help="clone of github.com/uwm-bigdata/wound-segmentation at commit 42a272d (or its "
                                  "'data/Foot Ulcer Segmentation Challenge' folder)")
    p.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_data_fuseg)

    p = dsub.add_parser("shifted", help="build a COCO set of photos unlike FUSeg's framing from one held-out split: "
                                        "wounds pasted on healthy feet, 320 px photos, colour casts")
    p.add_argument("--fuseg", required=True, help="FUSeg folder (images/<split>/, masks/<split>/)")
    p.add_argument("--healthy", required=True,
                   help="healthy-foot photos: a folder with val/ and test/ subfolders, or the photos' folder with "
                        "--healthy-split")
    p.add_argument("--healthy-split", metavar="CSV",
                   help="CSV (name, sha256, split) fixing the healthy split, e.g. configs/splits/healthy_feet.csv")
    p.add_argument("--split", required=True, choices=["val", "test"],
                   help="the held-out split whose material is used (and only it)")
    p.add_argument("--out", required=True,
                   help="folder to write (images/<split>/, annotations/<split>.json, subsets/, README.md); val and "
                        "test may share it")
    p.add_argument("--seed", type=int, default=0, help="seed of wound choice, positions and colour casts")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_data_shifted)


# ----------------------------------------------------------------------------------------------- train
def cmd_train(a: argparse.Namespace) -> int:
    from dfudet.config import load_config

    if a.require_improvement and not a.baseline:
        # without the untrained model's score there is nothing to beat: the gate would pass every run unseen
        raise ConfigError("--require-improvement needs --baseline (the untrained model's val score is what the kept "
                          "model must beat); add --baseline")
    overrides = list(a.overrides)
    if a.run_dir:
        overrides.append(f"run_dir={a.run_dir}")
    for flag, key in ((a.devices, "train.devices"), (a.num_nodes, "train.num_nodes"), (a.strategy, "train.strategy")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_config(a.config, overrides)  # config errors answer before torch and Lightning are imported
    from dfudet.engine.runner import run_training

    result = run_training(cfg, fresh=a.fresh, baseline=a.baseline)
    if a.require_improvement and result.get("learned") is False:
        return 3
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector; re-running the same command resumes from last.ckpt")
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--run-dir", help="run directory (default: run_dir from the config)")
    p.add_argument("--fresh", action="store_true",
                   help="start over (previous checkpoints are moved aside, not deleted)")
    p.add_argument("--baseline", action="store_true",
                   help="also score the untrained model on val before training; saved as RUN_DIR/untrained_model.pth")
    p.add_argument("--require-improvement", action="store_true",
                   help="with --baseline: exit with status 3 when the kept model does not beat the untrained one "
                        "on val")
    p.add_argument("--devices", help="devices per node (e.g. 2, or auto)")
    p.add_argument("--num-nodes", type=int, help="machines taking part (DDP); default: train.num_nodes of the config")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp; default: train.strategy of the config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.01")
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(a: argparse.Namespace) -> int:
    from dfudet.commands.evaluate import run_evaluation

    checkpoint, onnx = model_source(a)
    m = run_evaluation(
        checkpoint=checkpoint, data=a.data, out=a.out, split=a.split, images=a.images,
        operating_threshold=a.operating_threshold, iou_threshold=a.iou_threshold, batch_size=a.batch_size,
        bootstrap=a.bootstrap, tta=a.tta, config=a.config, device=a.device, compare=a.compare, onnx=onnx,
    )
    at = m["at_threshold"]
    print(f"evaluated {m['counts']['images']} images of split {m['data']['split']!r} at score threshold "
          f"{m['operating_threshold']:.3f} ({m['threshold_source']})")
    print(f"  precision {at['precision']:.3f}  recall {at['recall']:.3f}  f1 {at['f1']:.3f}  "
          f"mean_iou {at['mean_iou']:.3f}  composite {at['composite']:.3f}  AP50 {m['coco']['AP50']:.3f}")
    print(f"  oracle threshold on this split: {m['oracle']['threshold']:.2f} (reference only)")
    print(f"report written to {Path(a.out) / 'report.md'}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a split: metrics.json, report.md, curves, galleries")
    add_model_options(p, "best_model.pth (or a Lightning .ckpt) from `dfudet train`",
                      "MODEL.onnx from `dfudet export` (scores the deployed model itself)")
    p.add_argument("--data", required=True, help="LMDB cache dir, dataset dir, or a COCO json (with --images)")
    p.add_argument("--split", default="test", help="split to evaluate (a COCO json is evaluated whole)")
    p.add_argument("--out", required=True, help="folder for metrics.json, report.md, PNGs and gallery/")
    p.add_argument("--images", help="image folder of a COCO json given as --data")
    add_threshold_option(p)
    p.add_argument("--iou-threshold", type=float, default=0.5, help="IoU a predicted box needs to count as found")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for 95%% CIs (0 = none)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: horizontal flip + weighted boxes fusion")
    p.add_argument("--config", help="fail unless the checkpoint is of the model this config describes")
    p.add_argument("--compare", metavar="CHECKPOINT",
                   help="also score this checkpoint (e.g. RUN_DIR/untrained_model.pth) on the same photos, side by "
                        "side")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_evaluate)


# ----------------------------------------------------------------------------------------------- tune
def cmd_tune(a: argparse.Namespace) -> int:
    from dfudet.commands.tune import run_tune

    sizes = [int(x) for x in a.sizes.split(",") if x.strip()] if a.sizes else None
    t = run_tune(a.checkpoint, a.data, out=a.out, sizes=sizes, split=a.split, device=a.device,
                 batch_size=a.batch_size, confidence=a.confidence)
    print(f"tuned on split {t['split']!r} (trained at {t['train_img_size']} px; another size needs a win in "
          f"{100 * t['confidence']:g}% of paired val resamples):")
    for r in t["trials"]:
        mark = "  <- kept" if r["img_size"] == t["chosen_img_size"] else ""
        print(f"  {r['img_size']:>5} px  threshold {r['operating_threshold']:.2f}  composite {r['composite']:.4f}  "
              f"P {r['precision']:.3f}  R {r['recall']:.3f}  IoU {r['mean_iou']:.3f}  AP50 {r['ap50']:.4f}  "
              f"{r['seconds']:.0f} s{_beats(r['p_better_than_train_size'])}{mark}")
    table = Path(t["tuned_checkpoint"]).with_suffix(".json")
    print(f"tuned checkpoint written to {t['tuned_checkpoint']} (table: {table})")
    return 0


def _beats(p: float | None) -> str:
    return "" if p is None else f"  wins {100 * p:.1f}%"


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="choose the inference input size and its threshold on val; writes tuned_model.pth")
    p.add_argument("--checkpoint", required=True, help="best_model.pth from `dfudet train` (it is not changed)")
    p.add_argument("--data", required=True, help="the run's LMDB cache dir or dataset dir")
    p.add_argument("--sizes", help="input sides to try, e.g. 512,576,640 (default: train.tune_img_sizes of the "
                                   "checkpoint's config); the training size is always tried")
    p.add_argument("--split", help="split to tune on (default: the config's val split; the test split is refused)")
    p.add_argument("--out", help="tuned checkpoint (default: tuned_model.pth next to --checkpoint) and its .json table")
    p.add_argument("--confidence", type=float, help="share of paired val resamples in which another size must beat the "
                                                    "training size to be kept (default: train.tune_confidence, 0.95; "
                                                    "0: the best point estimate)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.set_defaults(func=cmd_tune)


# ----------------------------------------------------------------------------------------------- predict
def cmd_predict(a: argparse.Namespace) -> int:
    from dfudet.commands.predict import run_predict

    if not a.inputs and not a.photos:
        raise ConfigError("give image files or folders to predict, or a photo list with --photos LIST.csv")
    checkpoint, onnx = model_source(a, a.runtime)
    s = run_predict(a.inputs, checkpoint=checkpoint, out=a.out, operating_threshold=a.operating_threshold, tta=a.tta,
                    batch_size=a.batch_size, device=a.device, onnx=onnx, mm_per_px=a.mm_per_px,
                    photo_list=a.photos, card_bar_mm=a.card_bar_mm)
    print(f"{s['images']} image(s) predicted, {s['boxes']} box(es) at threshold {s['threshold']:.3f}, "
          f"{s['skipped']} skipped; outputs in {s['out']}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect ulcers in image files/folders: predictions.json/.csv + annotated copies")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER",
                   help="image files and folders (searched recursively for JPEG/PNG/WebP/BMP/TIFF/GIF; every "
                        "other file is listed as skipped with the reason)")
    p.add_argument("--photos", metavar="LIST.csv",
                   help="a CSV of photos (column 'photo', paths relative to the CSV) with an optional 'scale' column "
                        "(mm per pixel: 0.2, '0.2 mm/px' or '5 px/mm') for wound areas in mm² (outline models)")
    p.add_argument("--mm-per-px", type=float, default=None,
                   help="outline models: the photos' scale in millimetres per pixel, for areas in mm² (no scale: "
                        "pixels only; a --photos scale wins for its photo)")
    _add_card_bar(p)
    add_model_options(p, "best_model.pth or a Lightning .ckpt (PyTorch)",
                      "MODEL.onnx from `dfudet export` (onnxruntime, no PyTorch needed)")
    p.add_argument("--out", required=True, help="folder for predictions.json/.csv and annotated copies")
    add_threshold_option(p)
    p.add_argument("--tta", action="store_true", help="horizontal flip + weighted boxes fusion")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                   help="for a shipped model: auto (default) runs it through ONNX Runtime on a CPU when onnxruntime "
                        "is installed (exported once into $DFUDET_CACHE_DIR or ~/.cache/dfudet; same detections, "
                        "faster), torch always uses PyTorch, onnx insists on ONNX Runtime")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_predict)


# ----------------------------------------------------------------------------------------------- track
def cmd_track(a: argparse.Namespace) -> int:
    from dfudet.commands.track import run_track

    checkpoint, onnx = model_source(a)
    s = run_track(a.visits, out=a.out, checkpoint=checkpoint, onnx=onnx, mm_per_px=a.mm_per_px,
                  min_reduction=a.min_reduction, window_days=a.window_days,
                  tolerance_days=a.window_tolerance_days, operating_threshold=a.operating_threshold, device=a.device,
                  card_bar_mm=a.card_bar_mm)
    f = s["flags"]
    print(f"{s['patients']} patient(s), {s['visits']} visit(s) measured, {s['problems']} row(s) not measured "
          f"(problems.csv); on_track {f['on_track']}, not_on_track {f['not_on_track']}, insufficient_data "
          f"{f['insufficient_data']}; outputs in {s['out']}")
    if s["pixels_only"]:
        print(f"note: {s['pixels_only']} patient(s) compared in pixels (a scale is missing for some or all of their "
              f"photos; see summary.md)")
    return 0


def _add_track(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="per-patient healing timeline of wound area from visit photos (outline models)")
    p.add_argument("visits", metavar="VISITS.csv",
                   help="columns patient, date (YYYY-MM-DD), photo (relative to the CSV's folder), optional scale "
                        "(mm per pixel: '0.2', '0.2 mm/px' or '5 px/mm')")
    add_model_options(p, "best_model.pth of an outline model, e.g. maskrcnn_efficientnet",
                      "MODEL.onnx of an outline model from `dfudet export`")
    p.add_argument("--out", required=True,
                   help="folder for patients/<id>/area.csv + area.png, summary.csv, summary.md, problems.csv")
    p.add_argument("--mm-per-px", type=float, default=None,
                   help="scale of photos without their own 'scale' (no scale: the calibration card in the photo, "
                        "else areas in pixels only)")
    _add_card_bar(p)
    p.add_argument("--min-reduction", type=float, default=0.5,
                   help="R: area reduction (1 - area / first visit's area) a patient must reach by day W to be "
                        "on_track")
    p.add_argument("--window-days", type=int, default=28,
                   help="W: the reduction is measured at the visit nearest to day W (days since the first visit) "
                        "among visits on days W-T to W+T (ties: the earlier visit; day-0 visits never count); "
                        "on_track if it is >= R, else not_on_track. No visit there: insufficient_data if a later "
                        "visit exists; if the series ends before day W-T, on_track when a visit already shows >= R "
                        "(reached early), else insufficient_data (day W not reached yet); insufficient_data also when "
                        "the first visit's area is 0")
    p.add_argument("--window-tolerance-days", type=int, default=7,
                   help="T (0 <= T < W): how many days before or after day W a visit may be to measure the "
                        "reduction by day W")
    add_threshold_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    _add_max_pixels(p)
    p.set_defaults(func=cmd_track)


# ----------------------------------------------------------------------------------------------- marker
def _add_card_bar(p: argparse.ArgumentParser) -> None:
    p.add_argument("--card-bar-mm", type=float, metavar="MM",
                   help="the calibration card's printed 50 mm scale bar as you measured it with a ruler: a card "
                        "printed at the wrong size (off by over 1 mm) is refused (`dfudet marker`)")


def cmd_marker(a: argparse.Namespace) -> int:
    from dfudet.marker.card import CARD_MM, write_card

    for out in [a.out, a.png]:
        if out:
            print(f"card written to {write_card(out)} ({CARD_MM[0]:g} x {CARD_MM[1]:g} mm; print at 100% / actual "
                  "size and check that the bar measures 50 mm)")
    return 0


def _add_marker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("marker", help="write the printable calibration card (PDF or PNG) for wound areas in mm²")
    p.add_argument("--out", required=True, help="file to write: .pdf (exact physical size) or .png (600 dpi)")
    p.add_argument("--png", help="also write a 600 dpi PNG here")
    p.set_defaults(func=cmd_marker)


# ----------------------------------------------------------------------------------------------- export
def cmd_export(a: argparse.Namespace) -> int:
    if a.half and a.format != "pth":
        raise ConfigError("--half applies to --format pth (an ONNX export computes in float32)")
    if a.format == "pth":
        from dfudet.export.slim import export_slim

        info = export_slim(a.checkpoint, a.out, half=a.half)
        print(f"deployable checkpoint written to {info['out']} ({info['bytes_out'] / 1e6:.1f} MB, from "
              f"{info['bytes_in'] / 1e6:.1f} MB: no optimizer state, weights stored as {info['storage_dtype']}); "
              "predict, evaluate, export and serve read it")
        return 0
    from dfudet.export.onnx import export_onnx, metadata_path

    meta = export_onnx(a.checkpoint, a.out, opset=a.opset)
    print(f"ONNX model written to {a.out} (opset {meta['opset']}, input {meta['input']['shape']})")
    print(f"metadata written to {metadata_path(a.out)} (operating threshold {meta['operating_threshold']:.3f})")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (+ MODEL.json) for onnxruntime without PyTorch, "
                                      "or to a deployable .pth without optimizer state")
    p.add_argument("--checkpoint", required=True, help="best_model.pth (or a Lightning .ckpt) from `dfudet train`")
    p.add_argument("--format", default="onnx", choices=["onnx", "pth"],
                   help="onnx: MODEL.onnx + MODEL.json; pth: the checkpoint without optimizer state (ship this one)")
    p.add_argument("--out", required=True, help="file to write (onnx: MODEL.json is written beside it)")
    p.add_argument("--half", action="store_true",
                   help="pth: store the weights as float16 (half the size; computed in float32 when loaded)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (11..21)")
    p.set_defaults(func=cmd_export)


# ----------------------------------------------------------------------------------------------- serve
def cmd_serve(a: argparse.Namespace) -> int:
    from dfudet.serve.app import read_token, serve

    if a.token:
        print("warning: --token is visible to every user of this machine (ps, /proc); use --token-file FILE or "
              "the DFUDET_TOKEN environment variable", file=sys.stderr)
    token = a.token or read_token(a.token_file)
    checkpoint, onnx = model_source(a)
    serve(checkpoint=checkpoint, onnx=onnx, host=a.host, port=a.port, token=token,
          max_upload_mb=a.max_upload_mb, max_pixels=a.max_pixels, device=a.device,
          operating_threshold=a.operating_threshold,
          pixels_in_flight=a.pixels_in_flight, busy_timeout=a.busy_timeout, body_timeout=a.body_timeout,
          max_connections=a.max_connections)
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web page + JSON API (POST /v1/detect) for one model, on 127.0.0.1 by default")
    add_model_options(p, "best_model.pth (PyTorch)",
                      "MODEL.onnx written by `dfudet export` (onnxruntime, no PyTorch needed)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token-file", metavar="FILE",
                      help="require the API token in FILE's first line (Authorization: Bearer T); default: env "
                           "DFUDET_TOKEN, else no token")
    auth.add_argument("--token", help="the token itself (discouraged: visible to every user in `ps`)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (413 above)")
    _add_max_pixels(p)
    p.add_argument("--pixels-in-flight", type=int, metavar="N",
                   help="memory bound: decoded pixels of all requests at once (default 2 x --max-pixels); "
                        "requests over it wait, then get 503 + Retry-After")
    p.add_argument("--busy-timeout", type=float, default=30.0,
                   help="seconds a request waits for room in --pixels-in-flight before 503")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds an upload may take to arrive (408 after; stops half-sent uploads holding memory)")
    p.add_argument("--max-connections", type=int, default=32, help="open connections at once (503 above)")
    add_threshold_option(p)
    p.add_argument("--device", default="cpu", help="--checkpoint only: cpu, cuda, cuda:N or auto")
    p.set_defaults(func=cmd_serve)


# ----------------------------------------------------------------------------------------------- models
def cmd_models(a: argparse.Namespace) -> int:
    from dfudet.inference.zoo import available, describe, resolve

    models = available()
    if not models:
        print("no shipped model is installed")
        return 0
    for m in models:
        if a.check:
            resolve(m.name)  # raises, naming the file, when it is missing or damaged
        print(describe(m) + ("\n  digest check : OK" if a.check else ""))
        print()
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models shipped with dfudet (used when no --checkpoint is given)")
    p.add_argument("--check", action="store_true", help="also check each file against its SHA-256")
    p.set_defaults(func=cmd_models)


# ----------------------------------------------------------------------------------------------- main
_EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_evaluate, _add_tune, _add_predict, _add_track, _add_export, _add_serve, _add_models,
    _add_marker,
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands registered by each layer's `add_*` function)."""
    parser = argparse.ArgumentParser(prog="dfudet",
                                     description="Diabetic foot ulcer detection: data, train, evaluate, deploy.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dfudet {__import__('dfudet').__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = _subparsers(parser, "cmd")
    _add_data(sub)
    for add in _EXTRA_PARSERS:
        add(sub)
    return parser


def user_message(exc: DfudetError) -> str:
    """The error's own message, also when it crossed a DataLoader worker (torch re-raises it wrapped in a traceback)."""
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = f"{type(exc).__module__}.{type(exc).__name__}: "
        if name in text:
            return text.rsplit(name, 1)[1].strip()
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors are printed without a stack trace (unless --debug) and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "max_pixels", None) is not None:
            from dfudet.data.checks import set_max_pixels

            set_max_pixels(args.max_pixels)
        return int(args.func(args) or 0)
    except DfudetError as exc:
        if args.debug:
            raise
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
