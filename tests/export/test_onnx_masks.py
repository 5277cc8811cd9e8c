"""ONNX export of an outline model (Mask R-CNN): the graph carries the masks, the sidecar says so, and
OnnxPredictor's outlines match the PyTorch Predictor's (boxes <= 1 px, scores <= 1e-3, outline IoU >= 0.99)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from scipy.optimize import linear_sum_assignment

from _checkpoints import IMG_SIZE, MASK_OVERRIDES, train_demo_checkpoint
from dfudet.data import instance_masks
from dfudet.data.demo import render_sample
from dfudet.export.onnx import export_onnx, metadata_path
from dfudet.inference.backend import Detections
from dfudet.inference.loader import load_backend
from dfudet.inference.onnx_predictor import OnnxPredictor
from dfudet.inference.predictor import Predictor


@pytest.fixture(scope="module")
def exported_masks(mask_checkpoint: Path, mask_onnx: Path) -> tuple[Path, Path]:
    """A small Mask R-CNN checkpoint (3 SGD steps: many distinct low scores) and its ONNX export (the session's)."""
    return mask_checkpoint, mask_onnx


def _images() -> list[np.ndarray]:
    """Demo ulcer photos resized to square, landscape, portrait, model-sized and small shapes."""
    shapes = [(160, 160), (90, 200), (260, 150), (IMG_SIZE, IMG_SIZE), (70, 57)]
    return [cv2.resize(render_sample(11, i, 160, healthy=False).image, (w, h), interpolation=cv2.INTER_AREA)
            for i, (h, w) in enumerate(shapes)]


def _mask_iou(a: dict, b: dict) -> float:
    """IoU of two RLE outlines (1.0 when both are empty)."""
    ma, mb = instance_masks.decode(a), instance_masks.decode(b)
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else int((ma & mb).sum()) / union


SCORE_TOL = 1e-3


def _matched(ref: Detections, got: Detections) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of (PyTorch, ONNX) detections matched by largest box-coordinate difference.

    PyTorch detections scored within SCORE_TOL of the lower of the two lists' last kept scores are left out: at the
    cut-off (detections_per_img, min_score) two near-tied candidates can swap places when float rounding moves their
    scores by up to SCORE_TOL, so each backend keeps a different one (seen with one thread per process, `make test`).
    Every detection above that band must be in both lists.
    """
    cut = min(float(ref.scores.min()), float(got.scores.min())) + SCORE_TOL
    above = np.flatnonzero(ref.scores > cut)
    cost = np.abs(ref.boxes[above][:, None] - got.boxes[None]).max(-1)
    rows, cols = linear_sum_assignment(cost)
    return above[rows], cols


def test_sidecar_and_graph_carry_the_outlines(exported_masks: tuple[Path, Path]):
    _, onnx_path = exported_masks
    meta = json.loads(metadata_path(onnx_path).read_text())
    assert meta["format"] == "dfudet-onnx-v3" and meta["outlines"] is True
    assert meta["identity"]["model_name"] == "maskrcnn_efficientnet" and "masks" in meta["outputs"]
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == ["boxes", "labels", "scores", "masks"]
    assert len(graph.output[3].type.tensor_type.shape.dim) == 4
    pred = OnnxPredictor(onnx_path)
    assert pred.info.outlines and pred.info.summary()["outlines"] is True


def test_onnx_outlines_match_pytorch(exported_masks: tuple[Path, Path]):
    """Every detection down to min_score on five photo shapes: same boxes, scores and outlines in both backends."""
    ckpt, onnx_path = exported_masks
    torch_pred, onnx_pred = Predictor.from_checkpoint(ckpt), load_backend(onnx=onnx_path)
    images = _images()
    compared, ious, areas = 0, [], []
    for im, ref, got in zip(images, torch_pred.predict_arrays(images), onnx_pred.predict_arrays(images)):
        assert (got.width, got.height) == (ref.width, ref.height) == (im.shape[1], im.shape[0])
        assert ref.masks is not None and got.masks is not None
        assert len(got.scores) == len(ref.scores) == len(got.masks) == len(ref.masks)
        if not len(ref.scores):
            continue
        rows, cols = _matched(ref, got)
        assert np.abs(ref.boxes[rows] - got.boxes[cols]).max() <= 1.0
        assert np.abs(ref.scores[rows] - got.scores[cols]).max() <= SCORE_TOL
        for r, c in zip(rows, cols):
            assert got.masks[c]["size"] == [im.shape[0], im.shape[1]]
            ious.append(_mask_iou(ref.masks[r], got.masks[c]))
        areas += [instance_masks.area(r) for r in ref.masks or ()]
        compared += len(rows)
    assert compared >= 20 and sum(a > 0 for a in areas) >= 10, "the parity check needs many non-empty outlines"
    assert min(ious) >= 0.99, f"outline IoU {min(ious):.3f} < 0.99"


def test_operating_threshold_keeps_outlines_with_their_boxes(exported_masks: tuple[Path, Path]):
    _, onnx_path = exported_masks
    pred = OnnxPredictor(onnx_path)
    det = pred.predict_arrays(_images()[:1])[0]
    assert det.masks is not None and len(det.scores) > 1
    cut = float(np.median(det.scores))
    kept = pred.keep(det, cut)
    assert kept.masks is not None and len(kept.masks) == len(kept.scores) == int((det.scores >= cut).sum())
    assert kept.masks == tuple(m for m, s in zip(det.masks, det.scores) if s >= cut)


def test_a_photo_without_detections_has_an_empty_outline_list(tmp_path: Path):
    """A model whose minimum score nothing reaches: the graph's mask loop runs zero times (traced that way too)."""
    silent = (*MASK_OVERRIDES, "model.box_score_thresh=0.99")
    ckpt = train_demo_checkpoint(tmp_path / "best_model.pth", overrides=silent)
    export_onnx(ckpt, tmp_path / "m.onnx")
    images = _images()[:2]
    for backend in (Predictor.from_checkpoint(ckpt), OnnxPredictor(tmp_path / "m.onnx")):
        for det in backend.predict_arrays(images):
            assert det.masks == () and det.boxes.shape == (0, 4) and [instance_masks.area(r) for r in det.masks] == []


def test_outlines_without_torch(exported_masks: tuple[Path, Path]):
    """The outline path (RLEs from the mask output) runs on numpy, OpenCV, pycocotools and onnxruntime only."""
    _, onnx_path = exported_masks
    code = (
        "import sys, numpy as np\n"
        "from dfudet.data.demo import render_sample\n"
        "from dfudet.inference.onnx_predictor import OnnxPredictor\n"
        f"p = OnnxPredictor({str(onnx_path)!r})\n"
        "r = p.predict_arrays([render_sample(11, 0, 100, healthy=False).image])[0]\n"
        "assert r.masks is not None and len(r.masks) == len(r.scores) > 0, len(r.scores)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert "VerifyOutputSizes" not in out.stderr, "onnxruntime warns about a mis-declared shape in the graph"
