"""One typed configuration: YAML load, `key=value` overrides, validation with clear messages, save next to a run."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dfudet.errors import ConfigError
from dfudet.utils import atomic_write_bytes

log = logging.getLogger("dfudet")


# The Lightning Trainer(precision=...) values a run may ask for (CPU always runs "32").
Precision = Literal["32", "16-mixed", "bf16-mixed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Box-aware training augmentation (albumentations); validation only resizes and pads."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate90: float = Field(0.25, ge=0, le=1)
    rotate_limit: float = Field(15.0, ge=0, le=180)
    scale_min: float = Field(0.75, gt=0)
    scale_max: float = Field(1.25, gt=0)
    crop_prob: float = Field(0.3, ge=0, le=1)
    brightness_contrast: float = Field(0.2, ge=0, le=1)
    hue_saturation: float = Field(0.3, ge=0, le=1)
    blur: float = Field(0.1, ge=0, le=1)
    # Photos unlike FUSeg's clinic close-ups (off by default so the documented recipes reproduce): probabilities of
    # a low-resolution copy (downscaled to 25-60% then back up), JPEG re-compression (quality 30-90), and a colour
    # cast (white balance / lighting: per-channel shift and gamma).
    low_res: float = Field(0.0, ge=0, le=1)
    jpeg: float = Field(0.0, ge=0, le=1)
    color_cast: float = Field(0.0, ge=0, le=1)
    min_visibility: float = Field(0.3, ge=0, le=1)
    min_box_size: float = Field(2.0, ge=0)
    # Simple Copy-Paste (Ghiasi et al. 2021; dfudet.data.copy_paste), off by default: the probability that a sampled
    # ulcer photo (`copy_paste`) or healthy photo (`copy_paste_healthy`; it then holds an ulcer) gets 1-2 wounds cut
    # with their masks from other training photos, pasted on skin before the other steps. Each wound's size relative
    # to the photo is copy_paste_scale_min - copy_paste_scale_max times its size relative to its own photo (1: the
    # same share). Needs wound masks in the data (import --format masks, or COCO segmentations).
    copy_paste: float = Field(0.0, ge=0, le=1)
    copy_paste_healthy: float = Field(0.0, ge=0, le=1)
    copy_paste_scale_min: float = Field(0.5, gt=0)
    copy_paste_scale_max: float = Field(1.5, gt=0)

    @model_validator(mode="after")
    def _scale_order(self) -> AugmentConfig:
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must be <= scale_max ({self.scale_max})")
        if self.copy_paste_scale_min > self.copy_paste_scale_max:
            raise ValueError(f"copy_paste_scale_min ({self.copy_paste_scale_min}) must be <= copy_paste_scale_max "
                             f"({self.copy_paste_scale_max})")
        return self


class DataConfig(_Strict):
    """Where the data is and how batches are made."""

    cache: str | None = None  # LMDB cache dir written by `dfudet data prepare` (preferred)
    dataset: str | None = None  # dataset dir written by `dfudet data import` (read from image files)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    img_size: int = Field(512, ge=64, le=4096)
    # Input side for evaluate / predict / serve / export when it differs from the training img_size (None: the same).
    # Chosen on val by `dfudet tune` (which also re-chooses the operating threshold at that size) and written into
    # the tuned checkpoint's config; training itself always runs and validates at img_size.
    infer_img_size: int | None = Field(None, ge=64, le=4096)
    batch_size: int = Field(4, ge=1)
    val_batch_size: int | None = Field(None, ge=1)
    positive_fraction: float = Field(0.5, ge=0, le=1)
    batches_per_epoch: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    persistent_workers: bool = True
    multiprocessing_context: Literal["fork", "spawn", "forkserver"] | None = None
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class AnchorsConfig(_Strict):
    """Anchor boxes of the anchor-based models (Faster/Mask R-CNN, RetinaNet): model.anchors."""

    sizes: list[list[float]] | None = None  # one list per FPN level; None = defaults (or `auto`)
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
    auto: bool = False  # propose sizes and aspect ratios from the training boxes (logged)

    @field_validator("aspect_ratios")
    @classmethod
    def _positive_ratios(cls, v: list[float]) -> list[float]:
        if not v or any(r <= 0 for r in v):
            raise ValueError("aspect_ratios must be a non-empty list of positive numbers")
        return v

    @field_validator("sizes")
    @classmethod
    def _positive_sizes(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None and (not v or any(not lvl or any(s <= 0 for s in lvl) for lvl in v)):
            raise ValueError("sizes must be a list (one per FPN level) of non-empty lists of positive sizes")
        return v


class RcnnConfig(_Strict):
    """The two-stage models' samplers (Faster/Mask R-CNN): model.rcnn."""

    rpn_batch_size_per_image: int = Field(256, ge=1)  # anchors sampled per image for the RPN loss
    box_batch_size_per_image: int = Field(512, ge=1)  # RoIs sampled per image for the box head
    # width of the box head's two fully connected layers (torchvision's TwoMLPHead; None = its 1024). Its first layer
    # takes every RoI's 7 x 7 x fpn_channels features: at 1024 it holds over half of a Lite0 Mask R-CNN's weights
    # (6.4 M of 11.9 M at fpn_channels 128); 256 brings that model to 6.1 M (24.5 MB in float32)
    box_head_size: int | None = Field(None, ge=8)


class MaskHeadConfig(_Strict):
    """The outline models' mask head (maskrcnn_efficientnet): model.mask_head."""

    # channels of each of the mask head's conv layers (None = the FPN's) and how many there are (torchvision: 4 of 256)
    channels: int | None = Field(None, ge=8)
    convs: int | None = Field(None, ge=1, le=8)


class DenseHeadConfig(_Strict):
    """The one-stage heads (fcos_timm, retinanet_timm): model.dense_head."""

    convs: int | None = Field(None, ge=1, le=8)  # conv layers per head branch (None = 4, torchvision's)
    topk_candidates: int | None = Field(None, ge=1)  # best locations per FPN level kept before NMS (None = 1000)


class FcosConfig(_Strict):
    """What only FCOS's loss reads (fcos_timm): model.fcos."""

    # weight each positive location's losses by n ** -instance_balance, where n is how many positive locations its
    # ulcer has (weights rescaled to average 1). 0: torchvision's loss, every location alike, so a 48 px ulcer
    # (9 locations) outweighs an 8-16 px one (1-3) several times; 1: every ulcer weighs the same
    instance_balance: float = Field(0.0, ge=0, le=1)


class ModelConfig(_Strict):
    """Which detector and how it is built: the keys every family reads, then one section per kind of head.

    A model reads only the sections its ModelSpec lists (`ModelSpec.sections`); `build_detector` refuses a section
    key it does not read unless it is left at its default.
    """

    name: str = "fasterrcnn_efficientnet"
    backbone: str = "efficientnet_b5"
    pretrained: bool = True
    # timm backbones: a state-dict file to start from (plain, nested under state_dict/model, or .safetensors),
    # mapped by name or, in another project's naming, by order with every shape checked. Unset: timm's cache, then
    # an installed weight package (efficientnet_lite0/1/2), then timm's download (dfudet.models.weights).
    weights: str | None = None
    num_classes: int = Field(2, ge=2)
    fpn_channels: int = Field(256, ge=8)
    trainable_backbone_layers: int = Field(5, ge=0, le=5)
    box_score_thresh: float = Field(0.01, ge=0, le=1)
    box_nms_thresh: float = Field(0.5, ge=0, le=1)
    detections_per_img: int = Field(100, ge=1)
    # feed the backbone channels-last (NHWC) tensors: same weights and values (up to float rounding), faster convs;
    # FCOS + Lite0 train steps 1.3x faster on this CPU (docs/benchmarks.md). false: NCHW, bit-identical to runs of
    # dfudet before the setting existed
    channels_last: bool = True
    anchors: AnchorsConfig = Field(default_factory=AnchorsConfig)
    rcnn: RcnnConfig = Field(default_factory=RcnnConfig)
    mask_head: MaskHeadConfig = Field(default_factory=MaskHeadConfig)
    dense_head: DenseHeadConfig = Field(default_factory=DenseHeadConfig)
    fcos: FcosConfig = Field(default_factory=FcosConfig)

    @model_validator(mode="after")
    def _weights_need_pretrained(self) -> ModelConfig:
        if self.weights and not self.pretrained:
            raise ValueError(f"weights={self.weights!r} is set but pretrained is false; set model.pretrained=true to "
                             "start from that file, or remove model.weights")
        return self


def model_sections() -> tuple[str, ...]:
    """The names of ModelConfig's sections (anchors, rcnn, ...): what a ModelSpec may declare it reads."""
    return tuple(k for k, f in ModelConfig.model_fields.items()
                 if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))


# the flat model keys of dfudet before the sections, and where each lives now (named in the "unknown key" error;
# the old spelling is never read)
MOVED_MODEL_KEYS = {
    "anchor_sizes": "anchors.sizes", "aspect_ratios": "anchors.aspect_ratios", "auto_anchors": "anchors.auto",
    "rpn_batch_size_per_image": "rcnn.rpn_batch_size_per_image",
    "box_batch_size_per_image": "rcnn.box_batch_size_per_image",
    "mask_head_channels": "mask_head.channels", "mask_head_convs": "mask_head.convs",
    "head_convs": "dense_head.convs", "topk_candidates": "dense_head.topk_candidates",
    "instance_balance": "fcos.instance_balance",
}


class CompositeWeights(_Strict):
    """Weights of the composite model-selection score."""

    f1: float = Field(0.40, ge=0)
    iou: float = Field(0.25, ge=0)
    recall: float = Field(0.20, ge=0)
    precision: float = Field(0.15, ge=0)

    @model_validator(mode="after")
    def _nonzero(self) -> CompositeWeights:
        if self.f1 + self.iou + self.recall + self.precision <= 0:
            raise ValueError("at least one composite weight must be > 0")
        return self


class TrainConfig(_Strict):
    """Optimisation, selection and hardware."""

    epochs: int = Field(300, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(0, ge=0)
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    plateau_patience: int = Field(5, ge=0)
    min_lr: float = Field(1e-7, ge=0)
    # Epoch-budgeted lr drops on top of ReduceLROnPlateau (a MultiStep schedule like mmdetection's "1x"):
    # at the start of each listed epoch (0-based) the lr is multiplied by lr_drop_factor, never below min_lr.
    # Empty (default): only the plateau changes the lr.
    lr_drop_epochs: list[int] = Field(default_factory=list)
    lr_drop_factor: float = Field(0.1, gt=0, lt=1)
    early_stop_patience: int = Field(23, ge=1)
    composite_weights: CompositeWeights = Field(default_factory=CompositeWeights)
    # Fixed score threshold of the selection composite when select_at is "selection_threshold".
    selection_threshold: float = Field(0.5, ge=0, le=1)
    # Which composite selects the kept model and drives early stopping: at `selection_threshold` (default), or at the
    # operating threshold swept on val each epoch. Either way the operating threshold is stored in best_model.pth and
    # is what evaluate/predict/serve use by default.
    select_at: Literal["selection_threshold", "operating"] = "selection_threshold"
    # The operating threshold is swept only over thresholds whose val recall reaches this floor (none does: the
    # highest-recall one), so an early model cannot be kept for a few confident boxes (P 1.0, R 0.006).
    operating_min_recall: float = Field(0.3, ge=0, le=1)
    # Input sides `dfudet tune` tries on val after training (empty: only img_size). A larger input gives small
    # ulcers more pixels at inference for about the square of the side in time. The kept size is the one with the
    # best val composite at its own operating threshold among the training size and the sizes that beat it in at
    # least `tune_confidence` of paired bootstrap replicates over the val images (1,000, seed 0): on 118 val photos a
    # size chosen for a small val gain can lose on test (docs/experiments.md). 0: the best point estimate.
    tune_img_sizes: list[int] = Field(default_factory=list)
    tune_confidence: float = Field(0.95, ge=0, le=1)
    # `dfudet tune` also fits the score calibration on val (auto: Platt or isotonic, the lower cross-validated
    # log-loss; none: skip) and the triage band's review threshold: the highest score at which at least
    # review_sensitivity of the val ulcer photos have a box (dfudet.metrics.calibration)
    calibration: Literal["auto", "platt", "isotonic", "none"] = "auto"
    review_sensitivity: float = Field(0.95, gt=0, le=1)
    iou_threshold: float = Field(0.5, gt=0, le=1)
    # Exponential moving average of the weights (engine/ema.py), updated after every optimizer step with the decay
    # ramped as min(ema_decay, (1 + n) / (10 + n)); validation (so the val loss of ReduceLROnPlateau too), the kept
    # model and early stopping use the average.
    # None (default): the raw weights. The average looks back about 1 / (1 - ema_decay) steps.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    grad_clip: float | None = Field(10.0, gt=0)
    precision: Precision = "32"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    seed: int = 42
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    log_every_n_steps: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads on CPU (None = torch default)
    # glibc: keep freed host memory for reuse instead of unmapping it every step (engine/host_memory.py); same numbers,
    # fewer page faults, higher but flat RSS
    keep_freed_memory: bool = True
    max_time_minutes: float | None = Field(None, gt=0)
    log_sample_ids: bool = False  # write run_dir/sample_ids/rank{r}-epoch{e}.json (audit of DDP sharding)

    @field_validator("lr_drop_epochs")
    @classmethod
    def _drop_epochs(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError("lr_drop_epochs are 0-based epochs >= 1 (epoch 0 starts at train.lr)")
        if sorted(set(v)) != v:
            raise ValueError("lr_drop_epochs must be increasing, each epoch listed once")
        return v

    @model_validator(mode="after")
    def _ema_unsharded(self) -> TrainConfig:
        if self.ema_decay is not None and any(k in self.strategy.lower() for k in ("fsdp", "deepspeed")):
            raise ValueError(f"train.ema_decay needs the whole model on every device; strategy {self.strategy!r} "
                             "shards it. Use strategy ddp (or auto), or remove ema_decay")
        return self

    @model_validator(mode="after")
    def _drops_within_training(self) -> TrainConfig:
        late = [e for e in self.lr_drop_epochs if e >= self.epochs]
        if late:
            raise ValueError(f"train.lr_drop_epochs {late} are not before the end of training (train.epochs="
                             f"{self.epochs}, epochs 0-based): such a drop would never happen")
        return self

    @field_validator("tune_img_sizes")
    @classmethod
    def _tune_sizes(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 64 <= s <= 4096]
        if bad:
            raise ValueError(f"tune_img_sizes must be input sides in 64..4096 pixels, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"tune_img_sizes lists a size twice: {v}")
        return v


class Config(_Strict):
    """The whole resolved configuration of a run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run_dir: str = "runs/default"


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the section holding `loc` (e.g. ("train", "lrr") -> the fields of TrainConfig)."""
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _yaml_path(dotted: str) -> str:
    """`model.anchors.auto` as it is written in a YAML file: `model: {anchors: {auto: ...}}`."""
    parts = dotted.split(".")
    return "".join(f"{p}: {{" for p in parts[:-1]) + f"{parts[-1]}: ...}}" + "}" * (len(parts) - 2)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            moved = MOVED_MODEL_KEYS.get(str(e["loc"][-1])) if tuple(e["loc"][:-1]) == ("model",) else None
            if moved is not None:
                lines.append(f"  - {loc}: unknown key; it moved to model.{moved} (in YAML: "
                             f"{_yaml_path('model.' + moved)})")
                continue
            known = _section_fields(tuple(e["loc"]))
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=3, cutoff=0.6)
            prefix = ".".join(str(p) for p in e["loc"][:-1])
            names = [f"{prefix}.{c}" if prefix else c for c in close]
            hint = f"; did you mean {' or '.join(names)}?" if names else (
                f"; allowed keys here: {', '.join(known)}" if known else "")
            lines.append(f"  - {loc}: unknown key{hint}")
            continue
        given = e.get("input")
        given_s = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  - {loc}: {e['msg']}{given_s}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides to a raw config dict (unknown keys are caught by validation)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or defaults), apply overrides and validate, with errors that name the key."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping (sections data/model/train), "
                              f"got {type(loaded).__name__}")
        raw = loaded
    if overrides:
        raw = apply_overrides(raw, list(overrides))
        source += " + command-line overrides"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of the resolved config (for YAML, checkpoints and logs)."""
    return cfg.model_dump(mode="json")


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_bytes(Path(path), text.encode("utf-8"))
