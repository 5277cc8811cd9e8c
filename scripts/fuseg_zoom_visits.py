"""A VISITS.csv for `dfudet track` from FUSeg test photos: a check that measured wound areas in mm² do not depend on
how far the camera was, not a healing series.

FUSeg has no patient series (one photo per wound, no dates), so no real healing timeline can be built from it. What
can be measured honestly is scale consistency: each "patient" is one FUSeg test photo with one ulcer, seen at three
zoom levels (1.0, 0.8 and 0.6: the photo shrunk and re-centred on a black canvas of the original size, as FUSeg's
own photos are zero-padded), as if photographed from farther away at later "visits". The wound's pixel area falls
with the square of the zoom while its true size does not; each row's `scale` (mm per pixel) is the nominal scale
divided by the zoom, so a model whose outlines are scale-consistent reports the same mm² at every visit (0 %
change), and the track summary shows how far from that it is.

    python scripts/fuseg_zoom_visits.py --fuseg ../shared/data/fuseg --out runs/zoom_visits --n 12
    dfudet track runs/zoom_visits/visits.csv --checkpoint MODEL.pth --out runs/zoom_visits/track

`--card`: the same check with the printed calibration card (`dfudet marker`) instead of a typed scale. Each photo is
upscaled 2x (so the card's long side stays over the 200 px the detector asks for at zoom 0.6) and the card is laid
flat in a grey strip under it, in the photo's plane, at the nominal scale (0.3 mm per original pixel: a 154 mm field
for FUSeg's 512 px close-ups); the whole scene is then zoomed out. visits.csv has no scale column, so track takes
each visit's mm² from its card.
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import date, timedelta
from pathlib import Path

import cv2
import numpy as np

ZOOMS = (1.0, 0.8, 0.6)
NOMINAL_MM_PER_PX = 0.2  # an assumed scale for the original photos: only ratios matter for the check
CARD_MM_PER_PX = 0.3  # --card: the original photo's assumed scale (the card is drawn to it)
CARD_UPSCALE = 2


def with_card(image: np.ndarray) -> np.ndarray:
    """The photo (BGR) upscaled CARD_UPSCALE x, over a grey strip holding the card at the photo's own scale."""
    from dfudet.marker.card import CARD_MM, render_card

    big = cv2.resize(image, None, fx=CARD_UPSCALE, fy=CARD_UPSCALE, interpolation=cv2.INTER_CUBIC)
    px_per_mm = CARD_UPSCALE / CARD_MM_PER_PX
    card = cv2.resize(render_card(), (round(CARD_MM[0] * px_per_mm), round(CARD_MM[1] * px_per_mm)),
                      interpolation=cv2.INTER_AREA)
    strip = np.full((card.shape[0] + 40, big.shape[1], 3), 150, np.uint8)
    x0 = (big.shape[1] - card.shape[1]) // 2
    strip[20:20 + card.shape[0], x0:x0 + card.shape[1]] = card[:, :, None]
    return np.vstack([big, strip])


def zoomed(image: np.ndarray, zoom: float) -> np.ndarray:
    """The photo shrunk by `zoom` and centred on a black canvas of its own size (a mirrored border would copy the
    wound into the frame)."""
    h, w = image.shape[:2]
    if zoom == 1.0:
        return image
    small = cv2.resize(image, (round(w * zoom), round(h * zoom)), interpolation=cv2.INTER_AREA)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    return cv2.copyMakeBorder(small, top, h - small.shape[0] - top, left, w - small.shape[1] - left,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuseg", type=Path, required=True, help="the FUSeg folder (images/, annotations/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=12, help="photos (patients) to use: the first test photos with one ulcer")
    ap.add_argument("--card", action="store_true", help="scale from a calibration card in each photo, not a column")
    a = ap.parse_args()
    coco = json.loads((a.fuseg / "annotations" / "test.json").read_text())
    per_image: dict[int, int] = {}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    chosen = [im for im in coco["images"] if per_image.get(im["id"]) == 1][: a.n]
    (a.out / "photos").mkdir(parents=True, exist_ok=True)
    rows = []
    for im in chosen:
        image = cv2.imread(str(a.fuseg / "images" / im["file_name"]), cv2.IMREAD_COLOR)
        if a.card:
            image = with_card(image)
        patient = Path(im["file_name"]).stem
        for k, zoom in enumerate(ZOOMS):
            name = f"{patient}_zoom{zoom:.1f}.png"
            cv2.imwrite(str(a.out / "photos" / name), zoomed(image, zoom))
            row = {"patient": patient, "date": (date(2026, 1, 5) + timedelta(days=14 * k)).isoformat(),
                   "photo": f"photos/{name}"}
            if not a.card:
                row["scale"] = f"{NOMINAL_MM_PER_PX / zoom:.6g} mm/px"
            rows.append(row)
    with open(a.out / "visits.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient", "date", "photo"] + ([] if a.card else ["scale"]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(chosen)} patients x {len(ZOOMS)} zoom levels -> {a.out / 'visits.csv'}")


if __name__ == "__main__":
    main()
