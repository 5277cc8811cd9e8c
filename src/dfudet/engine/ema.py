"""Exponential moving average (EMA) of the weights, validated and kept in place of the raw weights (train.ema_decay).

Lightning's `WeightAveraging` (an `AveragedModel` updated after every optimizer step, saved in last.ckpt for an exact
resume) with two changes for dfudet:

- the decay ramps up as in TensorFlow's ExponentialMovingAverage with num_updates: min(decay, (1 + n) / (10 + n))
  after n updates, so the average of a short run is not dominated by the initial (e.g. ImageNet) weights;
- the averaged weights are swapped in for the whole validation, from `on_validation_start` to `on_validation_end`,
  not only for the validation epoch: the kept-model callback writes best_model.pth in `on_validation_end`, and must
  write the weights that were scored. Place this callback after the ones that read the weights in
  `on_validation_end` and before the `Checkpoint` that writes last.ckpt (Lightning runs checkpoints last).

last.ckpt then holds the averaged weights in `state_dict` (what `dfudet evaluate last.ckpt` scores) and the raw ones
in `current_model_state` (what training continues from). Everything computed in validation uses the average,
including the val loss that steps ReduceLROnPlateau. When fit ends, Lightning copies the average into the module.

Under DDP every rank averages the same parameters, but BatchNorm running statistics are updated per rank between
DDP's buffer broadcasts, so the averaged buffers are broadcast from rank 0 before each validation: every rank scores,
and rank 0 saves, the same model. Sharded strategies (FSDP, DeepSpeed) are refused by the config.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

WARMUP_OFFSET = 10  # decay after n updates: min(decay, (1 + n) / (WARMUP_OFFSET + n))


def ramped_decay(decay: float, n_averaged: int) -> float:
    """The EMA decay used for the update after `n_averaged` earlier updates (the first update copies the weights)."""
    return min(decay, (1.0 + n_averaged) / (WARMUP_OFFSET + n_averaged))


def ramped_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """`multi_avg_fn` for `AveragedModel`: ema <- d * ema + (1 - d) * current with the ramped d, in place.

    Integer buffers (BatchNorm's num_batches_tracked) are copied: a count has no meaningful average.
    """

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not ema:
            return
        if not ema[0].is_floating_point():
            for e, c in zip(ema, current):
                e.copy_(c)
            return
        weight = 1.0 - ramped_decay(decay, int(n_averaged))
        torch._foreach_lerp_(ema, current, weight)  # what torch.optim.swa_utils.get_ema_multi_avg_fn uses

    return update


class ValidatedEMA(WeightAveraging):
    """EMA of every parameter and buffer, updated after each optimizer step; validation sees the averaged weights."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(use_buffers=True, multi_avg_fn=ramped_ema(decay))
        self.decay = decay

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # swapped in on_validation_start instead (see the module docstring)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # swapped back in on_validation_end

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None and trainer.state.fn == "fit":
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for buf in self._average_model.module.buffers():
                    torch.distributed.broadcast(buf, src=0)
            self._swap_models(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None and trainer.state.fn == "fit":
            self._swap_models(pl_module)
