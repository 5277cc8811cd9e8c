"""Deployment does not load the training stack: predict, serve start-up and ONNX prediction run in a fresh
interpreter without importing Lightning or dfudet.engine (and ONNX prediction without torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.checkpoint import save_model_checkpoint
from dfudet.config import load_config
from dfudet.models.factory import build_detector

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
TRAINING = ("lightning", "pytorch_lightning", "lightning_fabric", "dfudet.engine", "tensorboard")

PROBE = """
import json, sys
{body}
print("MODULES=" + json.dumps(sorted(m for m in sys.modules
                                     if m.split('.')[0] in {roots!r} or m.startswith('dfudet.engine'))))
"""


def _run(body: str, roots: tuple[str, ...]) -> list[str]:
    code = PROBE.format(body=body, roots={r for r in roots if "." not in r})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("MODULES=")][-1]
    return json.loads(line[len("MODULES="):])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deploy")
    cfg = load_config(None, [f"model.name={MODEL}", "model.pretrained=false", "data.img_size=96"])
    model = build_detector(cfg.model, 96)
    ckpt = root / "best_model.pth"
    save_model_checkpoint(ckpt, model.state_dict(), cfg, epoch=0)
    photo = root / "foot.jpg"
    Image.fromarray((np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8)).save(photo)
    return ckpt, photo


def test_predict_from_a_checkpoint_imports_no_training_code(deployed, tmp_path: Path):
    ckpt, photo = deployed
    body = (f"from dfudet.cli import main\n"
            f"assert main(['predict', {str(photo)!r}, '--checkpoint', {str(ckpt)!r}, '--out', {str(tmp_path)!r}]) == 0")
    assert _run(body, TRAINING) == []
    assert (tmp_path / "predictions.json").is_file()


def test_serve_start_up_imports_no_training_code(deployed):
    ckpt, photo = deployed
    body = (f"from fastapi.testclient import TestClient\n"
            f"from dfudet.inference.loader import load_backend\n"
            f"from dfudet.serve.app import create_app\n"
            f"with TestClient(create_app(load_backend(checkpoint={str(ckpt)!r}))) as c:\n"
            f"    assert c.get('/healthz').json()['status'] == 'ok'\n"
            f"    r = c.post('/v1/detect', files={{'file': ('f.jpg', open({str(photo)!r}, 'rb').read())}})\n"
            f"    assert r.status_code == 200, r.text")
    assert _run(body, TRAINING) == []


@pytest.mark.slow
def test_onnx_prediction_imports_neither_torch_nor_training_code(deployed, tmp_path: Path):
    from dfudet.export.onnx import export_onnx

    ckpt, photo = deployed
    export_onnx(ckpt, tmp_path / "model.onnx")
    body = (f"from dfudet.cli import main\n"
            f"assert main(['predict', {str(photo)!r}, '--onnx', {str(tmp_path / 'model.onnx')!r}, '--out', "
            f"{str(tmp_path / 'out')!r}]) == 0")
    assert _run(body, (*TRAINING, "torch", "torchvision", "timm")) == []
    assert (tmp_path / "out" / "predictions.json").is_file()
