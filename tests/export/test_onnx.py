"""ONNX export: the exported graph + OnnxPredictor reproduce the PyTorch Predictor (boxes <= 1 px, scores <= 1e-3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from _checkpoints import FCOS_OVERRIDES, IMG_SIZE, MODEL, train_demo_checkpoint
from dfudet.data.demo import render_sample
from dfudet.errors import CheckpointError, ConfigError
from dfudet.export.onnx import export_onnx, metadata_path
from dfudet.inference.loader import load_backend
from dfudet.inference.onnx_predictor import OnnxPredictor, resize_pad
from dfudet.inference.predictor import Predictor
from dfudet.utils import sha256_file


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx")
    ckpt = train_demo_checkpoint(root / "best_model.pth")
    onnx_path = root / "model.onnx"
    export_onnx(ckpt, onnx_path)
    return ckpt, onnx_path


def _images() -> list[np.ndarray]:
    """Demo photos of several sizes and aspect ratios (upscaled, downscaled, portrait, landscape, unchanged)."""
    import cv2

    base = [render_sample(7, i, 160, healthy=i % 2 == 1).image for i in range(5)]
    shapes = [(160, 160), (97, 211), (300, 180), (128, 128), (61, 75)]
    return [cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im, (h, w) in zip(base, shapes)]


def test_sidecar_metadata_describes_model_and_source(exported: tuple[Path, Path]):
    ckpt, onnx_path = exported
    meta = json.loads(metadata_path(onnx_path).read_text())
    assert meta["img_size"] == IMG_SIZE
    assert meta["operating_threshold"] == pytest.approx(0.3)
    assert meta["class_names"] == ["background", "ulcer"]
    assert meta["source_checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["onnx_sha256"] == sha256_file(onnx_path)
    assert meta["identity"] == {"model_name": MODEL, "backbone": MODEL, "img_size": IMG_SIZE, "num_classes": 2}
    assert meta["input"]["shape"] == [1, 3, IMG_SIZE, IMG_SIZE]
    assert meta["outlines"] is False and "masks" not in meta["outputs"]


def test_a_sidecar_of_another_format_or_identity_is_refused(exported: tuple[Path, Path], tmp_path: Path):
    _, onnx_path = exported
    meta = json.loads(metadata_path(onnx_path).read_text())
    assert meta["format"] == "dfudet-onnx-v3" and "score_threshold" not in meta and "model_name" not in meta
    old = tmp_path / "old.onnx"
    old.write_bytes(onnx_path.read_bytes())
    v2 = {k: v for k, v in meta.items() if k != "identity"}  # the unreleased v2: identity fields at the top level
    metadata_path(old).write_text(json.dumps({**v2, **meta["identity"], "img_size": IMG_SIZE,
                                              "format": "dfudet-onnx-v2"}))
    with pytest.raises(CheckpointError, match=r"old.json: sidecar format 'dfudet-onnx-v2'; this dfudet reads "
                                              r"'dfudet-onnx-v3' only; export the model again"):
        OnnxPredictor(old)
    metadata_path(old).write_text(json.dumps({**meta, "identity": {**meta["identity"], "num_classes": "2"}}))
    with pytest.raises(CheckpointError, match="old.json: the model identity field 'num_classes' must be an integer"):
        OnnxPredictor(old)
    metadata_path(old).write_text(json.dumps({**meta, "operating_threshold": 0.61}))
    pred = OnnxPredictor(old)
    assert pred.operating_threshold == 0.61 and pred.threshold_source == "model metadata operating_threshold"
    assert pred.info.identity == Predictor.from_checkpoint(exported[0]).info.identity  # the checkpoint's own


def test_a_sidecar_claiming_outlines_for_a_box_graph_is_refused(exported: tuple[Path, Path], tmp_path: Path):
    _, onnx_path = exported
    meta = json.loads(metadata_path(onnx_path).read_text())
    odd = tmp_path / "odd.onnx"
    odd.write_bytes(onnx_path.read_bytes())
    metadata_path(odd).write_text(json.dumps({**meta, "outlines": True}))
    with pytest.raises(CheckpointError, match=r"odd\.json says the model outlines each detection.*no 'masks'"):
        OnnxPredictor(odd)
    metadata_path(odd).write_text(json.dumps({**meta, "outlines": "yes"}))
    with pytest.raises(CheckpointError, match="outlines must be true or false"):
        OnnxPredictor(odd)


def test_preprocessing_matches_the_training_eval_transform():
    from dfudet.data.transforms import build_eval_transform

    tf = build_eval_transform(IMG_SIZE)
    for im in _images():
        ref, _, ref_scale = tf(im, np.zeros((0, 4), np.float32))
        ours, scale = resize_pad(im, IMG_SIZE)
        assert scale == pytest.approx(ref_scale)
        assert np.array_equal(ours, ref.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))


@pytest.mark.slow
def test_onnx_matches_pytorch_within_1px_and_1e3(exported: tuple[Path, Path]):
    _assert_parity(*exported)


@pytest.mark.slow
def test_fcos_onnx_matches_pytorch_within_1px_and_1e3(tmp_path: Path):
    ckpt = train_demo_checkpoint(tmp_path / "best_model.pth", overrides=FCOS_OVERRIDES)
    meta = export_onnx(ckpt, tmp_path / "fcos.onnx")
    assert meta["identity"]["model_name"] == "fcos_timm" and meta["identity"]["backbone"] == "resnet10t"
    assert meta["min_score"] == pytest.approx(0.05) and meta["max_detections"] == 30
    _assert_parity(ckpt, tmp_path / "fcos.onnx")


def _assert_parity(ckpt: Path, onnx_path: Path) -> None:
    torch_pred = Predictor.from_checkpoint(ckpt)
    onnx_pred = OnnxPredictor(onnx_path)
    assert onnx_pred.operating_threshold == torch_pred.operating_threshold
    images = _images()
    compared = 0
    for im, ref, got in zip(images, torch_pred.predict_arrays(images), onnx_pred.predict_arrays(images)):
        assert (got.width, got.height) == (ref.width, ref.height) == (im.shape[1], im.shape[0])
        ref_kept, got_kept = torch_pred.keep(ref), onnx_pred.keep(got)
        assert len(got_kept.scores) == len(ref_kept.scores), "different box count above the threshold"
        assert len(got.scores) == len(ref.scores)
        if not len(ref.scores):
            continue
        cost = np.abs(ref.boxes[:, None] - got.boxes[None]).max(-1)
        rows, cols = linear_sum_assignment(cost)
        assert np.abs(ref.boxes[rows] - got.boxes[cols]).max() <= 1.0
        assert np.abs(ref.scores[rows] - got.scores[cols]).max() <= 1e-3
        compared += len(rows)
    scores = np.concatenate([r.scores for r in torch_pred.predict_arrays(images)])
    assert compared >= 20 and len(np.unique(scores.round(4))) > 5, "the parity check needs many distinct boxes"


def test_bad_inputs_are_refused_clearly(exported: tuple[Path, Path], tmp_path: Path):
    ckpt, onnx_path = exported
    with pytest.raises(ConfigError, match="must end in .onnx"):
        export_onnx(ckpt, tmp_path / "m.bin")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(onnx_path.read_bytes())
    with pytest.raises(CheckpointError, match=r"lonely\.json: metadata file missing"):
        OnnxPredictor(lonely)
    with pytest.raises(ConfigError, match="--tta is not available with --onnx"):
        load_backend(onnx=onnx_path, tta=True)


def test_onnx_predictor_module_does_not_import_torch(exported: tuple[Path, Path]):
    """A clinic laptop has numpy + onnxruntime + OpenCV/PIL only: loading and running must not pull in torch."""
    _, onnx_path = exported
    code = (
        "import sys, numpy as np\n"
        "from dfudet.inference.onnx_predictor import OnnxPredictor\n"
        f"p = OnnxPredictor({str(onnx_path)!r})\n"
        "r = p.predict_arrays([np.zeros((50, 70, 3), np.uint8)])[0]\n"
        "assert (r.width, r.height) == (70, 50)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cli_export_writes_model_and_metadata(exported: tuple[Path, Path], tmp_path: Path):
    from dfudet.cli import main

    ckpt, _ = exported
    out = tmp_path / "cli" / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out), "--opset", "13"]) == 0
    assert out.is_file() and json.loads(metadata_path(out).read_text())["opset"] == 13
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2


def test_fast_roi_merge_equals_torchvisions_scatter_merge():
    """The export swaps torchvision's ScatterElements RoI merge for a gather; both must give identical tensors."""
    from torchvision.ops.poolers import _onnx_merge_levels

    from dfudet.models.fasterrcnn import _merge_levels_by_gather

    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 4, (50,), generator=g)
    unmerged = [torch.randn(int((levels == k).sum()), 8, 7, 7, generator=g) for k in range(4)]
    assert all(len(u) for u in unmerged)
    assert torch.equal(_merge_levels_by_gather(levels, unmerged), _onnx_merge_levels(levels, unmerged))


def test_cli_predict_with_onnx_gives_the_pytorch_outputs(exported: tuple[Path, Path], tmp_path: Path):
    import json

    from PIL import Image

    from dfudet.cli import main

    ckpt, onnx_path = exported
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(_images()[:3]):
        Image.fromarray(img).save(folder / f"p{i}.png")
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pt")]) == 0
    assert main(["predict", str(folder), "--onnx", str(onnx_path), "--out", str(tmp_path / "ox")]) == 0
    pt = {im["file"]: im for im in json.loads((tmp_path / "pt" / "predictions.json").read_text())["images"]}
    ox = {im["file"]: im for im in json.loads((tmp_path / "ox" / "predictions.json").read_text())["images"]}
    assert pt.keys() == ox.keys() and len(pt) == 3
    n_boxes = 0
    for name, p in pt.items():
        o = ox[name]
        assert len(p["boxes"]) == len(o["boxes"])
        n_boxes += len(p["boxes"])
        if p["boxes"]:
            assert np.abs(np.asarray(p["boxes"]) - np.asarray(o["boxes"])).max() <= 1.0
            assert np.abs(np.asarray(p["scores"]) - np.asarray(o["scores"])).max() <= 1e-3
    assert n_boxes > 0
    with pytest.raises(SystemExit):  # both model sources at once is refused by the parser
        main(["predict", str(folder), "--onnx", str(onnx_path), "--checkpoint", str(ckpt),
              "--out", str(tmp_path / "x")])
