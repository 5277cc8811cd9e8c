"""Put a trained model into the package as a shipped model: a slim copy under src/dfudet/zoo/ and its entry in
zoo/index.json (digest, what it returns, data, licence, test figures read from evaluate's metrics.json files).

    python scripts/ship_model.py --checkpoint runs/dfu_shipped/train/tuned_model.pth --name dfu-maskrcnn-lite0 \
        --test runs/dfu_shipped/report-test/metrics.json --shifted runs/shifted/report-test/metrics.json

The weights are stored in float32 (the trained model itself) unless `--storage float16` is given; `--int8-box-head`
stores the box head's fully connected layers as int8 rows and `--int8-mask-head` the mask head's convolutions (the
rest as --storage says). Every shipped model together must stay within 25 MB, or nothing is written. The figures
are copied from the reports as written (rounded once, to 3 decimals); docs/model_card.md gives the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dfudet.checkpoint import load_for_inference
from dfudet.export.slim import BOX_HEAD_FC, export_slim, mask_head_convs
from dfudet.inference.zoo import BUDGET_BYTES as BUDGET
from dfudet.inference.zoo import INDEX, file_sha256
from dfudet.utils import atomic_write_bytes, atomic_write_with


def _ci(m: dict[str, Any], key: str, value: float) -> str:
    ci = ((m.get("bootstrap") or {}).get("ci95") or {}).get(key)
    return f"{value:.3f} [{ci[0]:.3f}-{ci[1]:.3f}]" if ci else f"{value:.3f}"


def figures(test: Path | None, shifted: Path | None) -> dict[str, str]:
    """The index's figures from evaluate's metrics.json of the FUSeg test split and of the shifted test."""
    out: dict[str, str] = {}
    if test is not None:
        m = json.loads(test.read_text())
        at, coco = m["at_threshold"], m["coco"]
        out["FUSeg test AP50"] = _ci(m, "AP50", coco["AP50"])
        out["FUSeg test composite"] = _ci(m, "composite", at["composite"])
        for g in m.get("ulcer_free", []):
            if "healthy" in g["group"]:
                out["healthy feet with a false alarm"] = (
                    f"{g['photos_with_a_box']} of {g['photos']} ({g['share_with_a_box']:.3f}, 95% CI "
                    f"{g['ci95'][0]:.3f}-{g['ci95'][1]:.3f})")
        cal = m.get("calibration") or {}
        if cal.get("method"):
            out["test ECE"] = f"{cal['ece_raw']:.3f} raw -> {cal['ece_calibrated']:.3f} calibrated ({cal['method']})"
    if shifted is not None:
        m = json.loads(shifted.read_text())
        out["shifted test AP50"] = _ci(m, "AP50", m["coco"]["AP50"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--test", type=Path, help="metrics.json of `dfudet evaluate` on the FUSeg test split")
    ap.add_argument("--shifted", type=Path, help="metrics.json of `dfudet evaluate` on the shifted test")
    ap.add_argument("--index", type=Path, default=INDEX)
    ap.add_argument("--storage", choices=("float32", "float16"), default="float32",
                    help="float32: the trained weights as they are; float16: half the size, rounded (see the card)")
    ap.add_argument("--int8-box-head", action="store_true",
                    help="store the box head's two fully connected layers as int8 with per-row scales (the rest as "
                         "--storage says): 7.5 of the Lite0 Mask R-CNN's 11.9 M weights, the proposals stay exact")
    ap.add_argument("--int8-mask-head", action="store_true",
                    help="store the mask head's convolutions as int8 with per-output-channel scales: boxes and "
                         "scores stay exactly as they are, only outline edges move")
    a = ap.parse_args()
    file = a.index.parent / f"{a.name}.pth"
    index = json.loads(a.index.read_text()) if a.index.is_file() else {"models": []}
    models = [m for m in index["models"] if m["name"] != a.name]
    others = sum((a.index.parent / m["file"]).stat().st_size for m in models)
    info: dict[str, Any] = {}
    int8 = BOX_HEAD_FC if a.int8_box_head else ()
    if a.int8_mask_head:
        convs = mask_head_convs(load_for_inference(a.checkpoint).model_state_dict)
        if not convs:
            sys.exit(f"{a.checkpoint}: --int8-mask-head: this model has no mask head")
        int8 = (*int8, *convs)

    def write_within_budget(tmp: Path) -> None:
        # atomic_write_with moves the file into place only when this returns: a refused model leaves nothing behind
        info.update(export_slim(a.checkpoint, tmp, half=a.storage == "float16",
                                int8=int8))
        if others + info["bytes_out"] > BUDGET:
            sys.exit(f"{a.name}: {info['bytes_out'] / 1e6:.2f} MB in {info['storage_dtype']} (+ "
                     f"{others / 1e6:.2f} MB of the other shipped models) is over the "
                     f"{BUDGET / 1e6:.0f} MB budget; nothing written")

    atomic_write_with(file, write_within_budget)
    cfg = load_for_inference(file).config
    head = cfg.model.rcnn.box_head_size or 1024
    entry = {
        "name": a.name, "file": file.name, "sha256": file_sha256(file),
        "returns": "boxes, outlines, areas (mm² with a scale), calibrated confidence, triage label",
        "architecture": f"Mask R-CNN + EfficientNet-Lite0 (ImageNet) + FPN {cfg.model.fpn_channels}, box head {head}, "
                        f"{cfg.data.img_size} px, {info['storage_dtype']} storage",
        "training_data": "FUSeg 2021 train split (653 ulcer photos, wound masks) + 60 healthy-feet photos "
                         "(configs/splits/healthy_feet.csv)",
        "licence": "weights: non-commercial use only (trained on FUSeg, CC BY-NC); code Apache-2.0",
        "summary": "finds foot ulcers and outlines them; research and decision support, not a medical device",
        "figures": figures(a.test, a.shifted), "default": True,
    }
    for m in models:
        m["default"] = False
    index["models"] = [entry, *models]
    atomic_write_bytes(a.index, (json.dumps(index, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"{file}: {info['bytes_out'] / 1e6:.1f} MB ({info['storage_dtype']}), sha256 {entry['sha256']}; "
          f"{a.index} updated")


if __name__ == "__main__":
    main()
