"""Model passes shared by training, evaluation and inference: input conversion and the one-pass val step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfudet.models.spec import ModelSpec, Targets

if TYPE_CHECKING:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

_FROZEN_IN_VAL = (_BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def to_float_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 CHW -> float 0..1 on the same device (normalisation happens inside the torchvision transform)."""
    return [im.float().div_(255.0) if im.dtype == torch.uint8 else im.float() for im in images]


def set_input_size(model: nn.Module, size: int) -> None:
    """Make the detector's own transform take `size`-pixel inputs (the data pipeline resizes to it first).

    Models are built with min_size = max_size = the training img_size, so torchvision's transform would resize any
    other input back to it. An input size other than the training one is chosen on val by `dfudet tune`; anchors
    and weights stay those of the training size.
    """
    transform = cast("GeneralizedRCNNTransform", model.transform)
    transform.min_size = (int(size),)
    transform.max_size = int(size)


def model_targets(spec: ModelSpec, images: list[Tensor], targets: Targets) -> Targets:
    """What the detector trains on: boxes and labels, plus (outline models) each box's (N, H, W) uint8 mask.

    An image without boxes gets an empty (0, H, W) mask stack; an ulcer image without masks cannot train an outline
    model, and the error names it (the runner checks the whole data set before training, see engine/runner.py).
    """
    out: Targets = []
    for image, t in zip(images, targets):
        tgt = {"boxes": t["boxes"], "labels": t["labels"]}
        if spec.masks:
            if "masks" in t:
                tgt["masks"] = t["masks"]
            elif len(t["boxes"]) == 0:
                tgt["masks"] = torch.zeros((0, *image.shape[-2:]), dtype=torch.uint8, device=image.device)
            else:
                raise ValueError(f"image_id {int(t['image_id']) if 'image_id' in t else '?'} has "
                                 f"{len(t['boxes'])} ulcer box(es) but no wound masks; {spec.name} trains on masks")
        out.append(tgt)
    return out


def locations_per_level(features: list[Tensor]) -> list[int]:
    """Grid locations (H * W) of each (N, C, H, W) feature map, in level order."""
    return [f.size(2) * f.size(3) for f in features]


def split_levels(head_outputs: dict[str, Tensor], anchors: list[Tensor], per_level: list[int]
                 ) -> tuple[dict[str, list[Tensor]], list[list[Tensor]]]:
    """Dense-head outputs (N, sum(per_level), ...) and each image's anchors (sum(per_level), 4) split into one tensor
    per feature level, as torchvision's FCOS/RetinaNet `forward` does before `postprocess_detections`."""
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    return split_outputs, split_anchors


def dense_heads_pass(model: Any, image_list: Any, features: dict[str, Tensor], targets: Any,
                     levels_in_loss: bool) -> tuple[dict[str, Tensor], Any]:
    """The loss and detection branches of torchvision's FCOS / RetinaNet `forward` on one set of head outputs (their
    heads have no train/eval switch). `levels_in_loss`: FCOS's compute_loss also takes the locations per level."""
    feats = list(features.values())
    head_outputs = model.head(feats)
    anchors = model.anchor_generator(image_list, feats)
    locations = locations_per_level(feats)
    losses = (model.compute_loss(targets, head_outputs, anchors, locations) if levels_in_loss
              else model.compute_loss(targets, head_outputs, anchors))
    per_location = head_outputs["cls_logits"].size(1) // sum(locations)  # anchors per location (FCOS: 1)
    split_outputs, split_anchors = split_levels(head_outputs, anchors, [n * per_location for n in locations])
    return losses, model.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)


def _is_stochastic(m: nn.Module) -> bool:
    if isinstance(m, _FROZEN_IN_VAL):
        return True
    return type(m).__name__ in ("DropPath", "DropBlock2d", "StochasticDepth")


def loss_mode(model: nn.Module) -> None:
    """Train mode (so torchvision returns losses) with every BatchNorm, dropout and drop-path module in eval mode."""
    model.train()
    for m in model.modules():
        if _is_stochastic(m):
            m.eval()


@torch.no_grad()
def losses_and_detections(model: nn.Module, spec: ModelSpec, images: list[torch.Tensor], targets: Targets,
                          seed: int = 0) -> tuple[dict[str, torch.Tensor], Targets]:
    """One backbone pass giving both the val losses (train-mode heads) and the detections (eval-mode heads).

    BatchNorm and dropout stay in eval mode throughout, so no buffer changes; samplers that are random in train mode
    (Faster R-CNN's RoI/anchor samplers) run under a fixed seed so val loss is repeatable. The family's
    `spec.heads_pass` runs the heads the way its torchvision `forward` does, split so the backbone runs once.
    """
    transform = cast("GeneralizedRCNNTransform", model.transform)  # every family's torchvision detector has both
    backbone = cast(nn.Module, model.backbone)
    was_training = model.training
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    loss_mode(model)
    tgts = model_targets(spec, images, targets)
    devices = [images[0].device] if images[0].device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            image_list, tgts_t = transform(images, tgts)
            features = backbone(image_list.tensors)
            losses, detections = spec.heads_pass(model, image_list, features, tgts_t)
        detections = transform.postprocess(detections, image_list.image_sizes, original_sizes)
    finally:
        model.train(was_training)
    return losses, detections
