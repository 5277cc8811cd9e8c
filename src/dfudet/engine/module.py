"""LightningModule: train step, val loss without touching BatchNorm/dropout state, detections for the metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.types import OptimizerConfig

from dfudet.checkpoint import state_digest
from dfudet.config import Config, config_to_dict
from dfudet.engine import rng
from dfudet.engine.ema import ValidatedEMA
from dfudet.metrics.scores import ValidationScores
from dfudet.metrics.validation import score_validation
from dfudet.models.factory import build_detector, get_spec, weights_source
from dfudet.models.passes import losses_and_detections, model_targets, to_float_images
from dfudet.utils import atomic_write_bytes

log = logging.getLogger("dfudet")

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def dropped_lr(lr: float, drops: int, factor: float, min_lr: float) -> float:
    """`lr` after `drops` lr drops of train.lr_drop_epochs: times `factor` each, floored at `min_lr`, never raised."""
    for _ in range(drops):
        lr = min(lr, max(lr * factor, min_lr))
    return lr


class DetectorModule(L.LightningModule):
    """Wraps a torchvision detector: SGD/AdamW + ReduceLROnPlateau(val loss), composite metrics after validation."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        # a plain dict in Lightning's hyper_parameters, so last.ckpt loads with weights_only=True
        self.save_hyperparameters({"config": config_to_dict(cfg)})
        self.cfg = cfg
        self.spec = get_spec(cfg.model.name)
        self.model = build_detector(cfg.model, cfg.data.img_size)
        # where the pretrained backbone came from: a run output, written to every checkpoint (not to the config);
        # a resumed run keeps the one its last.ckpt recorded (on_load_checkpoint)
        self.weights_source: str | None = weights_source(self.model)
        self._val_preds: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._loss_sums = {"train": [0.0, 0], "val": [0.0, 0]}
        self._nonfinite = {"train": 0, "val": 0}
        self.last_val: ValidationScores | None = None
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._pending_plateau_state: dict[str, Any] | None = None
        self._pending_rng_state: dict[str, Any] | None = None
        self._seen_ids: list[int] = []

    # ------------------------------------------------------------------ train
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(to_float_images(images))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(to_float_images(images), model_targets(self.spec, images, targets))
        loss = sum(losses.values())
        bs = len(images)
        self._accumulate("train", loss, bs)
        if self.cfg.train.log_sample_ids:
            self._seen_ids.extend(int(t["image_id"]) for t in targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        for k, v in losses.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def on_train_epoch_start(self) -> None:
        if self._pending_rng_state is not None:
            # resumed: the generators continue from where the checkpointed epoch left them, so this epoch draws
            # what the uninterrupted run drew (restored here, after Lightning's restore, before the first batch)
            rng.restore(self._pending_rng_state)
            self._pending_rng_state = None
        self._loss_sums["train"] = [0.0, 0]
        self._nonfinite["train"] = 0
        t = self.cfg.train
        if self.current_epoch in t.lr_drop_epochs and self.trainer.optimizers:
            # epoch-budgeted drop (train.lr_drop_epochs); applied to the lr the optimizer holds, so it composes with
            # the plateau's cuts and a run resumed from the previous epoch's checkpoint drops exactly once
            for g in self.trainer.optimizers[0].param_groups:
                g["lr"] = dropped_lr(g["lr"], 1, t.lr_drop_factor, t.min_lr)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)
        self._seen_ids = []

    def on_train_epoch_end(self) -> None:
        if self.cfg.train.log_sample_ids:
            # Audit trail of which training images this rank saw (used to check DDP sharding).
            path = Path(self.cfg.run_dir) / "sample_ids" / f"rank{self.global_rank}-epoch{self.current_epoch}.json"
            atomic_write_bytes(path, json.dumps(self._seen_ids).encode())

    def _accumulate(self, phase: str, loss: torch.Tensor, n: int) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            # Reported, not hidden: one overflowing batch must not turn the epoch mean (and the plateau step) into NaN.
            self._nonfinite[phase] += 1
            log.warning("%s loss is %s in a batch of epoch %d (skipped in the epoch mean; %d so far this epoch)",
                        phase, value, self.current_epoch, self._nonfinite[phase])
            return
        acc = self._loss_sums[phase]
        acc[0] += value * n
        acc[1] += n

    def epoch_loss(self, phase: str) -> float:
        """Mean loss of the current/last epoch of a phase, averaged over all ranks."""
        total, n = self._loss_sums[phase]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([total, float(n)], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            total, n = float(t[0]), int(t[1])
        return total / n if n else float("nan")

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_preds = []
        self._loss_sums["val"] = [0.0, 0]
        self._nonfinite["val"] = 0

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = batch
        losses, detections = losses_and_detections(self.model, self.spec, to_float_images(images), targets,
                                                    seed=self.cfg.train.seed + batch_idx)
        self.model.eval()
        loss = cast(torch.Tensor, sum(losses.values()))  # a sum of tensors (sum() types the empty case as 0)
        self._accumulate("val", loss, len(images))
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images), sync_dist=True)
        for det, tgt in zip(detections, targets):
            # Detach and move to CPU numpy right away: nothing with a graph or on the GPU is kept across steps.
            self._val_preds.append((
                int(tgt["image_id"]),
                det["boxes"].detach().float().cpu().numpy(),
                det["scores"].detach().float().cpu().numpy(),
                tgt["boxes"].detach().float().cpu().numpy(),
            ))

    def _gathered_preds(self) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        preds = self._val_preds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            parts: list[Any] = [None] * world
            torch.distributed.all_gather_object(parts, preds)
            merged: dict[int, Any] = {}
            for part in parts:
                for item in part:
                    merged.setdefault(item[0], item)  # DistributedSampler pads with repeats: keep one per image
            preds = [merged[k] for k in sorted(merged)]
        return preds

    def validation_metrics(self, preds: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> ValidationScores:
        """Scores of one validation epoch (dfudet.metrics.validation: the rule `dfudet tune` scores val with)."""
        v = score_validation([(b, s) for _, b, s, _ in preds], [gt for *_, gt in preds], self.cfg.train)
        return v.scores(train_loss=self.epoch_loss("train"), val_loss=self.epoch_loss("val"))

    def on_validation_epoch_end(self) -> None:
        preds = self._gathered_preds()
        self._val_preds = []
        if not preds or self.trainer.sanity_checking:
            return
        v = self.validation_metrics(preds)
        if self.plateau is not None and self.trainer.state.fn == "fit":
            # Stepped here, before the epoch's checkpoints are written, so last.ckpt holds the stepped state and a
            # resumed run continues exactly (Lightning's own plateau step comes after the checkpoint is saved).
            self.plateau.step(v.val_loss)
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else 0.0
        v = dataclasses.replace(v, lr=lr)
        for k in ("precision", "recall", "f1", "mean_iou", "composite", "operating_threshold", "ap50"):
            self.log(f"val/{k}", float(getattr(v, k)), on_step=False, on_epoch=True, sync_dist=False)
        self.log("lr", lr, on_step=False, on_epoch=True, sync_dist=False)
        self.last_val = v

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> OptimizerConfig:
        t = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if t.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                                                         weight_decay=t.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        # ReduceLROnPlateau on val loss only, stepped by hand in on_validation_epoch_end (see there).
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr
        )
        if self._pending_plateau_state is not None:
            self.plateau.load_state_dict(self._pending_plateau_state)
            self._pending_plateau_state = None
        return {"optimizer": opt}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dfudet"] = {
            "weights_sha256": state_digest(checkpoint["state_dict"]),  # checked when resuming or loading
            # with an EMA (train.ema_decay) state_dict is the average; the raw weights training resumes from are
            # checked too
            **({"current_weights_sha256": state_digest(checkpoint["current_model_state"])}
               if isinstance(checkpoint.get("current_model_state"), dict) else {}),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "operating_threshold": (self.last_val.operating_threshold if self.last_val is not None
                                    else self.cfg.train.selection_threshold),
            "rng": rng.capture(),  # exact resume: the generators' state at the end of this epoch
            "weights_source": self.weights_source,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.cfg.train.ema_decay is None and isinstance(checkpoint.get("current_model_state"), dict):
            # a run that averaged its weights (its state_dict is the average), resumed without: train on from the
            # weights it was training, not from the average (with train.ema_decay set, engine.ema restores both)
            checkpoint["state_dict"] = checkpoint["current_model_state"]
            callbacks = checkpoint.get("callbacks")
            if isinstance(callbacks, dict):  # its state has no callback to go to (runner logs the change)
                callbacks.pop(ValidatedEMA.__qualname__, None)
        extra = checkpoint.get("dfudet") or {}
        self._pending_plateau_state = extra.get("plateau")
        self._pending_rng_state = extra.get("rng")  # absent in checkpoints of older versions: resume as before
        if "weights_source" in extra:  # what the run started from, not what this process's build found
            self.weights_source = extra["weights_source"]
            if self.cfg.model.pretrained:
                log.info("pretrained weights (as the run began): %s", self.weights_source)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        # Linear warm-up over the first steps; afterwards only ReduceLROnPlateau and train.lr_drop_epochs change the
        # lr (a drop that falls inside the warm-up scales the ramp).
        t = self.cfg.train
        warm = t.warmup_steps
        step = self.trainer.global_step
        if warm and step <= warm:
            target = dropped_lr(t.lr, sum(1 for e in t.lr_drop_epochs if e <= epoch), t.lr_drop_factor, t.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = target * min(1.0, (step + 1) / warm)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
