"""track with the calibration card: one wound seen from three distances and two tilts keeps one area."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path

import pytest

from _marker_scene import render, true_wound_mm2
from dfudet.commands.track import VisitArea, area_csv, healing_timeline, summary_row
from dfudet.marker.detect import find_card
from dfudet.marker.scale import mask_area_mm2


def _visit(view, k: int, bar_mm: float | None = None) -> VisitArea:
    """A visit measured the way track.measure does: the wound's union mask mapped with the card found."""
    card = find_card(view.image, bar_mm=bar_mm)
    mm2 = mask_area_mm2(view.wound, card.homography) if card.accepted else None
    return VisitArea(date(2026, 1, 1) + timedelta(days=7 * k), int(view.wound.sum()), None, 1, f"v{k}.png", k + 2,
                     card_mm2=mm2, area_note="" if card.accepted else f"areas are in pixels only: {card.reason}")


@pytest.mark.slow
def test_three_distances_and_two_tilts_give_the_same_area_within_5_percent():
    views = [render(tilt=tilt, card_px=px, azimuth=40 + 50 * k, roll=8 * k, seed=k)
             for k, (tilt, px) in enumerate([(t, p) for t in (0, 35) for p in (240, 320, 420)])]
    visits = [_visit(v, k) for k, v in enumerate(views)]
    pixels = [v.area_px for v in visits]
    assert max(pixels) / min(pixels) > 3  # the photos really differ: 1.75x the distance, over 3x the pixels
    tl = healing_timeline(visits)
    assert tl.unit == "mm2" and tl.unit_note == ""
    areas = [r.area for r in tl.rows]
    assert max(areas) / min(areas) - 1 < 0.05, areas
    assert all(a == pytest.approx(true_wound_mm2(), rel=0.05) for a in areas)
    rows = list(csv.DictReader(io.StringIO(area_csv(tl).decode())))
    assert {r["area_source"] for r in rows} == {"card"} and all(float(r["area_mm2"]) > 0 for r in rows)


def test_a_visit_whose_card_is_refused_is_marked():
    ok = render(tilt=10, card_px=400)
    visits = [_visit(ok, 0), _visit(ok, 1, bar_mm=45.0)]  # the second card "printed at the wrong size"
    tl = healing_timeline(visits)
    assert tl.unit == "px"  # compared in the unit both visits have
    assert "2026-01-08: areas are in pixels only: the card was printed at the wrong size" in tl.unit_note
    rows = list(csv.DictReader(io.StringIO(area_csv(tl).decode())))
    assert [r["area_source"] for r in rows] == ["card", ""]
    assert rows[0]["area_mm2"] != "" and rows[1]["area_mm2"] == "" and "wrong size" in rows[1]["area_note"]
    assert "wrong size" in summary_row("p1", "patients/p1", tl)["note"]


@pytest.fixture(scope="module")
def card_photos(tmp_path_factory) -> tuple:
    """Two visit photos of one card scene (another distance and tilt) and one whose card is too tilted."""
    from PIL import Image

    d = tmp_path_factory.mktemp("card_visits")
    for name, (tilt, px) in {"a.png": (0, 300), "b.png": (30, 450), "c.png": (68, 560)}.items():
        Image.fromarray(render(tilt=tilt, card_px=px).image).save(d / name)
    return d


@pytest.fixture(scope="module")
def mask_model(mask_checkpoint: Path) -> Path:
    """The session's small Mask R-CNN (tests/conftest.py): an outline model, so areas come with each detection."""
    return mask_checkpoint


@pytest.mark.slow
def test_predict_and_track_take_areas_from_the_card(card_photos, mask_model, tmp_path):
    import json

    from dfudet.commands.predict import run_predict
    from dfudet.commands.track import run_track

    run_predict([card_photos], mask_model, tmp_path / "pred", progress=False)
    data = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    by_name = {im["file"].rsplit("/", 1)[-1]: im for im in data["images"]}
    assert by_name["a.png"]["area_source"] == by_name["b.png"]["area_source"] == "card"
    assert by_name["c.png"]["area_source"] is None and by_name["c.png"]["card"]["code"] == "too_tilted"
    assert "area_note" in data  # one image has no mm²
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert {r["area_source"] for r in rows if r["file"].endswith("a.png")} == {"card"}
    assert {r["area_source"] for r in rows if r["file"].endswith("c.png")} == {""}
    assert all("too much from the side" in r["area_note"] for r in rows if r["file"].endswith("c.png"))

    (card_photos / "VISITS.csv").write_text("patient,date,photo\np1,2026-01-01,a.png\np1,2026-01-15,b.png\n"
                                            "p2,2026-01-01,a.png\np2,2026-01-29,c.png\n")
    run_track(card_photos / "VISITS.csv", tmp_path / "track", checkpoint=mask_model, progress=False)
    p1 = list(csv.DictReader((tmp_path / "track" / "patients" / "p1" / "area.csv").open()))
    assert [r["area_source"] for r in p1] == ["card", "card"] and {r["change_unit"] for r in p1} == {"mm2"}
    p2 = list(csv.DictReader((tmp_path / "track" / "patients" / "p2" / "area.csv").open()))
    assert [r["area_source"] for r in p2] == ["card", ""] and {r["change_unit"] for r in p2} == {"px"}
    summary = (tmp_path / "track" / "summary.md").read_text()
    assert "2026-01-29: areas are in pixels only: the card is seen too much from the side" in summary
