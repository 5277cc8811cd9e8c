"""The training loop on tiny data: selection by composite, early stopping, plateau on val loss, resume, DDP."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dfudet.checkpoint import load_for_inference, safe_torch_load
from dfudet.config import config_to_dict
from dfudet.engine.datamodule import DetectionDataModule
from dfudet.engine.host_memory import glibc
from dfudet.engine.module import DetectorModule, dropped_lr
from dfudet.engine.runner import build_trainer, header, run_training
from dfudet.models.factory import build_detector
from dfudet.models.passes import model_targets

REPO = Path(__file__).resolve().parents[2]
# what DEVELOPERS.md says the best checkpoint carries
SPEC_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "train_loss", "val_loss", "f1", "mean_iou",
             "precision", "recall", "composite", "backbone", "img_size", "num_classes")


class ScriptedModule(DetectorModule):
    """Real model and loop; only the epoch's scores come from a script so val loss and composite can disagree."""

    script: list[dict[str, float]] = []

    def validation_metrics(self, preds):
        real = super().validation_metrics(preds)
        return dataclasses.replace(real, **self.script[self.current_epoch])


def _fit_scripted(cfg, script):
    ScriptedModule.script = script
    dm = DetectionDataModule(cfg)
    module = ScriptedModule(cfg)
    trainer = build_trainer(cfg, "cpu", 1, "32")
    trainer.fit(module, datamodule=dm)
    return trainer


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # several training epochs
def test_best_model_is_chosen_on_composite_not_val_loss(tiny_cache: Path, tmp_path: Path, tiny_config):
    script = [
        {"composite": 0.30, "val_loss": 1.00},
        {"composite": 0.50, "val_loss": 0.90},  # best composite
        {"composite": 0.40, "val_loss": 0.50},  # best val loss
        {"composite": 0.45, "val_loss": 0.60},
    ]
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=4")
    _fit_scripted(cfg, script)
    best = safe_torch_load(tmp_path / "run" / "best_model.pth")
    assert best["epoch"] == 1 and best["composite"] == 0.50 and best["val_loss"] == 0.90
    assert set(SPEC_KEYS) <= set(best)
    assert best["backbone"] == "fasterrcnn_mobilenet_v3_large_320_fpn" and best["img_size"] == 96
    assert best["num_classes"] == 2 and best["optimizer_state_dict"]["state"]
    # the weights load into a freshly built model of the recorded config
    ckpt = load_for_inference(tmp_path / "run" / "best_model.pth")
    model = build_detector(cfg.model, cfg.data.img_size)
    model.load_state_dict(ckpt.model_state_dict)
    rows = _history(tmp_path / "run")
    assert [r["new_best"] for r in rows] == ["1", "1", "0", "0"]
    # per-epoch COCO AP50 and the wall clock so far (time-to-quality), both from the real val pass
    assert all(0.0 <= float(r["ap50"]) <= 1.0 for r in rows)
    elapsed = [float(r["elapsed_seconds"]) for r in rows]
    assert elapsed[0] > 0 and all(b > a for a, b in zip(elapsed, elapsed[1:]))
    assert float(rows[-1]["elapsed_seconds"]) == pytest.approx(sum(float(r["seconds"]) for r in rows), abs=0.05)
    # this process's resident set after each epoch (flat memory over a long run is visible in the csv)
    assert all(100 < float(r["rss_mib"]) < 64 * 1024 for r in rows)
    assert (tmp_path / "run" / "last.ckpt").is_file() and (tmp_path / "run" / "curves.png").stat().st_size > 1000


@pytest.mark.slow  # several training epochs
def test_early_stopping_follows_composite_with_patience(tiny_cache: Path, tmp_path: Path, tiny_config):
    composite = [0.1, 0.5, 0.4, 0.45, 0.3, 0.9, 0.9]
    script = [{"composite": c, "val_loss": 1.0 - 0.1 * i} for i, c in enumerate(composite)]  # val loss keeps improving
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=7", "train.early_stop_patience=3")
    trainer = _fit_scripted(cfg, script)
    assert len(_history(tmp_path / "run")) == 5  # best at epoch 1, three epochs without improvement, stop
    assert trainer.early_stopping_callback.stopped_epoch == 4


@pytest.mark.slow  # several training epochs
def test_plateau_scheduler_steps_on_val_loss_only(tiny_cache: Path, tmp_path: Path, tiny_config):
    losses = [1.0, 0.9, 0.95, 0.97, 0.5]
    script = [{"composite": 0.1 * (i + 1), "val_loss": v} for i, v in enumerate(losses)]  # composite always improves
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=5", "train.plateau_patience=1",
                      "train.plateau_factor=0.5", "train.lr=0.01")
    _fit_scripted(cfg, script)
    lrs = [float(r["lr"]) for r in _history(tmp_path / "run")]
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005])


@pytest.mark.slow  # several training epochs
def test_lr_drops_at_the_listed_epochs_and_compose_with_the_plateau(tiny_cache: Path, tmp_path: Path, tiny_config):
    losses = [1.0, 0.9, 0.95, 0.97, 0.5]  # the plateau (patience 1) cuts after epoch 3, as in the test above
    script = [{"composite": 0.1 * (i + 1), "val_loss": v} for i, v in enumerate(losses)]
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=5", "train.plateau_patience=1",
                      "train.plateau_factor=0.5", "train.lr=0.01", "train.lr_drop_epochs=[2,4]",
                      "train.lr_drop_factor=0.1", "train.min_lr=0.00001")
    trainer = _fit_scripted(cfg, script)
    lrs = [float(r["lr"]) for r in _history(tmp_path / "run")]
    # epochs 2 and 4 start 10x lower; the plateau halves after epoch 3 (the csv's lr is read after the plateau step)
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.0005, 0.00005])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.00005)
    cfg = tiny_config(tiny_cache, tmp_path / "floor", "train.epochs=3", "train.lr=0.01",
                      "train.lr_drop_epochs=[1,2]", "train.lr_drop_factor=0.01", "train.min_lr=0.00005")
    _fit_scripted(cfg, [{"composite": 0.1 * (i + 1), "val_loss": 1.0 - 0.1 * i} for i in range(3)])
    assert [float(r["lr"]) for r in _history(tmp_path / "floor")] == pytest.approx([0.01, 0.0001, 0.00005])
    assert "ReduceLROnPlateau(val loss) factor=0.1 patience=5; x0.01 at epochs [1, 2]" in \
        header(cfg, DetectionDataModule(cfg), "cpu", 1, "32", None)


@pytest.mark.slow  # several training epochs
def test_an_lr_drop_inside_the_warm_up_scales_the_ramp_and_keeps_the_floor(tiny_cache: Path, tmp_path: Path,
                                                                          tiny_config):
    # 2 steps per epoch, warm-up over steps 0-5: epoch 1 (steps 2-3) is dropped while still ramping up
    script = [{"composite": 0.1 * (i + 1), "val_loss": 1.0 - 0.1 * i} for i in range(4)]
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=4", "train.lr=0.01", "train.warmup_steps=5",
                      "train.lr_drop_epochs=[1,3]", "train.lr_drop_factor=0.1", "train.min_lr=0.00002")
    _fit_scripted(cfg, script)
    lrs = [float(r["lr"]) for r in _history(tmp_path / "run")]  # the lr of each epoch's last step
    # step 1: 0.01 * 2/5; step 3: 0.001 * 4/5 (ramp towards the dropped lr); step 5: 0.001; epoch 3 (after the
    # warm-up): dropped again, to 0.0001
    assert lrs == pytest.approx([0.004, 0.0008, 0.001, 0.0001])
    cfg = tiny_config(tiny_cache, tmp_path / "floor", "train.epochs=3", "train.lr=0.01", "train.warmup_steps=5",
                      "train.lr_drop_epochs=[1]", "train.lr_drop_factor=0.01", "train.min_lr=0.0005")
    _fit_scripted(cfg, script[:3])
    # the ramp aims at the floored 0.0005 (not 0.0001) and the lr stays there after the warm-up
    assert [float(r["lr"]) for r in _history(tmp_path / "floor")] == pytest.approx([0.004, 0.0004, 0.0005])
    assert dropped_lr(0.00001, 1, 0.1, 0.0001) == 0.00001  # an lr already under the floor is never raised


@pytest.mark.slow  # several training epochs
def test_resumed_run_applies_new_lr_drops_from_its_next_epoch_and_says_so(tiny_cache: Path, tmp_path: Path,
                                                                          tiny_config):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_cache, run, "train.epochs=1"))
    # other anchors given on resume: the run's are kept (its weights were trained for them), and the log says so
    run_training(tiny_config(tiny_cache, run, "train.epochs=3", "train.lr_drop_epochs=[1,2]",
                             "model.anchors.aspect_ratios=[0.5,1.0]"))
    logs = "".join(p.read_text() for p in sorted(run.glob("train-*.log")))
    assert "(resuming from" in logs
    assert "train.lr_drop_epochs changed on resume ([] -> [1, 2])" in logs
    assert ("model.anchors given (sizes None, aspect ratios [0.5, 1.0]) differ from the run's (sizes None, aspect "
            "ratios [0.5, 1.0, 2.0]): the run's are kept") in logs
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["anchors"]["aspect_ratios"] == [0.5, 1.0, 2.0]
    assert [float(r["lr"]) for r in _history(run)] == pytest.approx([1e-3, 1e-4, 1e-5])


@pytest.mark.slow  # several training epochs
def test_a_layout_change_on_resume_is_logged_and_old_runs_count_as_nchw(tiny_cache: Path, tmp_path: Path,
                                                                        tiny_config):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_cache, run, "train.epochs=1"))
    assert "(backbone input channels-last)" in "".join(p.read_text() for p in run.glob("train-*.log"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["model"]["channels_last"]  # as written by dfudet before the setting existed (those runs were NCHW)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    run_training(tiny_config(tiny_cache, run, "train.epochs=2"))
    logs = "".join(p.read_text() for p in sorted(run.glob("train-*.log")))
    assert "(resuming from" in logs and "model.channels_last changed on resume (False -> True)" in logs
    assert safe_torch_load(run / "last.ckpt")["epoch"] == 1


def _cli(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dfudet.cli", "train", "--config", str(cfg_path), *extra]


def _write_cfg(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


_TIMING = {"seconds", "elapsed_seconds", "rss_mib"}  # machine-dependent columns


@pytest.mark.slow
def test_kill_mid_epoch_and_resume_ends_bit_identical_to_an_uninterrupted_run(tiny_cache: Path, tmp_path: Path,
                                                                             tiny_config):
    """SIGKILL inside epoch 2, resume: every epoch once, and final weights, optimizer and metrics equal (CPU)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    overrides = ("train.epochs=4", "train.limit_train_batches=6", "train.limit_val_batches=2",
                 "train.optimizer=sgd", "train.warmup_steps=3", "train.lr_drop_epochs=[2]")
    ref = tmp_path / "reference"
    ref_cfg = _write_cfg(tiny_config(tiny_cache, ref, *overrides), tmp_path / "ref.yaml")
    out = subprocess.run(_cli(ref_cfg), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    run = tmp_path / "run"
    cfg_path = _write_cfg(tiny_config(tiny_cache, run, *overrides), tmp_path / "cfg.yaml")
    proc = subprocess.Popen(_cli(cfg_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until epoch 1 is complete (its last.ckpt is on disk)
        if (run / "last.ckpt").is_file() and safe_torch_load(run / "last.ckpt")["epoch"] >= 1:
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}")
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = safe_torch_load(run / "last.ckpt")
    assert last["epoch"] in (1, 2) and last["optimizer_states"] and last["dfudet"]["plateau"] is not None
    assert last["dfudet"]["rng"]["torch"].dtype == torch.uint8
    # metrics.csv is written after the checkpoint it describes: it never lists an epoch last.ckpt does not hold
    assert max(int(r["epoch"]) for r in _history(run)) <= last["epoch"]

    out = subprocess.run(_cli(cfg_path), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming from" in out.stdout
    rows, ref_rows = _history(run), _history(ref)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # every epoch exactly once
    # the lr drop at epoch 2 happened, once, in both runs (the plateau cannot cut in 4 epochs at patience 5)
    assert [float(r["lr"]) for r in ref_rows] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    for row, ref_row in zip(rows, ref_rows):
        assert {k: v for k, v in row.items() if k not in _TIMING} == \
            {k: v for k, v in ref_row.items() if k not in _TIMING}
    final, ref_final = safe_torch_load(run / "last.ckpt"), safe_torch_load(ref / "last.ckpt")
    assert final["epoch"] == ref_final["epoch"] == 3
    assert final["state_dict"].keys() == ref_final["state_dict"].keys()
    for key, tensor in ref_final["state_dict"].items():
        assert torch.equal(final["state_dict"][key], tensor), key
    for a, b in zip(final["optimizer_states"][0]["state"].values(), ref_final["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert safe_torch_load(run / "best_model.pth")["weights_sha256"] == \
        safe_torch_load(ref / "best_model.pth")["weights_sha256"]


@pytest.mark.slow
def test_two_process_ddp_shards_samples_and_writes_checkpoint_once(tiny_cache: Path, tmp_path: Path, tiny_config):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_cache, run, "train.epochs=1", "train.limit_train_batches=null",
                      "train.limit_val_batches=null", "train.log_sample_ids=true", "data.batches_per_epoch=4",
                      "train.ema_decay=0.9")  # the EMA's buffer broadcast before validation runs under DDP too
    cfg_path = _write_cfg(cfg, tmp_path / "cfg.yaml")
    out = subprocess.run(_cli(cfg_path, "--devices", "2", "--strategy", "ddp"), capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = [json.loads((run / "sample_ids" / f"rank{r}-epoch0.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4  # 2 batches of 2 per rank
    batches = [[tuple(ids[i:i + 2]) for i in range(0, len(ids), 2)] for ids in seen]
    assert not set(batches[0]) & set(batches[1])  # ranks got disjoint batches of the epoch
    assert (run / "best_model.pth").is_file() and (run / "last.ckpt").is_file()
    assert int(safe_torch_load(run / "last.ckpt")["averaging_state"]["n_averaged"]) == 2  # one update per step
    assert out.stdout.count("kept model:") == 1  # rank 0 alone reports (and writes) the checkpoint
    assert len(list(run.glob("train-*-rank1.log"))) == 1


@pytest.mark.slow
def test_one_short_epoch_on_real_photos(fuseg_dir: Path, tmp_path: Path, tiny_config):
    """Real images, real (tiny) box sizes and an empty-mask image flow through import, cache and the loop."""
    from dfudet.data.cache import prepare_cache
    from dfudet.data.importers import import_dataset

    slices = {}
    for split in ("train", "val"):
        coco = json.loads((fuseg_dir / "annotations" / f"{split}.json").read_text())
        empty = [im for im in coco["images"] if im.get("source_mask_empty")][:1]
        with_boxes = [im for im in coco["images"] if not im.get("source_mask_empty")][:7]
        keep = {im["id"] for im in empty + with_boxes}
        coco["images"] = [im for im in coco["images"] if im["id"] in keep]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        slices[split] = tmp_path / f"{split}.json"
        slices[split].write_text(json.dumps(coco))
    import_dataset("coco", images=fuseg_dir / "images", annotations=list(slices.values()), healthy=[],
                   out=tmp_path / "ds")
    prepare_cache(tmp_path / "ds", tmp_path / "cache", img_size=256)
    cfg = tiny_config(tmp_path / "cache", tmp_path / "run", "data.img_size=256", "train.epochs=1",
                      "train.limit_train_batches=3", "train.limit_val_batches=null")
    result = run_training(cfg)
    assert result["best"]["epoch"] == 0
    assert 0.0 <= result["best"]["composite"] <= 1.0


def test_selection_at_the_operating_threshold_is_recorded_in_the_checkpoint(tiny_cache: Path, tmp_path: Path,
                                                                           tiny_config):
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=1", "train.select_at=operating",
                      "model.box_score_thresh=0.0", "train.keep_freed_memory=false")
    result = run_training(cfg)
    # train.keep_freed_memory=false: glibc's defaults are not touched, and the log does not claim otherwise
    log_file = next((tmp_path / "run").glob("train-*.log"))
    assert "host memory" not in log_file.read_text()
    # the finished run lets go of its log file and of the stdout it wrote to: later dfudet messages in this
    # process (the next test, a notebook's next cell) neither land in its log nor fail when its folder is gone
    dfudet_log = logging.getLogger("dfudet")
    assert dfudet_log.handlers == [] and dfudet_log.propagate
    size = log_file.stat().st_size
    dfudet_log.warning("after the run")
    assert log_file.stat().st_size == size
    best = safe_torch_load(tmp_path / "run" / "best_model.pth")
    assert best["selection_threshold"] == best["operating_threshold"] == result["best"]["operating_threshold"]
    assert best["composite"] >= 0.0


@pytest.mark.slow  # a training epoch and the untrained model's val pass: ~5 s of CPU
def test_baseline_scores_and_keeps_the_untrained_model(tiny_cache: Path, tmp_path: Path, tiny_config, capsys):
    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=1", "train.optimizer=adamw")
    result = run_training(cfg, baseline=True)
    # a quiet, readable console and log: plain progress lines (stdout is no terminal here), no third-party tips,
    # the learned/not-learned verdict against the untrained model, no momentum in an AdamW banner
    out = capsys.readouterr().out
    log_text = next((tmp_path / "run").glob("train-*.log")).read_text()
    assert "\r" not in out and "\r" not in log_text and "litlogger" not in out
    assert "epoch 0: 2/2 steps" in log_text
    assert "optimizer          : adamw lr=" in log_text and "momentum" not in log_text
    # train.keep_freed_memory (default) is applied on glibc, and the log says so
    assert ("host memory: freed blocks kept for reuse" in log_text) == (glibc() is not None)
    assert result["learned"] == (result["best"]["composite"] > result["baseline"]["composite"])
    if not result["learned"]:
        assert "does NOT beat the untrained model" in log_text
    untrained = safe_torch_load(tmp_path / "run" / "untrained_model.pth")
    best = safe_torch_load(tmp_path / "run" / "best_model.pth")
    assert untrained["epoch"] == -1 and best["epoch"] == 0
    assert untrained["composite"] == pytest.approx(result["baseline"]["composite"])
    assert untrained["optimizer_state_dict"] == {}
    changed = [k for k, t in best["model_state_dict"].items()
               if t.is_floating_point() and not torch.equal(t, untrained["model_state_dict"][k])]
    assert changed  # the kept model was trained, the untrained one was not
    info = load_for_inference(tmp_path / "run" / "untrained_model.pth")  # what `dfudet evaluate` reads
    assert info.identity.img_size == best["img_size"] and info.config.train == cfg.train
    # a Lightning last.ckpt names its backbone as best_model.pth does (torchvision model: the model name)
    last = load_for_inference(tmp_path / "run" / "last.ckpt")
    assert last.identity.backbone == best["backbone"] == "fasterrcnn_mobilenet_v3_large_320_fpn"


# tiny_config sets Faster R-CNN sampler sizes; fcos_timm refuses non-default ones, so model.rcnn goes back to its
# defaults
FCOS_TINY = ("model.rcnn={}", "model.name=fcos_timm", "model.backbone=resnet10t", "model.fpn_channels=32",
             "model.dense_head.convs=1")


@pytest.mark.slow  # several training epochs
def test_fcos_trains_end_to_end_and_its_checkpoint_predicts(tiny_cache: Path, tmp_path: Path, tiny_config):
    from dfudet.inference.predictor import Predictor

    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=2", "train.select_at=operating",
                      "model.detections_per_img=37", *FCOS_TINY)
    result = run_training(cfg)
    best = safe_torch_load(tmp_path / "run" / "best_model.pth")
    assert set(SPEC_KEYS) <= set(best)
    assert best["backbone"] == "resnet10t" and best["model_name"] == "fcos_timm"
    assert best["composite"] == pytest.approx(result["best"]["composite"])
    rows = _history(tmp_path / "run")
    assert len(rows) == 2 and all(float(r["val_loss"]) > 0 for r in rows)
    pred = Predictor.from_checkpoint(tmp_path / "run" / "best_model.pth")
    assert pred.min_score == cfg.model.box_score_thresh and pred.max_detections == cfg.model.detections_per_img
    out = pred.predict_arrays([torch.randint(0, 255, (80, 120, 3), dtype=torch.uint8).numpy()])[0]
    assert (out.width, out.height) == (120, 80)
    assert (out.boxes[:, [0, 2]] <= 120).all() and (out.boxes[:, [1, 3]] <= 80).all()
    assert load_for_inference(tmp_path / "run" / "last.ckpt").identity.backbone == "resnet10t"
    # resuming the run dir with a different head is refused with the reason (not a raw state_dict error)
    from dfudet.errors import ConfigError

    other = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=3", *FCOS_TINY[:-1], "model.dense_head.convs=2")
    with pytest.raises(ConfigError, match="(?s)holds a run of another model.*"
                                          "model.dense_head.convs: the run has 1, this config has 2"):
        run_training(other)


def test_auto_anchors_with_an_anchor_free_model_stops_with_the_reason(tiny_cache: Path, tmp_path: Path, tiny_config):
    from dfudet.errors import ConfigError

    cfg = tiny_config(tiny_cache, tmp_path / "run", "model.anchors.auto=true", *FCOS_TINY)
    with pytest.raises(ConfigError, match=r"fcos_timm \(family fcos\) does not read model.anchors.auto=True"):
        run_training(cfg)


def test_training_refuses_a_cache_prepared_smaller_than_the_model_input(tiny_cache: Path, tmp_path: Path,
                                                                        tiny_config):
    from dfudet.errors import ConfigError

    cfg = tiny_config(tiny_cache, tmp_path / "run", "data.img_size=128")  # the cache was prepared at 96 px
    with pytest.raises(ConfigError, match=r"prepared at 96 px .* data.img_size is 128.*--img-size 128"):
        DetectionDataModule(cfg).setup("fit")


# an outline model small enough for a test: Mask R-CNN on resnet10t with a narrow FPN and a one-conv mask head
MASK_TINY = ("model.name=maskrcnn_efficientnet", "model.backbone=resnet10t", "model.fpn_channels=32",
             "model.mask_head.channels=16", "model.mask_head.convs=1")


@pytest.mark.slow  # several training epochs
def test_mask_rcnn_trains_on_the_wound_masks_and_its_checkpoint_outlines(tiny_cache: Path, tmp_path: Path,
                                                                        tiny_config):
    from dfudet.data import instance_masks
    from dfudet.inference.predictor import Predictor

    cfg = tiny_config(tiny_cache, tmp_path / "run", "train.epochs=2", *MASK_TINY)
    run_training(cfg)
    rows = _history(tmp_path / "run")
    assert len(rows) == 2 and all(float(r["val_loss"]) > 0 for r in rows)
    pred = Predictor.from_checkpoint(tmp_path / "run" / "best_model.pth", operating_threshold=0.0)
    assert pred.info.outlines and pred.info.identity.model_name == "maskrcnn_efficientnet"
    out = pred.predict_arrays([torch.randint(0, 255, (80, 120, 3), dtype=torch.uint8).numpy()])[0]
    assert out.masks is not None and len(out.masks) == len(out.boxes)
    assert all(instance_masks.decode(m).shape == (80, 120) for m in out.masks)  # the photo's pixels
    # the mask loss is part of training: the model's own loss dict has it, on a batch with an ulcer-free image
    module = DetectorModule(cfg)
    ds = DetectionDataModule(cfg)
    ds.setup("fit")
    assert ds.train_ds is not None
    items = [ds.train_ds[i] for i in range(len(ds.train_ds))]
    healthy = next(it for it in items if len(it[1]["boxes"]) == 0)
    ulcer = next(it for it in items if len(it[1]["boxes"]) > 0)
    assert "masks" in ulcer[1]
    losses = module.model([healthy[0].float() / 255, ulcer[0].float() / 255],
                          model_targets(module.spec, [healthy[0], ulcer[0]], [healthy[1], ulcer[1]]))
    assert losses["loss_mask"] > 0


def test_an_outline_model_on_box_only_data_is_refused_naming_the_images(demo_data: dict[str, Path],
                                                                        tmp_path: Path, tiny_config):
    from dfudet.data.records import read_dataset, write_dataset
    from dfudet.errors import ConfigError

    records = read_dataset(demo_data["dataset"])
    for r in records:
        r.masks = None
    write_dataset(tmp_path / "boxes_only", records)
    cfg = tiny_config(tmp_path / "boxes_only", tmp_path / "run", *MASK_TINY, "data.cache=null",
                      f"data.dataset={tmp_path / 'boxes_only'}", "data.img_size=64")
    first = next(r.path for r in records if r.split == "train" and r.boxes)
    with pytest.raises(ConfigError, match=rf"trains on wound masks, but \d+ ulcer image\(s\) of split 'train'.*"
                                          rf"{first}.*--format masks"):
        run_training(cfg)
    with pytest.raises(ConfigError, match="does not read model.mask_head.convs=1 .*maskrcnn_efficientnet"):
        build_detector(tiny_config(tmp_path, tmp_path, "model.mask_head.convs=1").model, 64)
