"""Callbacks: best_model.pth on the composite score, one summary line per epoch, metrics CSV and curves PNG."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import matplotlib.pyplot as plt
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from matplotlib.ticker import MaxNLocator

from dfudet.checkpoint import atomic_torch_save, build_best_payload
from dfudet.engine.host_memory import rss_mib
from dfudet.metrics.scores import ValidationScores
from dfudet.utils import atomic_write_bytes

log = logging.getLogger("dfudet")

BEST_NAME = "best_model.pth"
HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "precision", "recall", "f1", "mean_iou", "composite",
                  "operating_threshold", "composite_at_operating", "ap50", "ap50_95", "lr", "new_best", "seconds",
                  "elapsed_seconds", "rss_mib")


def is_better(score: float, best: float | None) -> bool:
    """Model selection rule: strictly higher composite wins; NaN never wins; the first finite score always wins."""
    if score is None or math.isnan(score):
        return False
    return best is None or score > best


def best_payload(pl_module: Any, v: ValidationScores, epoch: int, optimizer_state: dict[str, Any],
                 origin: str = "train") -> dict[str, Any]:
    """The best_model.pth dict (docs/checkpoints.md) of a module with its val scores `v`."""
    return build_best_payload(
        epoch=int(epoch),
        model_state_dict={k: t.detach().cpu() for k, t in pl_module.model.state_dict().items()},
        optimizer_state_dict=optimizer_state,
        scores=v,
        config=pl_module.cfg,
        origin=origin,
        weights_source=pl_module.weights_source,
    )


class CompositeCheckpoint(L.Callback):
    """Keeps best_model.pth = the epoch with the highest val composite score (never chosen on val loss)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.improved = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        v = pl_module.last_val
        if trainer.sanity_checking or trainer.state.fn != "fit" or v is None:
            return
        self.improved = is_better(v.composite, self.best_score)
        if not self.improved:
            return
        self.best_score, self.best_epoch = float(v.composite), int(trainer.current_epoch)
        if trainer.is_global_zero:
            self._write(trainer, pl_module, v)

    def _write(self, trainer: L.Trainer, pl_module: Any, v: ValidationScores) -> None:
        optimizer_state = trainer.optimizers[0].state_dict() if trainer.optimizers else {}
        payload = best_payload(pl_module, v, int(trainer.current_epoch), optimizer_state)
        atomic_torch_save(payload, self.run_dir / BEST_NAME)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")


class LastCheckpoint(Checkpoint):
    """Writes last.ckpt (Lightning's full state, for exact resume) after every validation epoch, then the files
    that describe it (metrics.csv, curves.png through `after_save`), so those never list an epoch whose checkpoint
    is not on disk.

    A `Checkpoint` subclass so Lightning runs it after the other callbacks: early-stopping counter, best score and
    history are already updated when the state is saved. (ModelCheckpoint(save_top_k=0, save_last=True) writes
    last.ckpt only when a top-k checkpoint was saved in the same step, i.e. not every epoch.)
    """

    def __init__(self, run_dir: Path, name: str = "last.ckpt",
                 after_save: list[Callable[[L.Trainer], None]] | None = None) -> None:
        self.path = Path(run_dir) / name
        self.after_save = list(after_save or [])

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # every rank calls it; the strategy writes on global rank 0 only. Full state (optimizer, loops) for resume.
        trainer.save_checkpoint(self.path, weights_only=False)
        for fn in self.after_save:
            fn(trainer)


class EpochSummary(L.Callback):
    """Prints one line per epoch and keeps the (checkpointed) history of metrics.csv and curves.png.

    The files are written by `write_files`, which the trainer's LastCheckpoint calls once last.ckpt of the epoch is
    on disk (build_trainer wires it): metrics.csv never lists an epoch a resumed run would not find.
    """

    def __init__(self, run_dir: Path, best: CompositeCheckpoint) -> None:
        self.run_dir = Path(run_dir)
        self.best = best
        self.history: list[dict[str, float]] = []
        self._t0 = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._t0 = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        v = pl_module.last_val
        if trainer.sanity_checking or trainer.state.fn != "fit" or v is None:
            return
        seconds = round(time.monotonic() - self._t0, 2)
        earlier = [h for h in self.history if h["epoch"] < int(trainer.current_epoch)]
        # wall clock of training so far (train + val of every epoch, across resumes): time-to-quality plots
        elapsed = round(sum(float(h.get("seconds", 0.0)) for h in earlier) + seconds, 2)
        scores = v.as_dict()
        row = {"epoch": int(trainer.current_epoch), **{k: float(scores[k]) for k in HISTORY_FIELDS if k in scores},
               "new_best": int(self.best.improved), "seconds": seconds, "elapsed_seconds": elapsed,
               "rss_mib": round(rss_mib(), 1)}
        self.history = earlier + [row]
        if not trainer.is_global_zero:
            return
        log.info(
            "epoch %3d | train loss %.4f | val loss %.4f | P %.3f R %.3f F1 %.3f IoU %.3f | composite %.4f | AP50 %.3f"
            " | lr %.2e%s",
            row["epoch"], row["train_loss"], row["val_loss"], row["precision"], row["recall"], row["f1"],
            row["mean_iou"], row["composite"], row.get("ap50", float("nan")), row["lr"],
            "  << new best" if self.best.improved else "",
        )

    def write_files(self, trainer: L.Trainer) -> None:
        """metrics.csv and curves.png of the history so far (rank 0)."""
        if not trainer.is_global_zero or not self.history:
            return
        self.write_csv()
        self.write_curves()

    def write_csv(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_bytes(self.run_dir / "metrics.csv", buf.getvalue().encode("utf-8"))

    def write_curves(self) -> None:
        """Loss, composite and its parts, and lr per epoch in one PNG."""
        matplotlib.use("Agg")
        h = self.history
        ep = [r["epoch"] for r in h]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(ep, [r["train_loss"] for r in h], label="train loss", marker="o", markersize=3)
        axes[0].plot(ep, [r["val_loss"] for r in h], label="val loss", marker="o", markersize=3)
        axes[0].set_title("loss")
        for key in ("composite", "ap50", "f1", "mean_iou", "recall", "precision"):
            if all(key in r for r in h):
                axes[1].plot(ep, [r[key] for r in h], label=key, marker="o", markersize=3,
                             linewidth=2.5 if key == "composite" else 1)
        best = [r for r in h if r.get("new_best")]
        if best:
            axes[1].scatter([best[-1]["epoch"]], [best[-1]["composite"]], color="red", zorder=5, label="kept model")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("validation scores")
        axes[2].plot(ep, [r["lr"] for r in h], marker="o", markersize=3)
        axes[2].set_yscale("log")
        axes[2].set_title("learning rate")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend()
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        atomic_write_bytes(self.run_dir / "curves.png", buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class PlainProgress(ProgressBar):
    """Progress as plain log lines (about every 10% of an epoch) when stdout is not a terminal: logs stay readable."""

    def __init__(self, every_fraction: float = 0.1) -> None:
        super().__init__()
        self.every_fraction = every_fraction
        self._enabled = True
        self._t0 = time.monotonic()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._t0 = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        total = self.total_train_batches
        n = batch_idx + 1
        if not self._enabled or not trainer.is_global_zero or not isinstance(total, (int, float)) or not total:
            return
        step = max(1, int(math.ceil(total * self.every_fraction)))
        if n % step and n != total:
            return
        elapsed = time.monotonic() - self._t0
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss_s = f" | loss {float(loss):.4f}" if loss is not None else ""
        log.info("epoch %d: %d/%d steps | %.1f s/step | %s elapsed%s", trainer.current_epoch, n, int(total),
                 elapsed / n, _mmss(elapsed), loss_s)


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


# Messages from third-party libraries that a dfudet user cannot act on. Each is matched exactly enough to leave
# every other warning visible.
_QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",             # Lightning <-> torch pytree (internal)
    r"The number of training batches \(\d+\) is smaller than the logging interval.*",  # short epochs log per epoch
)


class _DropLightningTips(logging.Filter):
    """Lightning's "💡 Tip: try installing litlogger / litmodels" advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Tip:" in msg and ("litlogger" in msg or "litmodels" in msg))


def quiet_third_party() -> None:
    """Silence third-party tips and deprecation notices a user cannot act on (real warnings stay visible)."""
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in lg.filters):
            lg.addFilter(_DropLightningTips())
