import re
from pathlib import Path

import pytest
import yaml

from dfudet.config import Config, load_config, save_config
from dfudet.errors import ConfigError


def test_defaults_match_the_reference_recipe():
    cfg = load_config()
    assert cfg.model.backbone == "efficientnet_b5" and cfg.data.img_size == 512
    assert cfg.train.early_stop_patience == 23 and cfg.train.lr == 1e-3
    w = cfg.train.composite_weights
    assert (w.f1, w.iou, w.recall, w.precision) == (0.40, 0.25, 0.20, 0.15)
    assert cfg.data.positive_fraction == 0.5


def test_yaml_and_overrides(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"lr": 0.01}, "data": {"img_size": 320}}))
    cfg = load_config(p, ["train.lr=0.02", "model.backbone=efficientnet_b0", "train.composite_weights.f1=1"])
    assert cfg.train.lr == 0.02 and cfg.data.img_size == 320
    assert cfg.model.backbone == "efficientnet_b0" and cfg.train.composite_weights.f1 == 1


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lr=-1", "train.lr"),
        ("data.positive_fraction=1.5", "data.positive_fraction"),
        ("train.optimizer=rmsprop", "train.optimizer"),
        ("train.lrr=0.1", "train.lrr"),
        ("data.augment.scale_min=2", "scale_min"),
        ("novalue", "key=value"),
        ("train.lr_drop_epochs=[0]", "train.lr_drop_epochs: Value error, lr_drop_epochs are 0-based epochs >= 1"),
        ("train.lr_drop_epochs=[5,3]", "train.lr_drop_epochs: Value error, lr_drop_epochs must be increasing"),
        ("train.lr_drop_factor=1.5", "train.lr_drop_factor"),
        ("train.lr_drop_epochs=[300]", "train.lr_drop_epochs [300] are not before the end of training"),
    ],
)
def test_bad_values_name_the_key(override: str, needle: str):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, [override])


def test_missing_and_non_mapping_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(p)


def test_save_roundtrip(tmp_path: Path):
    cfg = load_config(None, ["train.epochs=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert isinstance(cfg, Config)
    assert not list(tmp_path.glob(".*.tmp"))


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path: Path):
    cfg = load_config(path)
    assert cfg.train.early_stop_patience >= 1 and cfg.data.img_size >= 64


@pytest.mark.parametrize("name", ["dfu_b5.yaml", "dfu_b5_gpu.yaml"])
def test_reference_gpu_recipes_hold_the_documented_values(name: str):
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    model = (cfg.model.name, cfg.model.backbone, cfg.model.pretrained)
    assert model == ("fasterrcnn_efficientnet", "efficientnet_b5", True)
    assert (cfg.data.img_size, cfg.data.positive_fraction) == (512, 0.5)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.early_stop_patience) == ("sgd", 1e-3, 23)
    assert cfg.train.select_at == "selection_threshold" and cfg.train.precision == "16-mixed"
    w = cfg.train.composite_weights
    assert (w.f1, w.iou, w.recall, w.precision) == (0.40, 0.25, 0.20, 0.15)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_budget_in_epochs_not_wall_time(path: Path):
    # a wall-time budget makes results depend on the machine's speed and load
    assert load_config(path).train.max_time_minutes is None


def test_the_old_threshold_name_is_an_unknown_key(tmp_path: Path):
    """train.score_threshold (renamed selection_threshold before any release) is not read under the old name."""
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  score_threshold: 0.35\n")
    with pytest.raises(ConfigError, match="score_threshold"):
        load_config(old)
    with pytest.raises(ConfigError, match="score_threshold"):
        load_config(None, ["train.score_threshold=0.3"])


def test_unknown_keys_get_a_did_you_mean():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.lrr=0.1", "model.backbne=x", "data.augment.hflipp=0.2", "foo=1"])
    msg = str(exc.value)
    assert "train.lrr: unknown key; did you mean train.lr?" in msg
    assert "model.backbne: unknown key; did you mean model.backbone?" in msg
    assert "data.augment.hflipp: unknown key; did you mean data.augment.hflip" in msg
    assert "foo: unknown key; allowed keys here: data, model, train, run_dir" in msg
    assert "Extra inputs are not permitted" not in msg


def test_pretrained_recipes_find_their_weights_offline():
    from dfudet.models.weights import package_weights_file

    for name in ("fuseg_cpu_pretrained.yaml", "fuseg_cpu_frcnn_effnet.yaml", "demo.yaml"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
        assert cfg.model.pretrained and cfg.model.weights is None
        assert package_weights_file(cfg.model.backbone) is not None, f"{name}: no installed weight package"


# a value of each flat model key of dfudet before the sections (valid at its new place)
OLD_FLAT = {"anchor_sizes": [[8.0], [16.0], [32.0], [64.0], [128.0]], "aspect_ratios": [1.0], "auto_anchors": True,
            "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 128, "mask_head_channels": 64,
            "mask_head_convs": 2, "head_convs": 2, "topk_candidates": 50, "instance_balance": 0.5}


@pytest.mark.parametrize("old", sorted(OLD_FLAT))
def test_an_old_flat_model_key_is_refused_with_its_new_place(old, tmp_path):
    from dfudet.config import MOVED_MODEL_KEYS

    new = MOVED_MODEL_KEYS[old]
    section, field = new.split(".")
    value = OLD_FLAT[old]
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "fcos_timm", old: value}}))
    for args in ((p, None), (None, [f"model.{old}={yaml.safe_dump(value, default_flow_style=True).strip()}"])):
        with pytest.raises(ConfigError) as exc:  # refused, never read as the new key
            load_config(*args)
        assert f"model.{old}: unknown key; it moved to model.{new} (in YAML: model: {{{section}: {{{field}: ...}}}})" \
            in str(exc.value)
    # the place the hint names takes the same value
    moved = load_config(None, [f"model.{new}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    assert getattr(getattr(moved.model, section), field) == value


def test_every_model_section_key_is_typed_and_checked():
    cfg = load_config(None, ["model.anchors.auto=true", "model.dense_head.convs=3", "model.mask_head.channels=32"])
    assert cfg.model.anchors.auto and cfg.model.dense_head.convs == 3 and cfg.model.mask_head.channels == 32
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.dense_head.conv=3", "model.anchors.sizes=[[0]]", "model.fcos.instance_balance=2"])
    msg = str(exc.value)
    assert "model.dense_head.conv: unknown key; did you mean model.dense_head.convs?" in msg
    assert "model.anchors.sizes: Value error, sizes must be a list (one per FPN level)" in msg
    assert "model.fcos.instance_balance: Input should be less than or equal to 1" in msg
