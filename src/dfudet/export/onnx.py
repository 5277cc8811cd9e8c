"""Export a trained checkpoint to ONNX (+ a JSON sidecar) so a clinic laptop can run it with onnxruntime only.

What the graph does and does not contain (the contract OnnxPredictor implements):
- input `images`: float32 (1, 3, img_size, img_size), RGB, values 0..1, already resized (long side = img_size,
  bilinear) and zero-padded bottom/right to a square: exactly the eval transform of training.
- inside the graph: ImageNet/backbone normalisation, backbone, RPN + RoI heads (Faster R-CNN) or the dense head
  (FCOS), NMS, the minimum score (box_score_thresh).
- outputs: `boxes` (N, 4) xyxy in the padded square's pixels, `labels` (N,) int64, `scores` (N,) float32,
  sorted by score. Dividing boxes by the resize factor and clipping to the photo gives original coordinates.
  Outline models (`get_spec(name).masks`, e.g. maskrcnn_efficientnet) add `masks` (N, 1, img_size, img_size)
  float32: each detection's outline probability pasted into the padded square (torchvision's ONNX
  `paste_masks_in_image`), the same tensor the PyTorch model returns; the sidecar then says `"outlines": true`
  (box models: false).

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)` (torchvision's own ONNX test recipe). The
dynamo exporter needs the `onnxscript` package, which dfudet does not depend on. The traced graph unrolls
torchvision's per-image Python loops, so it runs one image per call: a batch-2 input fails inside onnxruntime
(Split node), so the input's batch axis is fixed at 1; OnnxPredictor loops over images.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from dfudet.errors import ConfigError
from dfudet.inference.onnx_predictor import ONNX_META_FORMAT, metadata_path
from dfudet.inference.predictor import Predictor
from dfudet.models.factory import get_spec
from dfudet.utils import atomic_write_bytes, sha256_file
from dfudet.version import CLASS_NAMES, __version__

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "labels", "scores")
MASK_OUTPUT = "masks"  # outline models only: (N, 1, img_size, img_size) probabilities
DEFAULT_OPSET = 17
MIN_OPSET = 11


def _named_outputs(model: Any, masks: bool = False) -> Any:
    """Wrap a torchvision detector so the traced graph returns (boxes, labels, scores[, masks]) in that order.

    The exporter flattens the output dict in its insertion order, which differs between detectors (Faster R-CNN:
    boxes, labels, scores; FCOS: boxes, scores, labels), so the names in OUTPUT_NAMES (+ MASK_OUTPUT for outline
    models) are bound explicitly here.
    """
    class NamedOutputs(torch.nn.Module):
        def __init__(self, detector: torch.nn.Module) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            det = self.detector(images)[0]
            named = (det["boxes"], det["labels"], det["scores"])
            return (*named, det[MASK_OUTPUT]) if masks else named

    return NamedOutputs(model).eval()


def output_names(outlines: bool) -> list[str]:
    """The graph's output names: boxes, labels, scores, and masks for an outline model."""
    return [*OUTPUT_NAMES, MASK_OUTPUT] if outlines else list(OUTPUT_NAMES)


def _grown_loop_states(graph: Any) -> int:
    """Declare a Loop's empty initial state (first dim 0) as of unknown length; returns how many were changed.

    torchvision's ONNX mask pasting (`_onnx_paste_masks_in_image_loop`) starts from zeros(0, H, W) and concatenates
    one mask per detection; the tracer records that start shape (0, H, W) on the loop body's state input, so
    onnxruntime infers (1, H, W) for every step and logs a shape-mismatch warning per detection at run time.
    """
    changed = 0
    for node in graph.graph.node:
        if node.op_type != "Loop":
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        for state in list(body.input)[2:]:  # inputs 0, 1: iteration number and condition
            dims = state.type.tensor_type.shape.dim
            if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 0:
                dims[0].dim_param = f"{state.name}_len"
                changed += 1
    return changed


def class_names(num_classes: int) -> list[str]:
    """Names of the model's labels 0..num_classes-1 (0 is background)."""
    names = list(CLASS_NAMES)
    return names[:num_classes] + [f"class_{k}" for k in range(len(names), num_classes)]


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write `out` (ONNX) and its JSON sidecar from a dfudet checkpoint; returns the sidecar's content."""
    if not MIN_OPSET <= int(opset) <= 21:
        raise ConfigError(f"--opset {opset} is out of range: torchvision detection export needs {MIN_OPSET}..21")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out}: the output file name must end in .onnx")

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    model, size, info = predictor.model.eval(), predictor.img_size, predictor.info
    spec = get_spec(info.identity.model_name)
    example = torch.zeros(1, 3, size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad(), spec.export_context():
            warnings.simplefilter("ignore")  # tracer warnings about python values in torchvision are expected
            torch.onnx.export(_named_outputs(model, spec.masks), (example,), str(tmp), dynamo=False,
                              opset_version=int(opset), input_names=[INPUT_NAME],
                              output_names=output_names(spec.masks), do_constant_folding=True)
        import onnx  # lazy: optional `deploy` extra, needed only to check the written file

        graph = onnx.load(str(tmp))
        if _grown_loop_states(graph):
            onnx.save(graph, str(tmp))
        onnx.checker.check_model(str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)

    meta = {
        "format": ONNX_META_FORMAT,
        "onnx_file": out.name,
        "onnx_sha256": sha256_file(out),
        "img_size": size,  # the input side of the graph (the training side is identity.img_size)
        "identity": info.identity.as_dict(),
        "operating_threshold": float(predictor.operating_threshold),
        "review_threshold": predictor.review_threshold,
        "calibration": None if predictor.calibration is None else predictor.calibration.as_dict(),
        "min_score": predictor.min_score,
        "max_detections": predictor.max_detections,
        "class_names": class_names(info.identity.num_classes),
        "composite_weights": info.composite_weights.model_dump(),
        "source_checkpoint": checkpoint.name,
        "source_checkpoint_sha256": sha256_file(checkpoint),
        "epoch": info.epoch,
        "origin": info.origin,
        "input": {"name": INPUT_NAME, "shape": [1, 3, size, size], "dtype": "float32", "layout": "NCHW RGB",
                  "range": [0.0, 1.0],
                  "preprocessing": (f"resize so the long side is {size} px (bilinear, new side = round(side * "
                                    f"{size} / max(h, w))), pad bottom/right with 0 to {size}x{size}, divide by 255; "
                                    "normalisation is inside the graph")},
        "outputs": {"boxes": "(N, 4) float32 xyxy in input pixels; divide by the resize factor and clip to the "
                             "photo for original coordinates",
                    "labels": "(N,) int64, index into class_names", "scores": "(N,) float32, descending",
                    **({MASK_OUTPUT: f"(N, 1, {size}, {size}) float32 outline probabilities in input pixels; crop "
                                     "the photo's part, resize it to the photo (bilinear), threshold at 0.5"}
                       if spec.masks else {})},
        "outlines": spec.masks,
        "opset": int(opset),
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript-based)",
        "torch_version": torch.__version__.split("+")[0],
        "dfudet_version": __version__,
    }
    atomic_write_bytes(metadata_path(out), (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    return meta


def export_into_cache(checkpoint: str | Path, out: str | Path) -> Path:
    """Export `checkpoint` to `out` (and its sidecar) for reuse by later runs, e.g. a shipped model's ONNX copy that
    `dfudet predict` runs through ONNX Runtime.

    The export is written in a private temp folder beside `out` and moved into place model first, sidecar last, so a
    reader that finds the sidecar finds a whole model, and two processes exporting at once do not mix their files.

    Args:
        checkpoint: the checkpoint to export.
        out: the .onnx path to write (its folder is created).

    Returns:
        `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        export_onnx(checkpoint, work / out.name)
        if not (out.is_file() and metadata_path(out).is_file()):  # else another process finished first: keep its pair
            os.replace(work / out.name, out)
            os.replace(metadata_path(work / out.name), metadata_path(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
