"""`dfudet track`: the healing timeline core on exact series, VISITS.csv parsing, and the command end to end on a
synthetic patient whose demo lesion shrinks by a known factor per visit."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from _checkpoints import train_demo_checkpoint
from dfudet.cli import main
from dfudet.commands.track import (
    INSUFFICIENT,
    NOT_ON_TRACK,
    ON_TRACK,
    VisitArea,
    area_csv,
    healing_timeline,
    read_visits,
    rule_text,
    run_track,
    safe_ids,
    union_area,
)
from dfudet.data import instance_masks
from dfudet.data.checks import load_image
from dfudet.data.demo import render_sample
from dfudet.errors import ConfigError, DataError
from dfudet.inference.area import NO_SCALE_NOTE, parse_scale
from dfudet.inference.backend import Backend, Detections
from dfudet.inference.loader import load_backend

DAY0 = date(2024, 3, 1)
SHRINK = 0.8  # the synthetic lesion's area factor per visit


def _series(areas: list[int], days: list[int], scales: list[float | None] | None = None) -> list[VisitArea]:
    scales = scales or [None] * len(areas)
    return [VisitArea(DAY0 + timedelta(days=d), a, s, 1, f"v{i}.png", i + 2)
            for i, (a, d, s) in enumerate(zip(areas, days, scales))]


# ----------------------------------------------------------------------------------------------- pure core
def test_weekly_shrink_gives_exact_percentages_and_on_track() -> None:
    areas = [round(10000 * SHRINK**k) for k in range(5)]  # 10000, 8000, 6400, 5120, 4096: exact
    tl = healing_timeline(_series(areas, [0, 7, 14, 21, 28]))
    assert [r.days_since_first for r in tl.rows] == [0, 7, 14, 21, 28]
    assert [r.change_vs_first_pct for r in tl.rows] == pytest.approx([0.0, -20.0, -36.0, -48.8, -59.04])
    assert tl.rows[0].change_vs_previous_pct is None
    assert [r.change_vs_previous_pct for r in tl.rows[1:]] == pytest.approx([-20.0] * 4)
    assert tl.flag == ON_TRACK and tl.window_visit_day == 28
    assert tl.reduction_by_window == pytest.approx(1 - SHRINK**4)
    assert tl.unit == "px" and tl.unit_note == NO_SCALE_NOTE
    assert all(r.area_mm2 is None for r in tl.rows)


def test_flag_cases() -> None:
    slow = [round(10000 * 0.9**k) for k in range(5)]  # 34 % smaller after 4 weeks
    tl = healing_timeline(_series(slow, [0, 7, 14, 21, 28]))
    assert tl.flag == NOT_ON_TRACK and tl.reduction_by_window == pytest.approx(1 - 0.9**4)
    assert tl.reason == "34% smaller on day 28 (the visit nearest to day 28): below the 50% reduction by day 28"
    # day 21 is W - T: the 4-week measurement when it is the visit nearest to day 28
    fast = [round(10000 * SHRINK**k) for k in range(4)]  # 48.8 % by day 21
    assert healing_timeline(_series(fast, [0, 7, 14, 21])).flag == NOT_ON_TRACK
    tl = healing_timeline(_series(fast, [0, 7, 14, 21]), min_reduction=0.4)
    assert (tl.flag, tl.window_visit_day) == (ON_TRACK, 21)
    assert tl.reason == "49% smaller on day 21 (the visit nearest to day 28): reached the 40% reduction by day 28"
    # a visit exactly on day W
    assert healing_timeline(_series([100, 60], [0, 28])).flag == NOT_ON_TRACK
    assert healing_timeline(_series([100, 50], [0, 28])).flag == ON_TRACK
    assert healing_timeline(_series([100, 120], [0, 28])).reason.startswith("20% larger on day 28")
    one = healing_timeline(_series([100], [0]))
    assert one.flag == INSUFFICIENT and one.reason == ("day 28 not reached yet (the last visit is on day 0, before "
                                                       "day 21)")
    zero = healing_timeline(_series([0, 50, 0], [0, 14, 28]))
    assert zero.flag == INSUFFICIENT and "area 0" in zero.reason
    assert zero.rows[1].change_vs_first_pct is None and zero.rows[2].change_vs_previous_pct == -100.0
    # a custom window and tolerance
    assert healing_timeline(_series([100, 40], [0, 10]), window_days=10, tolerance_days=2).flag == ON_TRACK


def test_visits_on_day_0_never_count_as_the_reduction() -> None:
    # a second photo on the first day is its own row, but not the 4-week measurement
    tl = healing_timeline(_series([1000, 400, 950], [0, 0, 45]))
    assert [(r.days_since_first, r.visit.area_px) for r in tl.rows] == [(0, 1000), (0, 400), (45, 950)]
    assert tl.rows[1].change_vs_first_pct == pytest.approx(-60.0)
    assert (tl.flag, tl.reduction_by_window, tl.window_visit_day) == (INSUFFICIENT, None, None)
    assert tl.reason == "no visit within 7 days of day 28 (days 21 to 35): the reduction by day 28 is unknown"
    # nor as reaching the reduction early
    tl = healing_timeline(_series([1000, 400], [0, 0]))
    assert tl.flag == INSUFFICIENT and tl.reason == "day 28 not reached yet (the last visit is on day 0, before day 21)"
    # the baseline is the first CSV row of the first day, whatever order the list has
    tl = healing_timeline(list(reversed(_series([1000, 400, 450], [0, 0, 28]))))
    assert (tl.first.visit.area_px, tl.flag, tl.window_visit_day) == (1000, ON_TRACK, 28)


def test_the_reduction_is_taken_at_the_visit_nearest_to_day_w() -> None:
    # the day-30 visit is nearest to day 28: the early day-2 visit does not decide
    tl = healing_timeline(_series([100, 90, 10], [0, 2, 30]))
    assert (tl.flag, tl.window_visit_day) == (ON_TRACK, 30) and tl.reduction_by_window == pytest.approx(0.9)
    assert tl.reason == "90% smaller on day 30 (the visit nearest to day 28): reached the 50% reduction by day 28"
    # nearest, not last within the window: day 29 beats day 34, and day 26 beats day 21
    assert healing_timeline(_series([100, 90, 40], [0, 29, 34])).window_visit_day == 29
    tl = healing_timeline(_series([100, 40, 90], [0, 21, 26]))
    assert (tl.flag, tl.window_visit_day) == (NOT_ON_TRACK, 26)
    # later changes outside the window do not count
    assert healing_timeline(_series([100, 40, 90], [0, 27, 60])).flag == ON_TRACK


@pytest.mark.parametrize(("day", "flag", "measured_at"), [
    (20, INSUFFICIENT, None),   # W - T - 1: before the window, the series ends there: not reached yet
    (21, NOT_ON_TRACK, 21),     # W - T
    (35, NOT_ON_TRACK, 35),     # W + T
    (36, INSUFFICIENT, None),   # W + T + 1: after the window, no visit in it
])
def test_tolerance_window_edges(day: int, flag: str, measured_at: int | None) -> None:
    tl = healing_timeline(_series([100, 60], [0, day]))
    assert (tl.flag, tl.window_visit_day) == (flag, measured_at)
    if day == 20:
        assert tl.reason == ("40% smaller on day 20 so far, below the 50% reduction; day 28 not reached yet (the last "
                             "visit is on day 20, before day 21)")
    if day == 36:
        assert tl.reason == "no visit within 7 days of day 28 (days 21 to 35): the reduction by day 28 is unknown"


def test_ties_go_to_the_earlier_visit() -> None:
    # days 26 and 30 are both 2 days from day 28: the earlier one measures, whichever order the list has
    for areas in ([100, 40, 90], [100, 90, 40]):
        tl = healing_timeline(_series(areas, [0, 26, 30]))
        assert tl.window_visit_day == 26 and tl.reduction_by_window == pytest.approx(1 - areas[1] / 100)
        assert healing_timeline(list(reversed(_series(areas, [0, 26, 30])))).window_visit_day == 26
    # two photos on the nearest day: the first CSV row
    same_day = healing_timeline(_series([100, 40, 90], [0, 28, 28]))
    assert (same_day.flag, same_day.reduction_by_window) == (ON_TRACK, pytest.approx(0.6))
    # with T = 1, days 27 and 29 tie; with T = 0 only day 28 counts
    assert healing_timeline(_series([100, 60, 40], [0, 27, 29]), tolerance_days=1).flag == NOT_ON_TRACK
    tl = healing_timeline(_series([100, 60, 40], [0, 27, 29]), tolerance_days=0)
    assert tl.flag == INSUFFICIENT and "no visit within 0 days of day 28 (days 28 to 28)" in tl.reason


def test_reached_early_when_the_series_ends_before_the_window() -> None:
    tl = healing_timeline(_series([100, 80, 45, 60], [0, 7, 14, 20]))
    assert (tl.flag, tl.window_visit_day) == (ON_TRACK, 14) and tl.reduction_by_window == pytest.approx(0.55)
    assert tl.reason == ("55% smaller on day 14: reached the 50% reduction early (the last visit is on day 20, "
                         "before day 21)")
    slow = healing_timeline(_series([100, 80, 60], [0, 7, 14]))
    assert (slow.flag, slow.reduction_by_window) == (INSUFFICIENT, None)
    assert "40% smaller on day 14 so far" in slow.reason and "day 28 not reached yet" in slow.reason
    # reached early but a visit after the window exists and none inside it: unknown
    assert healing_timeline(_series([100, 40, 90], [0, 14, 40])).flag == INSUFFICIENT


def test_visits_are_ordered_by_date() -> None:
    visits = _series([50, 100, 80], [14, 0, 7])
    tl = healing_timeline(visits)
    assert [r.visit.area_px for r in tl.rows] == [100, 80, 50]
    assert [r.days_since_first for r in tl.rows] == [0, 7, 14]


def test_mm2_only_with_a_scale_and_mixed_scales_compare_in_pixels() -> None:
    # every visit has a scale: compared in mm², also when the scale differs between photos
    tl = healing_timeline(_series([10000, 10000], [0, 28], [0.1, 0.05]))
    assert tl.unit == "mm2" and tl.unit_note == ""
    assert [r.area_mm2 for r in tl.rows] == pytest.approx([100.0, 25.0])
    assert tl.rows[1].change_vs_first_pct == pytest.approx(-75.0) and tl.flag == ON_TRACK
    # some visits without a scale: pixels for all (mm² still listed where known), and the note says so
    mixed = healing_timeline(_series([10000, 5000, 4000], [0, 14, 28], [0.1, None, 0.1]))
    assert mixed.unit == "px" and "scale known for 2 of 3 visits" in mixed.unit_note
    assert [r.area_mm2 for r in mixed.rows] == [pytest.approx(100.0), None, pytest.approx(40.0)]
    assert [r.change_vs_first_pct for r in mixed.rows] == pytest.approx([0.0, -50.0, -60.0])
    rows = list(csv.DictReader(area_csv(mixed).decode().splitlines()))
    assert [r["area_mm2"] for r in rows] == ["100.00", "", "40.00"]
    assert {r["change_unit"] for r in rows} == {"px"}


def test_rule_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--min-reduction"):
        healing_timeline(_series([1], [0]), min_reduction=1.5)
    with pytest.raises(ConfigError, match="--window-days"):
        healing_timeline(_series([1], [0]), window_days=0)
    for tolerance in (-1, 28):
        with pytest.raises(ConfigError, match="--window-tolerance-days must be at least 0 and less than"):
            healing_timeline(_series([1], [0]), tolerance_days=tolerance)


def test_union_area_counts_overlaps_once() -> None:
    a = np.zeros((20, 30), bool)
    b = np.zeros((20, 30), bool)
    a[2:10, 2:12] = True  # 80 px
    b[5:15, 8:18] = True  # 100 px, 20 px shared with a
    dets = Detections(np.zeros((2, 4), np.float32), np.array([0.9, 0.8], np.float32), 30, 20,
                      masks=(instance_masks.encode(a), instance_masks.encode(b)))
    assert union_area(dets) == 160 == int((a | b).sum())
    assert union_area(dets.above(1.0)) == 0


# ----------------------------------------------------------------------------------------------- VISITS.csv
def test_parse_scale() -> None:
    assert parse_scale("0.2", "s") == 0.2
    assert parse_scale(" 0.2 mm/px ", "s") == 0.2
    assert parse_scale("5 px/mm", "s") == pytest.approx(0.2)
    assert parse_scale("", "s") is None
    with pytest.raises(ConfigError, match="unknown scale unit 'furlongs'"):
        parse_scale("3 furlongs", "s")
    for bad in ("-1", "0 mm/px", "abc", "nan"):
        with pytest.raises(ConfigError, match="s: scale"):
            parse_scale(bad, "s")


def test_missing_column_names_it(tmp_path: Path) -> None:
    f = tmp_path / "visits.csv"
    f.write_text("patient,when,photo\nA,2024-01-01,a.png\n")
    with pytest.raises(DataError, match="missing required column.*date"):
        read_visits(f)
    f.write_text("patient,date,photo,Scale,mm_per_px\nA,2024-01-01,a.png,0.1,0.1\n")
    with pytest.raises(DataError, match="both a 'scale' and a 'mm_per_px' column"):
        read_visits(f)


def test_read_visits_rows_scales_and_every_problem_of_a_row(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    f = tmp_path / "visits.csv"
    f.write_text("Patient,DATE,photo,mm_per_px\n"
                 "A,2024-01-01,a.png,\n"          # row 2: the default scale
                 "A,2024-01-08,a.png,4 px/mm\n"   # row 3: its own scale
                 ",,,\n"                          # row 4: an empty spreadsheet row, not a problem
                 " ,01/02/2024,b.png,3 furlongs\n"  # row 5: four problems
                 "A,2024-01-09,sub,\n")              # row 6: a folder
    (tmp_path / "sub").mkdir()
    visits, problems = read_visits(f, default_mm_per_px=0.5)
    assert [(v.row, v.mm_per_px, v.path) for v in visits] == [(2, 0.5, tmp_path / "a.png"),
                                                              (3, 0.25, tmp_path / "a.png")]
    assert [p.row for p in problems] == [5, 6]
    assert problems[1].problem == f"photo sub is not a file ({tmp_path / 'sub'})"
    assert problems[0].problem == ("empty patient; date '01/02/2024' is not YYYY-MM-DD; mm_per_px: unknown scale unit "
                                   "'furlongs' in '3 furlongs' (use mm/px, e.g. '0.2 mm/px', or px/mm); photo b.png "
                                   f"does not exist ({tmp_path / 'b.png'})")


def test_safe_ids_are_unique_folder_names() -> None:
    assert safe_ids(["P/01", "P_01", "../x", "ok-1.a"]) == {"P/01": "P_01", "P_01": "P_01_2", "../x": "x",
                                                           "ok-1.a": "ok-1.a"}


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def mask_ckpt(mask_checkpoint: Path) -> Path:
    return mask_checkpoint


def _shrinking_photos(folder: Path, visits: int, seed: int = 3, index: int = 1, size: int = 128) -> list[int]:
    """Photos of one demo foot whose lesions shrink about their centre to SHRINK x the area per visit; returns the
    true lesion areas (pixels)."""
    sample = render_sample(seed, index, size, healthy=False)
    bare = render_sample(seed, index, size, healthy=False, draw_lesions=False).image
    lesion = np.any(np.stack(sample.masks), axis=0).astype(np.uint8)
    cy, cx = (float(v) for v in np.argwhere(lesion).mean(axis=0))
    folder.mkdir(parents=True, exist_ok=True)
    areas = []
    for k in range(visits):
        warp = cv2.getRotationMatrix2D((cx, cy), 0.0, SHRINK ** (k / 2))
        mask = cv2.warpAffine(lesion, warp, (size, size), flags=cv2.INTER_NEAREST).astype(bool)
        skin = cv2.warpAffine(sample.image, warp, (size, size), flags=cv2.INTER_LINEAR)
        Image.fromarray(np.where(mask[..., None], skin, bare)).save(folder / f"visit{k}.png")
        areas.append(int(mask.sum()))
    return areas


def _union_of_kept(backend: Backend, photo: Path) -> tuple[int, int]:
    """(ulcers, union area) computed independently: pycocotools' merge of the kept detections' RLEs."""
    kept = backend.keep(backend.predict_arrays([load_image(photo)])[0])
    rles = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in kept.masks or ()]
    return len(kept.scores), int(mask_utils.area(mask_utils.merge(rles, intersect=False))) if rles else 0


def test_track_end_to_end(mask_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = _shrinking_photos(tmp_path / "photos" / "a", 4)
    assert [b / a for a, b in zip(truth, truth[1:])] == pytest.approx([SHRINK] * 3, rel=0.1)  # the fixture shrinks
    _shrinking_photos(tmp_path / "photos" / "b", 2, seed=4)
    visits = tmp_path / "visits.csv"
    visits.write_text(
        "patient,date,photo,scale\n"
        "P/01,2024-03-01,photos/a/visit0.png,0.2 mm/px\n"   # row 2
        "P/01,2024-03-08,photos/a/visit1.png,0.2\n"          # row 3
        "P/01,2024-03-15,photos/a/visit2.png,5 px/mm\n"      # row 4
        "P/01,2024-03-29,photos/a/visit3.png,\n"             # row 5: no scale -> the patient compares in pixels
        "P/01,2024-03-22,photos/a/missing.png,0.2\n"         # row 6: missing photo
        "P/01,2024-13-40,photos/a/visit1.png,0.2\n"          # row 7: bad date
        "\n"                                                 # row 8: blank, counted as in a spreadsheet
        "Q,2024-03-01,photos/b/visit0.png,3 furlongs\n"      # row 9: unknown unit
        ",2024-03-01,photos/b/visit0.png,0.1\n"              # row 10: empty patient
        f"Q,2024-03-01,{tmp_path / 'photos/b/visit0.png'},0.1\n"  # row 11: absolute path
        "Q,2024-04-02,photos/b/visit1.png,0.1 mm/px\n"      # row 12
        "Q,2024-04-09,photos/b/broken.png,0.1\n"           # row 13: not an image (found when it is read)
        "R,2024-05-01,photos/a/visit0.png,\n"                # rows 14-16: two photos on day 0, one on day 45
        "R,2024-05-01,photos/a/visit3.png,\n"
        "R,2024-06-15,photos/a/visit1.png,\n")
    (tmp_path / "photos" / "b" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["track", str(visits), "--checkpoint", str(mask_ckpt), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    for row, what in ((6, "missing.png does not exist"), (7, "2024-13-40"), (9, "unknown scale unit 'furlongs'"),
                      (10, "empty patient"), (13, "broken.png: not a readable image")):
        assert f"visits.csv row {row}: " in err and what in err
    assert "header as row 1" in err
    problems = list(csv.DictReader((out / "problems.csv").read_text().splitlines()))
    assert [int(p["row"]) for p in problems] == [6, 7, 9, 10, 13]

    backend = load_backend(checkpoint=mask_ckpt)
    summary = {r["patient"]: r for r in csv.DictReader((out / "summary.csv").read_text().splitlines())}
    assert set(summary) == {"P/01", "Q", "R"}
    measured: dict[str, list[int]] = {}
    for patient, folder, n in (("P/01", "P_01", 4), ("Q", "Q", 2), ("R", "R", 3)):
        rows = list(csv.DictReader((out / "patients" / folder / "area.csv").read_text().splitlines()))
        assert len(rows) == n and (out / "patients" / folder / "area.png").stat().st_size > 0
        areas = []
        for r in rows:
            photo = Path(r["photo"]) if Path(r["photo"]).is_absolute() else tmp_path / r["photo"]
            ulcers, area = _union_of_kept(backend, photo)
            assert (int(r["ulcers"]), int(r["area_px"])) == (ulcers, area)
            areas.append(area)
        first = areas[0]
        for r, a, prev in zip(rows, areas, [None, *areas[:-1]]):
            assert r["change_vs_first_pct"] == (f"{100 * (a - first) / first:.2f}" if first else "")
            if prev is not None:
                assert r["change_vs_previous_pct"] == (f"{100 * (a - prev) / prev:.2f}" if prev else "")
        assert summary[patient]["visits"] == str(n)
        measured[patient] = areas
    p01 = list(csv.DictReader((out / "patients" / "P_01" / "area.csv").read_text().splitlines()))
    assert [r["days_since_first"] for r in p01] == ["0", "7", "14", "28"]
    assert [r["mm_per_px"] for r in p01] == ["0.2", "0.2", "0.2", ""]
    assert [r["area_mm2"] for r in p01] == [f"{int(r['area_px']) * 0.04:.2f}" for r in p01[:3]] + [""]
    assert summary["P/01"]["unit"] == "px" and "scale known for 3 of 4 visits" in summary["P/01"]["note"]
    assert summary["Q"]["unit"] == "mm2" and summary["Q"]["first_date"] == "2024-03-01"
    r_rows = list(csv.DictReader((out / "patients" / "R" / "area.csv").read_text().splitlines()))
    assert [(r["days_since_first"], r["row"]) for r in r_rows] == [("0", "14"), ("0", "15"), ("45", "16")]

    # each flag and reason follows from the measured areas: P/01 is measured on day 28, Q on day 32 (nearest to
    # day 28 within 7 days), R has no visit on days 21-35 (its second day-0 photo never counts)
    expected = {"P/01": _expected(measured["P/01"][0], measured["P/01"][3], 28),
                "Q": _expected(measured["Q"][0], measured["Q"][1], 32),
                "R": _expected(measured["R"][0], None, None)}
    md = (out / "summary.md").read_text()
    assert rule_text(0.5, 28, 7) in md and "`--window-tolerance-days 7`" in md
    for patient, (flag, reason) in expected.items():
        assert (summary[patient]["flag"], summary[patient]["reason"]) == (flag, reason)
        assert f"| {flag} | {reason}" in md
    assert "row 9: " in md and "| P/01 | 4 |" in md


def _expected(first: int, at: int | None, day: int | None) -> tuple[str, str]:
    """The flag and reason of a patient whose first visit measures `first` pixels and whose visit nearest to day 28
    (on `day`; None: no visit within 7 days of day 28, and a later one) measures `at`."""
    if first == 0:
        return INSUFFICIENT, "no wound area on the first visit (area 0): no baseline to compare with"
    if at is None:
        return INSUFFICIENT, "no visit within 7 days of day 28 (days 21 to 35): the reduction by day 28 is unknown"
    reduction = 1 - at / first
    change = f"{reduction:.0%} smaller" if reduction >= 0 else f"{-reduction:.0%} larger"
    flag, verdict = (ON_TRACK, "reached") if reduction >= 0.5 else (NOT_ON_TRACK, "below")
    return flag, f"{change} on day {day} (the visit nearest to day 28): {verdict} the 50% reduction by day 28"


def test_no_usable_row_is_an_error(mask_ckpt: Path, tmp_path: Path) -> None:
    visits = tmp_path / "visits.csv"
    visits.write_text("Patient,Date,Photo\nA,2024-01-01,nope.png\n")
    with pytest.raises(DataError, match="no visit could be measured") as exc:
        run_track(visits, tmp_path / "out", checkpoint=mask_ckpt, progress=False)
    assert exc.value.problems == [f"visits.csv row 2: photo nope.png does not exist ({tmp_path / 'nope.png'})"]
    assert (tmp_path / "out" / "problems.csv").is_file()


def test_box_only_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box_ckpt = train_demo_checkpoint(tmp_path / "box.pth", steps=1)
    _shrinking_photos(tmp_path / "p", 1)
    visits = tmp_path / "visits.csv"
    visits.write_text("patient,date,photo\nA,2024-01-01,p/visit0.png\n")
    assert main(["track", str(visits), "--checkpoint", str(box_ckpt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "track needs an outline model (e.g. maskrcnn_efficientnet)" in err and "boxes only" in err


def test_a_flag_resting_on_a_photo_without_any_ulcer_says_to_check_it() -> None:
    """Area 0 at day 28 reads as healed, but a model can also miss a small wound: the reason says so."""
    visits = _series([500, 300], [0, 14]) + [VisitArea(DAY0 + timedelta(days=28), 0, None, 0, "v2.png", 4)]
    tl = healing_timeline(visits)
    assert tl.flag == ON_TRACK and "CHECK the day-28 photo: the model found no ulcer in it" in tl.reason
    assert "CHECK" not in healing_timeline(_series([500, 300, 100], [0, 14, 28])).reason


@pytest.mark.slow  # two runs of track on the small Mask R-CNN, one of them with onnxruntime
def test_track_with_onnx_measures_the_areas_of_the_checkpoint(mask_ckpt: Path, mask_onnx: Path,
                                                              tmp_path: Path) -> None:
    """`dfudet track --onnx` (the deployed model) gives each visit the ulcers and area the PyTorch checkpoint gives,
    within the outline parity of the export (tests/export/test_onnx_masks.py), and the same flags."""
    _shrinking_photos(tmp_path / "photos", 3)
    visits = tmp_path / "visits.csv"
    visits.write_text("patient,date,photo,scale\n"
                      "P,2024-03-01,photos/visit0.png,0.2\n"
                      "P,2024-03-15,photos/visit1.png,0.2\n"
                      "P,2024-03-29,photos/visit2.png,0.2\n")
    assert main(["track", str(visits), "--checkpoint", str(mask_ckpt), "--out", str(tmp_path / "pt")]) == 0
    assert main(["track", str(visits), "--onnx", str(mask_onnx), "--out", str(tmp_path / "ox")]) == 0

    def rows(out: str) -> list[dict[str, str]]:
        return list(csv.DictReader((tmp_path / out / "patients" / "P" / "area.csv").read_text().splitlines()))

    torch_rows, onnx_rows = rows("pt"), rows("ox")
    assert len(torch_rows) == len(onnx_rows) == 3
    onnx_backend = load_backend(onnx=str(mask_onnx))
    assert onnx_backend.name == "onnxruntime"
    for t, o in zip(torch_rows, onnx_rows):
        # what the ONNX run wrote is what the ONNX backend measures (merged outlines, computed here independently)
        assert (int(o["ulcers"]), int(o["area_px"])) == _union_of_kept(onnx_backend, tmp_path / o["photo"])
        assert o["ulcers"] == t["ulcers"] and int(t["area_px"]) > 0
        assert int(o["area_px"]) == pytest.approx(int(t["area_px"]), rel=0.02)
        assert float(o["area_mm2"]) == pytest.approx(float(t["area_mm2"]), rel=0.02)
    summary = {out: list(csv.DictReader((tmp_path / out / "summary.csv").read_text().splitlines()))[0]
               for out in ("pt", "ox")}
    assert summary["ox"]["flag"] == summary["pt"]["flag"] and summary["ox"]["unit"] == "mm2"
