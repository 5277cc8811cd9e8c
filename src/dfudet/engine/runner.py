"""`dfudet train`: build everything from the config, resume from last.ckpt by itself, print header and summary."""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from pydantic import ValidationError

from dfudet.checkpoint import atomic_torch_save, load_for_inference
from dfudet.config import AnchorsConfig, Config, Precision, save_config
from dfudet.engine.callbacks import (
    BEST_NAME,
    CompositeCheckpoint,
    EpochSummary,
    LastCheckpoint,
    PlainProgress,
    best_payload,
    quiet_third_party,
)
from dfudet.engine.checkpoint_io import AtomicCheckpointIO
from dfudet.engine.datamodule import DetectionDataModule
from dfudet.engine.ema import ValidatedEMA
from dfudet.engine.host_memory import keep_freed_memory
from dfudet.engine.module import DetectorModule
from dfudet.errors import ConfigError
from dfudet.identity import describe
from dfudet.metrics.scores import ValidationScores
from dfudet.models.anchors import propose_anchor_sizes, propose_aspect_ratios
from dfudet.models.factory import get_spec, model_identity

log = logging.getLogger("dfudet")
LAST_NAME = "last.ckpt"
UNTRAINED_NAME = "untrained_model.pth"  # written by --baseline


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)


def setup_logging(run_dir: Path) -> Path:
    """Log to stdout and to a timestamped text file in the run dir (rank 0 only writes the file)."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(stream)
    log.propagate = False
    path = run_dir / f"train-{time.strftime('%Y%m%d-%H%M%S')}{'' if _rank() == 0 else f'-rank{_rank()}'}.log"
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(fmt)
    log.addHandler(fh)
    return path


def teardown_logging() -> None:
    """Detach and close what setup_logging attached, so a process that trains (a test session, a notebook, a sweep)
    does not keep writing to the finished run's log file, or to a stdout that has since been replaced or closed."""
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = True


def _archive_previous(run_dir: Path) -> Path | None:
    """--fresh: move the previous run's checkpoints aside (never deleted) so the new run starts clean."""
    old = [p for p in (run_dir / LAST_NAME, run_dir / BEST_NAME, run_dir / UNTRAINED_NAME, run_dir / "metrics.csv",
                       run_dir / "curves.png")
           if p.exists()]
    if not old:
        return None
    dest = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in old:
        p.rename(dest / p.name)
    return dest


# what an atomic write killed half-way leaves behind (utils.atomic_write_with: ".NAME.<random>.tmp")
_RUN_FILES = (LAST_NAME, BEST_NAME, UNTRAINED_NAME, "metrics.csv", "curves.png", "config.yaml")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove temp files of this program's atomic writes that a killed run left in its run dir (with a log line)."""
    stale = [p for name in _RUN_FILES for p in run_dir.glob(f".{name}.*.tmp") if p.is_file()]
    for p in stale:
        size = p.stat().st_size
        p.unlink(missing_ok=True)
        log.info("removed %s (%.1f MB), left by an interrupted write", p, size / 1e6)
    return stale


# model settings outside the identity that change the weights' shapes: a resume with another value cannot load them
_SHAPE_KEYS = ("fpn_channels", "dense_head.convs", "mask_head.channels", "mask_head.convs", "rcnn.box_head_size")


def saved_run_config(run_dir: Path, cfg: Config) -> tuple[Config, dict[str, Any]]:
    """The config a run dir was started with (its config.yaml, read once: typed and raw), refused when it is of
    another model than `cfg` (resuming would load weights that do not fit)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"{run_dir} holds {LAST_NAME} but no config.yaml to resume it with; use --fresh to start "
                          "over there or choose another --run-dir")
    try:
        raw = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        saved = Config.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{saved_path}: the run's saved config cannot be read ({str(exc)[:300]}); use --fresh to "
                          "start over there or choose another --run-dir") from None
    differences = model_identity(saved).diff(model_identity(cfg))
    differences.update({f"model.{k}": (_setting(saved, k), _setting(cfg, k)) for k in _SHAPE_KEYS
                        if _setting(saved, k) != _setting(cfg, k)})
    if differences:
        raise ConfigError(f"{run_dir} holds a run of another model; use --fresh to start over there or choose another "
                          "--run-dir:\n  " + describe(differences, "the run", "this config"))
    return saved, raw


def _setting(cfg: Config, dotted: str) -> Any:
    """The model setting at `a.b` (e.g. `dense_head.convs`) of a config."""
    value: Any = cfg.model
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def with_anchors(cfg: Config, sizes: list[list[float]] | None, aspect_ratios: list[float]) -> Config:
    """A new Config with model.anchors' sizes and aspect ratios set (auto kept), validated; the loaded config object
    is never edited."""
    anchors = cfg.model.anchors.model_validate({**cfg.model.anchors.model_dump(), "sizes": sizes,
                                                "aspect_ratios": aspect_ratios})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"anchors": anchors})})


def _auto_anchors(cfg: Config, dm: DetectionDataModule) -> tuple[list[list[float]], list[float]]:
    """Anchor sizes (one list per level) and aspect ratios proposed from the training boxes."""
    assert dm.train_ds is not None
    wh = []
    for i in range(len(dm.train_ds)):
        rec = dm.train_ds.record(i)
        scale = cfg.data.img_size / max(rec["width"], rec["height"])
        for b in rec["boxes"]:
            wh.append(((b[2] - b[0]) * scale, (b[3] - b[1]) * scale))
    arr = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    sizes = propose_anchor_sizes(arr, n_levels=get_spec(cfg.model.name).feature_levels)
    ratios = propose_aspect_ratios(arr, k=3)
    log.info("anchors proposed from %d training boxes: sizes %s, aspect ratios (h/w) %s", len(arr), sizes, ratios)
    return sizes, ratios


def check_masks(cfg: Config, dm: DetectionDataModule) -> None:
    """An outline model trains on wound masks: every ulcer image of train and val must have them (named if not)."""
    if not get_spec(cfg.model.name).masks:
        return
    for ds in (dm.train_ds, dm.val_ds):
        if ds is None:
            continue
        records = [ds.record(i) for i in range(len(ds))]
        missing = [r for r in records if r["boxes"] and not r["has_masks"]]
        if missing:
            names = ", ".join(str(r["path"]) for r in missing[:5])
            raise ConfigError(
                f"model.name={cfg.model.name} outlines ulcers and trains on wound masks, but {len(missing)} ulcer "
                f"image(s) of split {ds.split!r} in {cfg.data.cache or cfg.data.dataset} have boxes only "
                f"(first: {names}). Import masks (`dfudet data import --format masks`, or COCO segmentations), "
                "then `dfudet data prepare` again; or use a box model such as fasterrcnn_efficientnet")


def resolve_hardware(cfg: Config) -> tuple[str, Any, Precision]:
    """accelerator, devices and precision; CPU always runs fp32 (autocast is for CUDA)."""
    acc = cfg.train.accelerator
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("train.accelerator asks for a GPU but CUDA is not available here; use train.accelerator=cpu")
    precision: Precision = cfg.train.precision if acc in ("gpu", "cuda") else "32"
    devices: Any = cfg.train.devices
    if devices == "auto":
        devices = 1
    return acc, devices, precision


def header(cfg: Config, dm: DetectionDataModule, acc: str, devices: Any, precision: str, resume: Path | None) -> str:
    """The configuration header researchers print at the start of a run."""
    c = dm.counts()
    t, d, m = cfg.train, cfg.data, cfg.model
    w = t.composite_weights
    lines = [
        "=" * 78,
        "dfudet train",
        "  classes            : 2 (background, ulcer)",
        f"  model / backbone   : {m.name} / {model_identity(cfg).backbone}  (pretrained={m.pretrained}"
        + (f", trainable stages={m.trainable_backbone_layers}/5)" if m.pretrained else ")"),
        f"  img_size           : {d.img_size}  (backbone input {'channels-last' if m.channels_last else 'NCHW'})",
        ("  anchors            : none (anchor-free; level sizes = strides)" if get_spec(m.name).anchor_free else
         f"  anchors            : sizes={m.anchors.sizes or 'default'} ratios={m.anchors.aspect_ratios}"),
        f"  hard-negative share: {1 - d.positive_fraction:.0%} healthy / {d.positive_fraction:.0%} ulcer per batch "
        f"(BalancedBatchSampler, batch {d.batch_size})",
        f"  optimizer          : {t.optimizer} lr={t.lr}" + (f" momentum={t.momentum}" if t.optimizer == "sgd" else "")
        + f" weight_decay={t.weight_decay} warmup={t.warmup_steps} steps",
        f"  scheduler          : ReduceLROnPlateau(val loss) factor={t.plateau_factor} patience={t.plateau_patience}"
        + (f"; x{t.lr_drop_factor} at epochs {t.lr_drop_epochs}" if t.lr_drop_epochs else ""),
        f"  selection          : composite = {w.f1}*F1 + {w.iou}*IoU + {w.recall}*Recall + {w.precision}*Precision"
        + (f" @ score>={t.selection_threshold}" if t.select_at == "selection_threshold"
           else " @ the operating threshold swept on val") + f", IoU>={t.iou_threshold}",
        f"  early stopping     : composite, patience {t.early_stop_patience}; max epochs {t.epochs}",
        "  weights validated  : "
        + (f"EMA, decay min({t.ema_decay}, (1+n)/(10+n)) after n steps" if t.ema_decay else "as trained (no EMA)"),
        f"  device             : {acc} x{devices} nodes={t.num_nodes} strategy={t.strategy} precision={precision}",
        f"  data               : {cfg.data.cache or cfg.data.dataset}",
    ]
    for split, n in c.items():
        lines.append(f"    {split:<5}: {n['images']} images ({n['ulcer']} ulcer, {n['healthy']} healthy)")
    lines.append(f"  run dir            : {cfg.run_dir}" + (f"  (resuming from {resume})" if resume else ""))
    lines.append("=" * 78)
    return "\n".join(lines)


def validation_scores(module: DetectorModule, dm: DetectionDataModule, acc: str) -> ValidationScores:
    """Val metrics of a module as it is (used for the untrained baseline), without touching any run state."""
    trainer = L.Trainer(accelerator=acc, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=module.cfg.train.limit_val_batches)
    trainer.validate(module, datamodule=dm, verbose=False)
    if module.last_val is None:
        raise ConfigError("validation produced no scores (is the val split empty, or limit_val_batches 0?)")
    return module.last_val


def build_trainer(cfg: Config, acc: str, devices: Any, precision: Precision) -> L.Trainer:
    """The Lightning Trainer of a run: composite best-model export, early stopping, last.ckpt, atomic IO."""
    run_dir = Path(cfg.run_dir)
    best_cb = CompositeCheckpoint(run_dir)
    summary = EpochSummary(run_dir, best_cb)
    callbacks: list[L.Callback] = [
        best_cb,
        summary,
        EarlyStopping(monitor="val/composite", mode="max", patience=cfg.train.early_stop_patience,
                      check_on_train_epoch_end=False, check_finite=False),
        # after the callbacks above (they read the validated weights in on_validation_end), before last.ckpt
        *([ValidatedEMA(cfg.train.ema_decay)] if cfg.train.ema_decay else []),
        LastCheckpoint(run_dir, LAST_NAME, after_save=[summary.write_files]),  # metrics.csv after its checkpoint
        # a live bar on a terminal; plain lines in a log file or CI (tqdm's carriage returns make one huge line)
        TQDMProgressBar(refresh_rate=1) if sys.stdout.isatty() else PlainProgress(),
    ]
    t = cfg.train
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.epochs,
        max_time=timedelta(minutes=t.max_time_minutes) if t.max_time_minutes else None,
        accelerator=acc,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,
        callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""),
        gradient_clip_val=t.grad_clip,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # our BalancedBatchSampler and val sampler shard per rank themselves
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
    )


def run_training(cfg: Config, fresh: bool = False, baseline: bool = False) -> dict[str, Any]:
    """Train (or resume) the run in cfg.run_dir and return the kept model's scores."""
    if cfg.data.infer_img_size is not None:
        raise ConfigError(
            f"data.infer_img_size ({cfg.data.infer_img_size}) is not a training setting: training runs and validates "
            f"at data.img_size ({cfg.data.img_size}). List the sizes to try in train.tune_img_sizes and run `dfudet "
            "tune` after training: it chooses the size and its threshold on val. Remove data.infer_img_size")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = setup_logging(run_dir)
    try:
        return _train(cfg, run_dir, log_path, fresh, baseline)
    finally:
        teardown_logging()


def _train(cfg: Config, run_dir: Path, log_path: Path, fresh: bool, baseline: bool) -> dict[str, Any]:
    if _rank() == 0:
        remove_stale_temp_files(run_dir)
    if fresh and _rank() == 0:
        moved = _archive_previous(run_dir)
        if moved:
            log.info("--fresh: previous checkpoints moved to %s", moved)
    last = run_dir / LAST_NAME
    resume = last if last.is_file() and not fresh else None
    if resume:
        saved, saved_raw = saved_run_config(run_dir, cfg)
        # Keep what was derived at the start of the run (e.g. proposed anchors) so the weights fit the model.
        given, ran, default = cfg.model.anchors, saved.model.anchors, AnchorsConfig()
        if ((given.sizes is not None and given.sizes != ran.sizes)
                or given.aspect_ratios not in (ran.aspect_ratios, default.aspect_ratios)):
            log.warning("model.anchors given (sizes %s, aspect ratios %s) differ from the run's (sizes %s, aspect "
                        "ratios %s): the run's are kept, its weights were trained for them; use --fresh to train with "
                        "the given ones", given.sizes, given.aspect_ratios, ran.sizes, ran.aspect_ratios)
        cfg = with_anchors(cfg, ran.sizes, ran.aspect_ratios)
        if saved.train.lr_drop_epochs != cfg.train.lr_drop_epochs:
            log.warning("train.lr_drop_epochs changed on resume (%s -> %s): a drop is applied when its epoch starts, "
                        "so drops at epochs this run has already trained are not applied", saved.train.lr_drop_epochs,
                        cfg.train.lr_drop_epochs)
        # a run begun before model.channels_last existed trained in NCHW (its config.yaml has no such key)
        saved_layout = bool((saved_raw.get("model") or {}).get("channels_last", False))
        if saved_layout != cfg.model.channels_last:
            log.warning("model.channels_last changed on resume (%s -> %s): the weights carry over unchanged, but float "
                        "rounding differs from here on, so this run will not be bit-identical to one trained in a "
                        "single layout", saved_layout, cfg.model.channels_last)
        if saved.train.ema_decay != cfg.train.ema_decay:
            log.warning("train.ema_decay changed on resume (%s -> %s): %s", saved.train.ema_decay,
                        cfg.train.ema_decay,
                        "training continues from the raw weights, and validation scores them from now on"
                        if cfg.train.ema_decay is None else
                        "the average restarts from the weights of last.ckpt" if saved.train.ema_decay is None else
                        "the average continues with the new decay")
    quiet_third_party()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # Denormal floats (weights/activations decaying towards 0 in from-scratch training) make CPU kernels many times
    # slower; flushing them to zero costs no accuracy that matters here. No effect on CUDA.
    torch.set_flush_denormal(True)
    if cfg.train.keep_freed_memory and keep_freed_memory():
        log.info("host memory: freed blocks kept for reuse (glibc mallopt: no mmap, no trim); "
                 "train.keep_freed_memory=false gives glibc's defaults")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm = DetectionDataModule(cfg)
    dm.setup("fit")
    check_masks(cfg, dm)
    # anchor-free models refuse model.anchors.auto when they are built, with the reason
    if (cfg.model.anchors.auto and not cfg.model.anchors.sizes and not resume
            and not get_spec(cfg.model.name).anchor_free):
        cfg = with_anchors(cfg, *_auto_anchors(cfg, dm))
    acc, devices, precision = resolve_hardware(cfg)
    log.info(header(cfg, dm, acc, devices, precision, resume))
    log.info("log file: %s", log_path)

    module = DetectorModule(cfg)
    # the run log, beside every checkpoint's weights_source; a resume logs the run's own source when it loads
    if cfg.model.pretrained and not resume:
        log.info("pretrained weights: %s",
                 module.weights_source or f"torchvision's ImageNet weights ({cfg.model.name})")
    if _rank() == 0:
        save_config(cfg, run_dir / "config.yaml")
    base: ValidationScores | None = None
    if baseline and not resume:
        base = validation_scores(module, dm, acc)
        log.info("untrained model on val: composite %.4f (F1 %.3f, IoU %.3f)", base.composite, base.f1,
                 base.mean_iou)
        if _rank() == 0:  # same schema as best_model.pth, so `dfudet evaluate` can score it on any split
            atomic_torch_save(best_payload(module, base, -1, {}, origin="untrained"), run_dir / UNTRAINED_NAME)
            log.info("untrained model written to %s", run_dir / UNTRAINED_NAME)
    elif baseline and (run_dir / UNTRAINED_NAME).is_file():  # resumed: the baseline scored when the run began
        base = load_for_inference(run_dir / UNTRAINED_NAME).scores

    trainer = build_trainer(cfg, acc, devices, precision)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)

    result: dict[str, Any] = {"run_dir": str(run_dir), "epochs_run": trainer.current_epoch,
                              "stopped_early": bool(trainer.early_stopping_callback and
                                                    trainer.early_stopping_callback.stopped_epoch),
                              "baseline": base.as_dict() if base is not None else {}}
    best_path = run_dir / BEST_NAME
    if best_path.is_file() and trainer.is_global_zero:
        kept = load_for_inference(best_path)
        best = kept.scores
        assert best is not None  # a best_model.pth always records its scores
        result["best"] = {"epoch": kept.epoch, **best.as_dict()}
        log.info("kept model: epoch %d, composite %.4f (F1 %.3f, IoU %.3f, P %.3f, R %.3f) -> %s",
                 kept.epoch, best.composite, best.f1, best.mean_iou, best.precision, best.recall, best_path)
        if base is not None:
            log.info("untrained baseline composite %.4f -> kept model composite %.4f", base.composite, best.composite)
            result["learned"] = bool(best.composite > base.composite)
            if not result["learned"]:
                log.warning(did_not_learn(base.composite, best.composite, result["epochs_run"]))
    elif base is not None and trainer.is_global_zero:
        result["learned"] = False
        log.warning(did_not_learn(base.composite, None, result["epochs_run"]))
    return result


def did_not_learn(untrained: float, kept: float | None, epochs: int) -> str:
    """The loud end-of-run warning when training did not beat the untrained model on val."""
    kept_s = f"{kept:.4f}" if kept is not None else "none (no epoch finished with a finite composite)"
    bar = "!" * 78
    return "\n".join([
        bar,
        f"WARNING: the kept model does NOT beat the untrained model on val (composite {kept_s} vs untrained "
        f"{untrained:.4f}) after {epochs} epoch(s).",
        "What to try: train longer (train.epochs), check the lr (train.lr; watch curves.png for a val loss that",
        "rises from the start), check the data (dfudet data import report, boxes on the right objects), or start",
        "from pretrained weights (model.pretrained=true with a weight source, see README).",
        bar,
    ])
