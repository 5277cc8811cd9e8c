"""A contact sheet of an evaluate run: N seeded-random images of the split, ground truth (green) and the detections
kept at the report's threshold (red, with scores), tiled into one JPEG (docs/experiments.md uses it).

    python scripts/contact_sheet.py runs/fuseg_cpu_fcos/report-test --out docs/img/fuseg_test_predictions.jpg --n 12
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dfudet.data.checks import load_pil
from dfudet.inference.draw import draw_detections, save_jpeg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="an output directory of `dfudet evaluate`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--cols", type=int, default=4)
    ap.add_argument("--tile", type=int, default=320, help="tile side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    metrics = json.loads((args.report / "metrics.json").read_text())
    images = json.loads((args.report / "detections.json").read_text())["images"]
    thr = float(metrics.get("operating_threshold", metrics.get("score_threshold")))  # older reports: the old name
    picked = random.Random(args.seed).sample(range(len(images)), min(args.n, len(images)))
    tiles = []
    for i in sorted(picked):
        r = images[i]
        im = load_pil(Path(r["path"]))  # EXIF-oriented RGB, the frame the boxes refer to
        drawn = draw_detections(im, np.asarray(r["boxes"]).reshape(-1, 4), r["scores"], thr,
                                gt_boxes=np.asarray(r["gt_boxes"]).reshape(-1, 4))
        drawn.thumbnail((args.tile, args.tile), Image.Resampling.BILINEAR)
        tile = Image.new("RGB", (args.tile, args.tile), (255, 255, 255))
        tile.paste(drawn, ((args.tile - drawn.width) // 2, (args.tile - drawn.height) // 2))
        tiles.append(tile)
    rows = (len(tiles) + args.cols - 1) // args.cols
    sheet = Image.new("RGB", (args.cols * args.tile, rows * args.tile), (255, 255, 255))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % args.cols) * args.tile, (k // args.cols) * args.tile))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_jpeg(sheet, args.out, quality=85)
    print(f"{args.out}: {len(tiles)} images of {args.report} at score >= {thr:.3f} "
          "(green: ground truth, red: detections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
