"""How a validation split is scored: the one rule training (each val epoch) and `dfudet tune` (each input size) share.

The operating threshold is swept on the split (``best_threshold`` with the recall floor); the selection scores are
read at that threshold (``select_at: operating``) or at the config's fixed one; COCO AP50 and AP50:95 (pycocotools,
every detection) are added because they are threshold-free. Written once so a tuned checkpoint's val scores and a
trained one's mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dfudet.metrics.coco import coco_map
from dfudet.metrics.scores import Scores, ValidationScores, best_threshold, detection_scores


class ValidationRule(Protocol):
    """The settings the scoring reads (`dfudet.config.TrainConfig` has them; metrics does not import the config)."""

    @property
    def iou_threshold(self) -> float: ...
    @property
    def composite_weights(self) -> Any: ...
    @property
    def operating_min_recall(self) -> float: ...
    @property
    def select_at(self) -> str: ...
    @property
    def selection_threshold(self) -> float: ...


@dataclass(frozen=True)
class ValidationPass:
    """The scores of one pass over a val split, before losses are attached."""

    operating: Scores  # at the threshold swept on val (what predict/serve use)
    at_selection: Scores  # at the selection threshold (`operating` itself with select_at: operating)
    ap50: float
    ap50_95: float

    def scores(self, *, train_loss: float = math.nan, val_loss: float = math.nan,
               lr: float = math.nan) -> ValidationScores:
        """The `ValidationScores` (checkpoint, metrics.csv fields) of this pass with the given losses and lr."""
        return ValidationScores.from_scores(self.at_selection, self.operating, ap50=self.ap50, ap50_95=self.ap50_95,
                                            train_loss=train_loss, val_loss=val_loss, lr=lr)


def score_validation(preds: Sequence[tuple[Any, Any]], gts: Sequence[Any], rule: ValidationRule) -> ValidationPass:
    """Score a val split by the training rule.

    Args:
        preds: per image, (boxes (N, 4) xyxy, scores (N,)): every detection down to the model's min_score.
        gts: per image, the true boxes (M, 4) xyxy in the same pixels.
        rule: the run's `train` settings (iou_threshold, composite_weights, operating_min_recall, select_at,
            selection_threshold).

    Returns:
        The operating and selection scores and the COCO APs.
    """
    _, op = best_threshold(preds, gts, iou_threshold=rule.iou_threshold, weights=rule.composite_weights,
                           min_recall=rule.operating_min_recall)
    at = op if rule.select_at == "operating" else detection_scores(
        preds, gts, score_threshold=rule.selection_threshold, iou_threshold=rule.iou_threshold,
        weights=rule.composite_weights)
    ap = coco_map(preds, gts)
    return ValidationPass(op, at, float(ap["AP50"]), float(ap["AP50_95"]))
