"""The resume check of `dfudet train`: a run dir is continued only by a config of the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfudet.config import load_config, save_config
from dfudet.engine.runner import LAST_NAME, run_training, saved_run_config
from dfudet.errors import ConfigError

MODEL = ("model.name=fcos_timm", "model.backbone=resnet10t", "model.pretrained=false", "data.img_size=96")


def _run_dir(tmp_path: Path) -> Path:
    """A run dir as a killed run leaves it: its config.yaml and a last.ckpt (never read: the check comes first)."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, [*MODEL, f"run_dir={run}"]), run / "config.yaml")
    (run / LAST_NAME).write_bytes(b"")
    return run


def test_resume_refuses_a_config_of_another_model_identity_naming_each_field(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    other = load_config(None, [*MODEL, f"run_dir={run}", "model.backbone=resnet18", "data.img_size=128",
                               "data.cache=nowhere"])
    with pytest.raises(ConfigError) as exc:
        run_training(other)  # refused before any data or model is touched
    assert str(exc.value) == (
        f"{run} holds a run of another model; use --fresh to start over there or choose another --run-dir:\n"
        "  backbone: the run has 'resnet10t', this config has 'resnet18'\n"
        "  img_size: the run has 96, this config has 128")


def test_resume_reads_the_saved_config_typed_and_refuses_a_missing_or_invalid_one(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    same = load_config(None, [*MODEL, f"run_dir={run}", "train.lr=0.5"])  # not part of the model: resumes
    saved, raw = saved_run_config(run, same)
    assert saved.model.backbone == "resnet10t" and saved.train.lr != 0.5 and raw["data"]["img_size"] == 96
    (run / "config.yaml").write_text("model:\n  weights_source: timm cache\n")  # a run output, no longer a key
    with pytest.raises(ConfigError, match=r"(?s)config.yaml: the run.s saved config cannot be read .*weights_source"):
        saved_run_config(run, same)
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"holds last.ckpt but no config.yaml to resume it with; use --fresh"):
        saved_run_config(run, same)


@pytest.mark.parametrize(("key", "value"), [("model.mask_head.convs", "2"), ("model.mask_head.channels", "64"),
                                            ("model.fpn_channels", "64"), ("model.rcnn.box_head_size", "256")])
def test_resume_refuses_a_mask_head_box_head_or_fpn_of_another_shape(tmp_path: Path, key: str, value: str) -> None:
    """Settings outside the identity that change weight shapes are refused before Lightning's raw state_dict error."""
    run = tmp_path / "run"
    run.mkdir()
    mask = ("model.name=maskrcnn_efficientnet", "model.backbone=efficientnet_b0", "model.pretrained=false",
            "data.img_size=96", f"run_dir={run}")
    save_config(load_config(None, list(mask)), run / "config.yaml")
    (run / LAST_NAME).write_bytes(b"")
    saved_run_config(run, load_config(None, list(mask)))  # the same model resumes
    with pytest.raises(ConfigError, match=rf"(?s)holds a run of another model.*{key}: the run has"):
        saved_run_config(run, load_config(None, [*mask, f"{key}={value}"]))
