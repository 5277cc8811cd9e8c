"""train.ema_decay: the average is the ramped EMA of the real weights, validation scores it, best_model.pth keeps it."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from dfudet.checkpoint import load_for_inference, safe_torch_load
from dfudet.config import load_config
from dfudet.engine.checkpoint_io import AtomicCheckpointIO
from dfudet.engine.datamodule import DetectionDataModule
from dfudet.engine.ema import ValidatedEMA, ramped_decay, ramped_ema
from dfudet.engine.module import DetectorModule
from dfudet.engine.runner import build_trainer, header, run_training, validation_scores
from dfudet.errors import CheckpointError, ConfigError


def test_ramped_decay_starts_small_and_caps_at_the_decay():
    assert ramped_decay(0.99, 1) == pytest.approx(2 / 11)
    assert ramped_decay(0.99, 100) == pytest.approx(101 / 110)
    assert ramped_decay(0.99, 10_000) == 0.99
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        ValidatedEMA(1.0)


def test_ramped_ema_update_in_place_and_counts_copied():
    ema = [torch.tensor([0.0, 10.0]), torch.tensor([4.0])]
    cur = [torch.tensor([1.0, 0.0]), torch.tensor([8.0])]
    ramped_ema(0.5)(ema, cur, torch.tensor(100))  # ramp 101/110 > 0.5: the cap applies
    assert torch.allclose(ema[0], torch.tensor([0.5, 5.0])) and torch.allclose(ema[1], torch.tensor([6.0]))
    early = [torch.tensor([0.0])]
    ramped_ema(0.5)(early, [torch.tensor([13.0])], torch.tensor(3))  # ramp (1+3)/(10+3) < 0.5
    assert torch.allclose(early[0], torch.tensor([9.0]))
    counts = [torch.tensor(7)]
    ramped_ema(0.5)(counts, [torch.tensor(9)], torch.tensor(3))
    assert int(counts[0]) == 9


class RisingModule(DetectorModule):
    """Real model, loop and val loss; the composite rises every epoch, so the last epoch is the kept one."""

    def validation_metrics(self, preds):
        real = super().validation_metrics(preds)
        return dataclasses.replace(real, composite=0.1 * (self.current_epoch + 1))


class WeightLog(L.Callback):
    """Copies a few real parameters and a BatchNorm buffer after every optimizer step (before the EMA update)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = pl_module.state_dict()
        self.steps.append({n: state[n].detach().clone() for n in self.names})


@pytest.mark.slow  # several training epochs
def test_validation_and_best_model_use_the_ema_of_the_trained_weights(tiny_cache: Path, tmp_path: Path, tiny_config):
    decay = 0.3  # the ramp (1+n)/(10+n) passes it at n = 3: both branches run
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=3", "train.limit_train_batches=3",
                      "train.optimizer=sgd", "train.lr=0.02", f"train.ema_decay={decay}")
    module = RisingModule(cfg)
    state = module.state_dict()
    trained = [n for n, p in module.named_parameters() if p.requires_grad]
    names = [trained[0], trained[len(trained) // 2], trained[-1],
             next(n for n in state if n.endswith("running_mean"))]
    watch = WeightLog(names)
    trainer = build_trainer(cfg, "cpu", 1, "32")
    trainer.callbacks.insert(0, watch)
    trainer.fit(module, datamodule=DetectionDataModule(cfg))
    assert len(watch.steps) == 9

    # the average, computed here independently from the real weights after each step
    expected = {n: watch.steps[0][n].clone().double() for n in names}
    for n_done, step in enumerate(watch.steps[1:], start=1):
        d = min(decay, (1 + n_done) / (10 + n_done))
        for n in names:
            expected[n] = d * expected[n] + (1 - d) * step[n].double()
    last = safe_torch_load(tmp_path / "run" / "last.ckpt")
    best = load_for_inference(tmp_path / "run" / "best_model.pth")
    assert best.epoch == 2  # the last epoch, so the kept weights are the final average
    for n in names:
        assert torch.allclose(last["state_dict"][n].double(), expected[n], rtol=1e-5, atol=1e-7), n
        # training continues from the raw weights; the kept model is the average
        assert torch.equal(last["current_model_state"][n], watch.steps[-1][n]), n
        assert torch.equal(best.model_state_dict[n.removeprefix("model.")], last["state_dict"][n]), n
        assert not torch.allclose(last["state_dict"][n], last["current_model_state"][n]), n

    # the scores stored with the kept model are those of its weights: validate a fresh module holding them
    fresh = DetectorModule(cfg)
    fresh.model.load_state_dict(best.model_state_dict)
    again = validation_scores(fresh, DetectionDataModule(cfg), "cpu")
    assert best.scores is not None
    assert again.val_loss == pytest.approx(best.scores.val_loss, rel=1e-5)
    assert again.ap50 == pytest.approx(best.scores.ap50, abs=1e-9)
    assert "EMA, decay min(0.3, (1+n)/(10+n))" in header(cfg, DetectionDataModule(cfg), "cpu", 1, "32", None)


class StartWeights(L.Callback):
    """The module's weights when each training epoch starts (after a resume's restore)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


@pytest.mark.slow  # several training epochs
def test_a_run_resumed_without_ema_trains_on_from_the_raw_weights_and_says_so(tiny_cache: Path, tmp_path: Path,
                                                                             tiny_config):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_cache, run, "train.epochs=1", "train.ema_decay=0.6"))
    last = safe_torch_load(run / "last.ckpt")
    assert any(not torch.equal(v, last["current_model_state"][k]) for k, v in last["state_dict"].items())

    cfg = tiny_config(tiny_cache, run, "train.epochs=2")  # the same run, EMA turned off
    probe = StartWeights()
    trainer = build_trainer(cfg, "cpu", 1, "32")
    trainer.callbacks.insert(0, probe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DetectorModule(cfg), datamodule=DetectionDataModule(cfg),
                    ckpt_path=run / "last.ckpt")
    # no contradicting Lightning warning about the EMA callback's saved state
    assert not [w for w in caught if "ValidatedEMA" in str(w.message)]
    assert len(probe.states) == 1  # epoch 1 only
    for k, v in last["current_model_state"].items():
        assert torch.equal(probe.states[0][k], v), k  # the raw weights, not the average

    run_training(tiny_config(tiny_cache, run, "train.epochs=3"))
    logs = "".join(p.read_text() for p in sorted(run.glob("train-*.log")))
    assert "train.ema_decay changed on resume (0.6 -> None): training continues from the raw weights" in logs


@pytest.mark.slow  # several training epochs
def test_ema_resumes_exactly_and_a_damaged_raw_state_is_refused(tiny_cache: Path, tmp_path: Path, tiny_config):
    """Stopped after epoch 0 and resumed: the average, its count and the raw weights equal an uninterrupted run's."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_training(tiny_config(tiny_cache, ref, "train.epochs=2", "train.ema_decay=0.6"))
    run_training(tiny_config(tiny_cache, run, "train.epochs=1", "train.ema_decay=0.6"))
    run_training(tiny_config(tiny_cache, run, "train.epochs=2", "train.ema_decay=0.6"))
    a, b = safe_torch_load(ref / "last.ckpt"), safe_torch_load(run / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 1
    assert int(b["averaging_state"]["n_averaged"]) == 4  # 2 steps in each of 2 epochs
    for part in ("state_dict", "current_model_state", "averaging_state"):
        assert a[part].keys() == b[part].keys()
        for k, t in a[part].items():
            assert torch.equal(b[part][k], t), (part, k)

    # the raw weights training resumes from are checked like the average
    damaged = tmp_path / "damaged.ckpt"
    shutil.copy(run / "last.ckpt", damaged)
    ckpt = safe_torch_load(damaged)
    key = next(k for k, t in ckpt["current_model_state"].items() if t.is_floating_point())
    ckpt["current_model_state"][key] = ckpt["current_model_state"][key] + 1e-3
    torch.save(ckpt, damaged)
    AtomicCheckpointIO().load_checkpoint(run / "last.ckpt")  # the intact file loads
    with pytest.raises(CheckpointError, match=r"damaged.ckpt: the checkpoint is damaged: its raw \(not averaged\)"):
        AtomicCheckpointIO().load_checkpoint(damaged)


def test_ema_with_a_sharding_strategy_is_refused():
    with pytest.raises(ConfigError, match="train.ema_decay needs the whole model on every device; strategy 'fsdp'"):
        load_config(None, ["train.ema_decay=0.99", "train.strategy=fsdp"])
    assert load_config(None, ["train.ema_decay=0.99", "train.strategy=ddp"]).train.ema_decay == 0.99
