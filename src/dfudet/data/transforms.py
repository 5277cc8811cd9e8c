"""Box-aware albumentations pipelines: random training augmentation and a deterministic eval resize + pad.

Both end with "resize the long side to img_size, pad bottom/right to img_size x img_size", so boxes keep their
coordinates relative to the top-left corner and a batch has one shape. Boxes are clipped and degenerate ones removed
BEFORE albumentations sees them (it raises on zero-area boxes). In training, a random draw that would drop a box
(less than `min_visibility` of its area left in view, or smaller than `min_box_size` px on a side) is redrawn up to
`MAX_DRAWS` times, then the sample falls back to the plain resize + pad (where only boxes already below
`min_box_size` at img_size are dropped): a dropped box would leave (part of) an ulcer in the picture labelled as
background, and an ulcer photo whose boxes all vanish would become a false negative example. On FUSeg (many 5-16 px
ulcers) 2 of 1,670 boxes were dropped per 2 epochs without the redraw. The eval transform never drops a box
(evaluation must see every ground-truth box).

Wound masks (`with_masks`) move with the image (nearest neighbour, zero fill), stay in step with their boxes, and
then define the boxes: each box becomes its moved mask's tight box.
"""

from __future__ import annotations

import os
import random
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dfudet.config import AugmentConfig  # noqa: E402
from dfudet.data.instance_masks import tight_boxes as mask_boxes  # noqa: E402
from dfudet.errors import DataError  # noqa: E402

_LABELS = "labels"
MAX_DRAWS = 4  # random draws per training sample before falling back to resize + pad


def clean_boxes(boxes: np.ndarray, width: int, height: int, min_size: float = 0.0) -> np.ndarray:
    """Clip xyxy boxes to the image and drop non-finite, zero-area or smaller-than-min_size ones."""
    return kept_boxes(boxes, width, height, min_size)[0]


def kept_boxes(boxes: np.ndarray, width: int, height: int, min_size: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`clean_boxes` and the indices of the input boxes it kept (to keep masks in step with their boxes)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    idx = np.flatnonzero(np.all(np.isfinite(b), axis=1))
    b = b[idx]
    b = np.stack([np.clip(b[:, 0], 0, width), np.clip(b[:, 1], 0, height),
                  np.clip(b[:, 2], 0, width), np.clip(b[:, 3], 0, height)], axis=1) if len(b) else b
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (w > 1e-3) & (h > 1e-3) & (w >= min_size) & (h >= min_size)
    return np.ascontiguousarray(b[keep], dtype=np.float32), idx[keep]


def _resize_pad(img_size: int) -> list[A.BasicTransform]:
    return [
        A.LongestMaxSize(max_size=img_size, interpolation=cv2.INTER_LINEAR),
        A.PadIfNeeded(min_height=img_size, min_width=img_size, position="top_left",
                      border_mode=cv2.BORDER_CONSTANT, fill=0),
    ]


def _photo_conditions(a: dict[str, Any]) -> list[A.BasicTransform]:
    """Colour cast, low resolution and JPEG re-compression (the steps whose probability is 0 are left out, so a
    config without them draws the same random numbers as before they existed)."""
    steps: list[A.BasicTransform] = []
    if a.get("color_cast", 0.0) > 0:
        steps.append(A.OneOf([A.RGBShift(r_shift_limit=20, g_shift_limit=15, b_shift_limit=20, p=1.0),
                              A.RandomGamma(gamma_limit=(70, 140), p=1.0)], p=a["color_cast"]))
    if a.get("low_res", 0.0) > 0:
        steps.append(A.Downscale(scale_range=(0.25, 0.6), p=a["low_res"]))
    if a.get("jpeg", 0.0) > 0:
        steps.append(A.ImageCompression(quality_range=(30, 90), p=a["jpeg"]))
    return steps


class DetectionTransform:
    """Picklable callable `(image HWC uint8, boxes (N,4)) -> (image, boxes, scale)` around an albumentations pipeline.

    The pipeline is built lazily (and rebuilt after unpickling), so spawn workers receive only plain settings.
    """

    def __init__(self, img_size: int, aug: dict[str, Any] | None = None) -> None:
        self.img_size = int(img_size)
        self.aug = dict(aug) if aug is not None else None  # None = eval (resize + pad only)
        self._pipeline: A.Compose | None = None
        self._fallback: A.Compose | None = None

    @property
    def train(self) -> bool:
        """True when this transform is random (training augmentation)."""
        return self.aug is not None

    def __getstate__(self) -> dict[str, Any]:
        return {"img_size": self.img_size, "aug": self.aug, "_pipeline": None, "_fallback": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _build(self, eval_only: bool = False) -> A.Compose:
        a = self.aug
        if a is None or eval_only:
            steps = _resize_pad(self.img_size)
            params = A.BboxParams(format="pascal_voc", label_fields=[_LABELS], min_visibility=0.0, clip=True)
        else:
            steps = [
                A.HorizontalFlip(p=a["hflip"]),
                A.VerticalFlip(p=a["vflip"]),
                A.RandomRotate90(p=a["rotate90"]),
                # ellipse: a rotated roundish ulcer keeps a tight box instead of the rotated rectangle's hull
                A.Affine(scale=(a["scale_min"], a["scale_max"]), rotate=(-a["rotate_limit"], a["rotate_limit"]),
                         keep_ratio=True, rotate_method="ellipse", border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
                # zoom into a random region around the boxes; erosion lets it cut boxes, min_visibility drops them
                A.BBoxSafeRandomCrop(erosion_rate=0.2, p=a["crop_prob"]),
                A.RandomBrightnessContrast(brightness_limit=a["brightness_contrast"],
                                           contrast_limit=a["brightness_contrast"],
                                           p=0.5 if a["brightness_contrast"] > 0 else 0.0),
                A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=a["hue_saturation"]),
                A.GaussianBlur(blur_limit=(3, 5), p=a["blur"]),
                *_photo_conditions(a),
                *_resize_pad(self.img_size),
            ]
            params = A.BboxParams(format="pascal_voc", label_fields=[_LABELS], min_visibility=a["min_visibility"],
                                  clip=True, filter_invalid_bboxes=True)
        return A.Compose(steps, bbox_params=params, seed=0)

    @property
    def pipeline(self) -> A.Compose:
        """The albumentations Compose (built on first use)."""
        if self._pipeline is None:
            self._pipeline = self._build()
        return self._pipeline

    def set_random_seed(self, seed: int) -> None:
        """Re-seed all random draws of the pipeline (one shared generator, so steps draw independent numbers)."""
        self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        img, result, _, scale = self.with_masks(image, boxes, None)
        return img, result, scale

    def with_masks(self, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
        """(image, boxes, masks, scale): the (N, H, W) uint8 masks, one per box, move with the image (nearest
        neighbour, zero fill) and stay in step with their boxes when a box is dropped; None when there are none."""
        h, w = image.shape[:2]
        n_given = len(np.asarray(boxes).reshape(-1, 4))
        boxes, idx = kept_boxes(boxes, w, h)
        if masks is not None:
            masks = np.asarray(masks, dtype=np.uint8)
            if masks.shape != (n_given, h, w):
                raise DataError(f"masks of shape {masks.shape} for {n_given} boxes in a {w}x{h} image; expected "
                                f"({n_given}, {h}, {w})")
            masks = masks[idx]
        if self.aug is None:
            img, result, out_masks = self._apply(self.pipeline, image, boxes, masks, 0.0)
            return img, result, out_masks, self.img_size / max(h, w)
        # Training: the geometry is random, so no single factor maps back to the input; report 1.0 ("unknown").
        min_size = float(self.aug["min_box_size"])
        for _ in range(MAX_DRAWS):
            img, result, out_masks = self._apply(self.pipeline, image, boxes, masks, min_size)
            if len(result) == len(boxes):
                return img, result, out_masks, 1.0
        if self._fallback is None:
            self._fallback = self._build(eval_only=True)
        # drops only boxes already tiny
        img, result, out_masks = self._apply(self._fallback, image, boxes, masks, min_size)
        return img, result, out_masks, 1.0

    @staticmethod
    def _apply(pipeline: A.Compose, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None,
               min_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        # labels carry each box's index, so the masks of the boxes albumentations keeps can be picked out
        labels = np.arange(len(boxes), dtype=np.int64)
        if masks is None or not len(masks):
            out = pipeline(image=image, bboxes=boxes, labels=labels)
        else:
            out = pipeline(image=image, bboxes=boxes, labels=labels, masks=list(masks))
        img = out["image"]
        h, w = img.shape[:2]
        result = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        survivors = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        if masks is None:
            return img, kept_boxes(result, w, h, min_size=min_size)[0], None
        if not len(masks):
            return img, kept_boxes(result, w, h, min_size=min_size)[0], np.zeros((0, h, w), np.uint8)
        moved = np.asarray(out["masks"], dtype=np.uint8).reshape(len(masks), h, w)[survivors]
        # With masks the box is the moved mask's own tight box: exact after rotation and scaling (albumentations'
        # rotated box is an approximation). A mask that resampling emptied (a 1-2 px ulcer scaled down) keeps
        # albumentations' box, so no box is lost to it.
        tight = mask_boxes(moved)
        empty = ~moved.any(axis=(1, 2))
        tight[empty] = result[empty]
        result, keep = kept_boxes(tight, w, h, min_size=min_size)
        return img, result, np.ascontiguousarray(moved[keep])


def build_train_transform(aug: AugmentConfig, img_size: int) -> DetectionTransform:
    """Random box-aware augmentation for training (the eval transform when augmentation is disabled)."""
    if not aug.enabled:
        return build_eval_transform(img_size)
    return DetectionTransform(img_size, aug.model_dump())


def build_eval_transform(img_size: int) -> DetectionTransform:
    """Deterministic LongestMaxSize(img_size) + PadIfNeeded to img_size x img_size at the top-left."""
    return DetectionTransform(img_size, None)
