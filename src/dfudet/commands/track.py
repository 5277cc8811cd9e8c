"""`dfudet track`: a per-patient healing timeline of wound area from the photos of successive visits.

Input: VISITS.csv with the columns `patient`, `date` (ISO YYYY-MM-DD), `photo` (a path; relative paths are resolved
against the CSV's folder) and optionally `scale` (or `mm_per_px`, not both): millimetres per pixel of that photo,
written "0.2", "0.2 mm/px" or "5 px/mm" (converted to 0.2 mm/px). `--mm-per-px` applies to rows without a scale of
their own. Column names are read case-insensitively (`dfudet.commands.photo_lists`, as `predict --photos` reads).

Bad rows (empty patient, a date that is not YYYY-MM-DD, a photo that does not exist, is not a file or cannot be read
as an image, a scale that is not a positive number or has an unknown unit) are reported by their row number in
VISITS.csv (the header is row 1, the first visit row 2, blank lines count as rows as in a spreadsheet) on stderr and
in problems.csv, and the other rows are processed. A missing required column stops the run with its name; so does a
file with no usable row.

Measurement: every photo goes through the model (an outline model, e.g. maskrcnn_efficientnet; a box-only model is
refused) and the detections at the operating threshold are kept. The wound area of a visit is the pixel count of
the UNION of the kept outlines (overlapping outlines are counted once); `ulcers` is the number of kept detections.
mm² only when the photo's scale is known (`dfudet.inference.area`), never guessed: from the row's scale (or
--mm-per-px), else from the dfudet calibration card in the photo (`dfudet.marker`): the union is mapped onto the
card's plane, so photos taken from different distances and angles give the same mm². A visit whose card was refused
(too small, too tilted, partly hidden, ...) has no mm²; area.csv says why (`area_note`) and the patient's note names
the visit.

Comparison unit per patient: mm² when every visit of the patient has a scale, else pixels (the unit all visits
have; the outputs say so, and pixel areas are comparable only when the photos were taken from the same distance).

Healing rule (`--min-reduction` R, default 0.5; `--window-days` W, default 28; `--window-tolerance-days` T,
default 7, 0 <= T < W), in the comparison unit, with days counted from the first visit (the earliest date; of
several photos that day, the first CSV row):
- reduction(v) = 1 - area(v) / area(first visit). The 4-week reduction is measured at the visit NEAREST to day W
  among the visits on days W - T to W + T (ties: the earlier visit, e.g. day W - 2 before day W + 2; of same-day
  visits, the first CSV row). A visit on day 0 never counts as the reduction.
- on_track: that reduction >= R. not_on_track: that reduction < R.
- No visit on days W - T to W + T: insufficient_data when a visit after day W + T exists ("no visit within T days
  of day W"); when the series ends before day W - T, on_track if some visit after day 0 already shows a reduction
  >= R (reached early; the reason says so and names the first such visit), else insufficient_data ("day W not
  reached yet").
- insufficient_data when the first visit's area is 0 (no baseline), whatever the later visits show.
Visits on the same day as another are kept as separate rows (ordered by date, then by CSV row).

Outputs in --out (written atomically): patients/<id>/area.csv and area.png (area over days with a thumbnail of each
photo and its outlines), summary.csv, summary.md and problems.csv. <id> is the patient id with characters other
than letters, digits, '.', '_' and '-' replaced by '_' (made unique when two ids map to the same name).
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from PIL import Image
from tqdm import tqdm

from dfudet.commands.photo_lists import ROW_NOTE, ListRow, list_rows
from dfudet.data import instance_masks
from dfudet.data.checks import load_image
from dfudet.errors import ConfigError, DataError
from dfudet.inference.area import NO_SCALE_NOTE, area_mm2, card_note, check_mm_per_px
from dfudet.inference.backend import Backend, Detections
from dfudet.inference.draw import draw_outlines
from dfudet.inference.loader import load_backend
from dfudet.marker.detect import find_card
from dfudet.marker.scale import mask_area_mm2
from dfudet.utils import atomic_write_bytes

ON_TRACK, NOT_ON_TRACK, INSUFFICIENT = "on_track", "not_on_track", "insufficient_data"
REQUIRED_COLUMNS = ("patient", "date", "photo")
THUMB_SIZE = 96  # long side of the photo thumbnails on the plot, pixels



# ----------------------------------------------------------------------------------------------- the pure core
@dataclass(frozen=True)
class VisitArea:
    """One measured visit: its date, wound area in pixels and the photo's scale (None when unknown)."""

    day: date
    area_px: int
    mm_per_px: float | None = None
    ulcers: int = 0
    photo: str = ""
    row: int = 0  # row in VISITS.csv (header = row 1); 0 when not from a file
    card_mm2: float | None = None  # the area measured with the calibration card (used when mm_per_px is None)
    area_note: str = ""  # why there is no mm² (no scale, or the card's refusal reason)

    @property
    def mm2(self) -> float | None:
        """The visit's area in mm²: from its scale, else from the card; None when neither is known."""
        return area_mm2(self.area_px, self.mm_per_px) if self.mm_per_px is not None else self.card_mm2

    @property
    def area_source(self) -> str:
        return "user" if self.mm_per_px is not None else ("card" if self.card_mm2 is not None else "")


@dataclass(frozen=True)
class TimelineRow:
    """A visit placed on its patient's timeline; changes are in percent of the comparison unit (None: undefined)."""

    visit: VisitArea
    days_since_first: int
    area_mm2: float | None
    area: float  # in the timeline's unit
    change_vs_first_pct: float | None
    change_vs_previous_pct: float | None


@dataclass(frozen=True)
class Timeline:
    """One patient's visits in date order, the unit they are compared in and the healing flag with its reason."""

    rows: tuple[TimelineRow, ...]
    unit: str  # "mm2" or "px"
    unit_note: str  # why the unit is pixels ("" when mm²)
    flag: str  # ON_TRACK, NOT_ON_TRACK or INSUFFICIENT
    reason: str
    reduction_by_window: float | None  # fraction (0.6 = 60 % smaller); None when unknown
    window_visit_day: int | None  # days_since_first of the visit it was measured at (or reached early at)

    @property
    def first(self) -> TimelineRow:
        return self.rows[0]

    @property
    def last(self) -> TimelineRow:
        return self.rows[-1]


def _pct(now: float, before: float) -> float | None:
    """Percent change from `before` to `now`; None when `before` is 0 (no change can be expressed)."""
    return None if before == 0 else 100.0 * (now - before) / before


def check_rule(min_reduction: float, window_days: int, tolerance_days: int = 7) -> None:
    """The healing rule's parameters, or a ConfigError naming the option."""
    if not (math.isfinite(min_reduction) and 0 < min_reduction <= 1):
        raise ConfigError(f"--min-reduction must be a fraction in (0, 1] (0.5 = 50 % smaller), got {min_reduction}")
    if window_days < 1:
        raise ConfigError(f"--window-days must be at least 1, got {window_days}")
    if not 0 <= tolerance_days < window_days:
        raise ConfigError(f"--window-tolerance-days must be at least 0 and less than --window-days ({window_days}), "
                          f"got {tolerance_days}")


def _unit(visits: Sequence[VisitArea]) -> tuple[str, str]:
    """The comparison unit of a patient's visits and the note explaining a pixel comparison."""
    known = sum(v.mm2 is not None for v in visits)
    if known == len(visits):
        return "mm2", ""
    refused = [f"{v.day.isoformat()}: {v.area_note}" for v in visits if v.mm2 is None and v.area_note
               and v.area_note != NO_SCALE_NOTE]
    why = f" (no mm² on {'; '.join(refused)})" if refused else ""
    if known == 0:
        return "px", (NO_SCALE_NOTE + why) if why else NO_SCALE_NOTE
    return "px", (f"scale known for {known} of {len(visits)} visits: areas are compared in pixels, the unit all "
                  f"visits have; valid only when the photos were taken from the same distance{why}")


def window_visit(rows: Sequence[TimelineRow], window_days: int, tolerance_days: int) -> TimelineRow | None:
    """The visit the reduction by day W is measured at: the one nearest to day W among the visits on days W - T to
    W + T (ties: the earlier visit, then the earlier CSV row); None when no visit lies there. Never a day-0 visit."""
    lo, hi = max(1, window_days - tolerance_days), window_days + tolerance_days
    inside = [r for r in rows if lo <= r.days_since_first <= hi]
    # rows are in (date, CSV row) order and min() keeps the first of equal keys
    return min(inside, key=lambda r: abs(r.days_since_first - window_days), default=None)


def _measured(row: TimelineRow, first: float) -> tuple[float, str]:
    """(reduction of `row` vs the first visit's area, "60% smaller on day 28")."""
    reduction = 1.0 - row.area / first
    change = f"{reduction:.0%} smaller" if reduction >= 0 else f"{-reduction:.0%} larger"
    return reduction, f"{change} on day {row.days_since_first}"


def _flag(rows: Sequence[TimelineRow], min_reduction: float, window_days: int, tolerance_days: int
          ) -> tuple[str, str, float | None, int | None]:
    """(flag, reason, reduction by day W, day it was measured at) by the rule in the module docstring."""
    first, w, t = rows[0].area, window_days, tolerance_days
    if first == 0:
        return INSUFFICIENT, "no wound area on the first visit (area 0): no baseline to compare with", None, None
    reached = min_reduction - 1e-12  # 1 - 50/100 is 0.5 exactly, but a ratio of mm² may land a hair below
    target = f"{min_reduction:.0%} reduction by day {w}"
    at = window_visit(rows, w, t)
    if at is not None:
        reduction, measured = _measured(at, first)
        flag, verdict = (ON_TRACK, "reached") if reduction >= reached else (NOT_ON_TRACK, "below")
        return (flag, f"{measured} (the visit nearest to day {w}): {verdict} the {target}{_none_found(at)}",
                reduction, at.days_since_first)
    last = rows[-1].days_since_first
    if last > w + t:
        return (INSUFFICIENT, f"no visit within {t} days of day {w} (days {w - t} to {w + t}): the reduction by day "
                f"{w} is unknown", None, None)
    later = [r for r in rows if r.days_since_first >= 1]
    early = next((r for r in later if _measured(r, first)[0] >= reached), None)
    if early is not None:
        reduction, measured = _measured(early, first)
        return (ON_TRACK, f"{measured}: reached the {min_reduction:.0%} reduction early (the last visit is on day "
                f"{last}, before day {w - t}){_none_found(early)}", reduction, early.days_since_first)
    so_far = f"{_measured(later[-1], first)[1]} so far, below the {min_reduction:.0%} reduction; " if later else ""
    return (INSUFFICIENT, f"{so_far}day {w} not reached yet (the last visit is on day {last}, before day {w - t})",
            None, None)


def _none_found(row: TimelineRow) -> str:
    """A warning for a flag that rests on a photo where the model found no ulcer: healed, or missed."""
    if row.visit.ulcers or row.visit.area_px:
        return ""
    return (f"; CHECK the day-{row.days_since_first} photo: the model found no ulcer in it (healed, or missed: "
            "a small or unusual wound can be missed)")


def healing_timeline(visits: Sequence[VisitArea], min_reduction: float = 0.5, window_days: int = 28,
                     tolerance_days: int = 7) -> Timeline:
    """The timeline of one patient's visits: days since the first, areas, percent changes and the healing flag."""
    if not visits:
        raise ValueError("healing_timeline needs at least one visit")
    check_rule(min_reduction, window_days, tolerance_days)
    ordered = sorted(visits, key=lambda v: (v.day, v.row))
    unit, note = _unit(ordered)
    start = ordered[0].day
    rows: list[TimelineRow] = []
    for v in ordered:
        mm2 = v.mm2
        value = float(mm2) if unit == "mm2" and mm2 is not None else float(v.area_px)
        rows.append(TimelineRow(
            visit=v, days_since_first=(v.day - start).days, area_mm2=mm2, area=value,
            change_vs_first_pct=_pct(value, rows[0].area if rows else value),
            change_vs_previous_pct=_pct(value, rows[-1].area) if rows else None))
    flag, reason, reduction, day = _flag(rows, min_reduction, window_days, tolerance_days)
    return Timeline(tuple(rows), unit, note, flag, reason, reduction, day)


def rule_text(min_reduction: float, window_days: int, tolerance_days: int = 7) -> str:
    """The healing rule in words, for summary.md."""
    r, w, t = f"{min_reduction:.0%}", window_days, tolerance_days
    return (f"reduction = 1 - area / area of the first visit, measured at the visit nearest to day {w} among the "
            f"visits on days {w - t} to {w + t} (ties: the earlier visit; a visit on day 0 never counts). "
            f"**{ON_TRACK}**: reduction >= {r}. **{NOT_ON_TRACK}**: reduction < {r}. With no visit on days {w - t} "
            f"to {w + t}: **{INSUFFICIENT}** when a later visit exists (no visit within {t} days of day {w}); when "
            f"the last visit is before day {w - t}, **{ON_TRACK}** if a visit already shows a reduction >= {r} "
            f"(reached early), else **{INSUFFICIENT}** (day {w} not reached yet). **{INSUFFICIENT}** also when the "
            f"first visit's area is 0 (no baseline).")


# ----------------------------------------------------------------------------------------------- VISITS.csv
@dataclass(frozen=True)
class Visit:
    """A usable VISITS.csv row."""

    row: int
    patient: str
    day: date
    photo: str  # as written in the CSV
    path: Path  # resolved
    mm_per_px: float | None


@dataclass
class Problem:
    """A VISITS.csv row that was not measured, and why."""

    row: int
    patient: str
    photo: str
    problem: str

    def text(self, csv_path: Path) -> str:
        return f"{csv_path.name} row {self.row}: {self.problem}"


def _parse_date(text: str) -> date:
    t = text.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        raise ValueError(f"date {text!r} is not YYYY-MM-DD")
    try:
        return date.fromisoformat(t)
    except ValueError:
        raise ValueError(f"date {text!r} is not a calendar date (YYYY-MM-DD)") from None


def _row_visit(row: ListRow, default_scale: float | None) -> Visit | list[str]:
    """The visit of one data row, or every problem of the row (without its number)."""
    patient = row.cell("patient")
    problems = [] if patient else ["empty patient"]
    day = None
    try:
        day = _parse_date(row.cell("date"))
    except ValueError as exc:
        problems.append(str(exc))
    scale, bad_scale = row.scale()
    photo, path, bad_photo = row.photo()
    problems += [p for p in (bad_scale, bad_photo) if p]
    if problems or day is None:
        return problems
    return Visit(row.number, patient, day, photo, path, scale if scale is not None else default_scale)


def read_visits(csv_path: str | Path, default_mm_per_px: float | None = None) -> tuple[list[Visit], list[Problem]]:
    """The usable rows of VISITS.csv and a Problem for each bad row (row numbers count the header as row 1)."""
    csv_path = Path(csv_path)
    visits: list[Visit] = []
    problems: list[Problem] = []
    for row in list_rows(csv_path, REQUIRED_COLUMNS, "visits file"):
        visit = _row_visit(row, default_mm_per_px)
        if isinstance(visit, Visit):
            visits.append(visit)
        else:
            problems.append(Problem(row.number, row.cell("patient"), row.cell("photo"), "; ".join(visit)))
    return visits, problems


# ----------------------------------------------------------------------------------------------- measuring
@dataclass
class Measured:
    """A visit's area and its thumbnail with the outlines drawn."""

    visit: Visit
    area: VisitArea
    thumbnail: Image.Image = field(repr=False)


def union_mask(dets: Detections) -> np.ndarray:
    """The pixels covered by at least one outline of `dets` (all False without detections)."""
    union = np.zeros((dets.height, dets.width), dtype=bool)
    for rle in dets.masks or ():
        union |= instance_masks.decode(rle)
    return union


def union_area(dets: Detections) -> int:
    """Pixels covered by at least one outline of `dets` (overlaps counted once); 0 without detections."""
    return int(union_mask(dets).sum()) if dets.masks else 0


def thumbnail(image: np.ndarray, dets: Detections, size: int = THUMB_SIZE) -> Image.Image:
    """The photo shrunk to `size` px on its long side with each kept outline drawn."""
    im = Image.fromarray(image)
    factor = min(1.0, size / max(im.size))
    im = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.Resampling.BILINEAR)
    return draw_outlines(im, [instance_masks.polygons(r) for r in dets.masks or ()], factor=factor)


def measure(backend: Backend, visit: Visit, card_bar_mm: float | None = None) -> Measured:
    """Predict one visit's photo and measure the union of the kept outlines (DataError for an unreadable photo);
    without a scale, in mm² with the calibration card when the photo shows an accepted one."""
    image = load_image(visit.path)
    kept = backend.keep(backend.predict_arrays([image])[0])
    union = union_mask(kept)
    card_mm2, note = None, ""
    if visit.mm_per_px is None:
        card = find_card(image, bar_mm=card_bar_mm)
        if card.accepted and card.homography is not None:
            card_mm2 = mask_area_mm2(union, card.homography)
        else:
            note = card_note(card)
    area = VisitArea(visit.day, int(union.sum()), visit.mm_per_px, len(kept.scores), visit.photo, visit.row,
                     card_mm2=card_mm2, area_note=note)
    return Measured(visit, area, thumbnail(image, kept))


def require_outlines(backend: Backend) -> None:
    """ConfigError unless the backend's model outlines each detection (track measures areas)."""
    if not backend.info.outlines:
        raise ConfigError(f"track needs an outline model (e.g. maskrcnn_efficientnet) to measure wound areas; "
                          f"{backend.info.path} is {backend.info.identity.model_name}, which gives boxes only")


# ----------------------------------------------------------------------------------------------- outputs
def safe_ids(patients: Sequence[str]) -> dict[str, str]:
    """A folder name per patient id: unsafe characters replaced by '_', made unique with _2, _3..."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for p in patients:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("._") or "patient"
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.lower())
        out[p] = name
    return out


def _num(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


AREA_COLUMNS = ("date", "days_since_first", "photo", "row", "ulcers", "area_px", "mm_per_px", "area_mm2",
                "change_unit", "change_vs_first_pct", "change_vs_previous_pct", "area_source", "area_note")


def area_csv(tl: Timeline) -> bytes:
    """patients/<id>/area.csv: one row per visit (area_mm2 empty when the photo's scale is unknown)."""
    return _csv_bytes(AREA_COLUMNS, [
        [r.visit.day.isoformat(), r.days_since_first, r.visit.photo, r.visit.row, r.visit.ulcers, r.visit.area_px,
         "" if r.visit.mm_per_px is None else f"{r.visit.mm_per_px:g}", _num(r.area_mm2), tl.unit,
         _num(r.change_vs_first_pct), _num(r.change_vs_previous_pct), r.visit.area_source, r.visit.area_note]
        for r in tl.rows])


def plot_timeline(patient: str, tl: Timeline, thumbs: Sequence[Image.Image], path: Path, min_reduction: float,
                  window_days: int, tolerance_days: int = 7) -> None:
    """patients/<id>/area.png: area over days since the first visit; above the plot, each visit's thumbnail with
    its outlines, in date order, joined to its point by a line."""
    days = [r.days_since_first for r in tl.rows]
    values = [r.area for r in tl.rows]
    fig = Figure(figsize=(min(20.0, max(6.0, 1.1 * len(days) + 1.5)), 6.0))
    # thumbnails side by side over the axes (0.775 of the figure's width; OffsetImage counts a pixel as a point),
    # shrunk when there are many
    zoom = min(0.8, 0.9 * fig.get_figwidth() * 0.775 * 72 / len(days) / THUMB_SIZE)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(days, values, "o-", color="tab:red", zorder=3)
    for r in tl.rows:  # visits without mm² (no scale, or the card refused) when the patient is compared in pixels
        if r.area_mm2 is None and r.visit.area_note and r.visit.area_note != NO_SCALE_NOTE:
            ax.annotate("card refused", (r.days_since_first, r.area), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=7, color="tab:red")
    if tl.first.area > 0:
        ax.axhline((1 - min_reduction) * tl.first.area, ls="--", color="grey", lw=1,
                   label=f"{min_reduction:.0%} smaller than the first visit")
    ax.axvline(window_days, ls=":", color="grey", lw=1, label=f"day {window_days}")
    if tolerance_days:
        ax.axvspan(window_days - tolerance_days, window_days + tolerance_days, color="grey", alpha=0.08, lw=0,
                   label=f"days {window_days - tolerance_days}-{window_days + tolerance_days}")
    for i, (d, v, th) in enumerate(zip(days, values, thumbs)):
        x = (i + 0.5) / len(days)
        ax.text(x, 1.01, f"day {d}", transform=ax.transAxes, ha="center", va="bottom", fontsize=7)
        box = AnnotationBbox(OffsetImage(np.asarray(th), zoom=zoom), (d, v), xybox=(x, 1.06),
                             xycoords="data", boxcoords="axes fraction", box_alignment=(0.5, 0.0), pad=0.2,
                             annotation_clip=False, arrowprops={"arrowstyle": "-", "color": "lightgrey", "lw": 0.8})
        ax.add_artist(box)
    unit = "mm²" if tl.unit == "mm2" else "pixels"
    ax.set_xlabel(f"days since the first visit ({tl.first.visit.day.isoformat()})")
    ax.set_ylabel(f"wound area ({unit})")
    fig.suptitle(f"{patient}: {tl.flag}", fontsize=11)
    ax.set_ylim(bottom=0, top=max([*values, 1.0]) * 1.15)
    ax.set_xlim(min(days) - max(3, window_days * 0.15),
                max([*days, window_days + tolerance_days]) + max(3, window_days * 0.15))
    ax.legend(loc="best", fontsize=8)
    width = int(fig.get_figwidth() * 16)  # characters per line at fontsize 7
    fig.text(0.01, 0.01, "\n".join(textwrap.fill(t, width) for t in (tl.reason, tl.unit_note) if t), fontsize=7,
             va="bottom")
    fig.subplots_adjust(bottom=0.17, top=0.7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


SUMMARY_COLUMNS = ("patient", "folder", "visits", "first_date", "last_date", "days", "unit", "first_area",
                   "last_area", "change_pct", "reduction_by_window_pct", "window_visit_day", "flag", "reason", "note")


def summary_row(patient: str, folder: str, tl: Timeline) -> dict[str, Any]:
    """One patient's summary.csv row (areas in the patient's comparison unit, `unit`)."""
    digits = 2 if tl.unit == "mm2" else 0
    values = [patient, folder, len(tl.rows), tl.first.visit.day.isoformat(), tl.last.visit.day.isoformat(),
              tl.last.days_since_first, tl.unit, _num(tl.first.area, digits), _num(tl.last.area, digits),
              _num(tl.last.change_vs_first_pct),
              _num(None if tl.reduction_by_window is None else 100 * tl.reduction_by_window),
              "" if tl.window_visit_day is None else tl.window_visit_day, tl.flag, tl.reason, tl.unit_note]
    return dict(zip(SUMMARY_COLUMNS, values, strict=True))


def summary_md(rows: Sequence[dict[str, Any]], problems: Sequence[Problem], csv_path: Path, min_reduction: float,
               window_days: int, tolerance_days: int = 7) -> bytes:
    """summary.md: the rule, one table row per patient, and the rows that were not measured."""
    lines = [f"# Healing timeline: {csv_path.name}", "",
             f"Rule (`--min-reduction {min_reduction:g}`, `--window-days {window_days}`, `--window-tolerance-days "
             f"{tolerance_days}`): " + rule_text(min_reduction, window_days, tolerance_days), "",
             "Wound area = pixels of the union of the kept outlines (overlaps counted once); mm² only where the "
             "photo's scale is known. Each patient is compared in mm² when every visit has a scale, else in pixels.",
             "", "| patient | visits | first | last | unit | first area | last area | change % | flag | reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reason = r["reason"] + (f" ({r['note']})" if r["note"] else "")
        cells = [r[k] for k in ("patient", "visits", "first_date", "last_date", "unit", "first_area", "last_area",
                                "change_pct", "flag")] + [reason]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    if problems:
        lines += ["", f"## Rows not measured ({len(problems)}; {ROW_NOTE})", ""]
        lines += [f"- row {p.row}: {p.problem}" for p in problems]
    return ("\n".join(lines) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------------------- the command
def _report_problems(problems: Sequence[Problem], csv_path: Path, out: Path) -> None:
    atomic_write_bytes(out / "problems.csv", _csv_bytes(("row", "patient", "photo", "problem"),
                                                        [[p.row, p.patient, p.photo, p.problem] for p in problems]))
    for p in problems:
        print(f"skipped: {p.text(csv_path)} ({ROW_NOTE})", file=sys.stderr)


def _measure_all(backend: Backend, visits: Sequence[Visit], problems: list[Problem], progress: bool,
                 card_bar_mm: float | None = None) -> list[Measured]:
    """Measure every visit; an unreadable photo is added to `problems` (kept in row order) and the rest go on."""
    out: list[Measured] = []
    for v in tqdm(visits, desc="track", unit="photo", disable=None if progress else True):
        try:
            out.append(measure(backend, v, card_bar_mm))
        except DataError as exc:
            problems.append(Problem(v.row, v.patient, v.photo, str(exc)))
    problems.sort(key=lambda p: p.row)
    return out


def run_track(visits_csv: str | Path, out: str | Path, checkpoint: str | Path | None = None,
              onnx: str | Path | None = None, mm_per_px: float | None = None, min_reduction: float = 0.5,
              window_days: int = 28, operating_threshold: float | None = None, device: str = "cpu",
              progress: bool = True, tolerance_days: int = 7, card_bar_mm: float | None = None) -> dict[str, Any]:
    """Measure every visit photo of VISITS.csv and write the per-patient timelines and the summary to `out`."""
    csv_path, out = Path(visits_csv), Path(out)
    check_rule(min_reduction, window_days, tolerance_days)
    default_scale = check_mm_per_px(mm_per_px, "--mm-per-px")
    visits, problems = read_visits(csv_path, default_scale)
    backend = load_backend(checkpoint=checkpoint, onnx=onnx, device=device, operating_threshold=operating_threshold)
    require_outlines(backend)
    measured = _measure_all(backend, visits, problems, progress, card_bar_mm) if visits else []
    out.mkdir(parents=True, exist_ok=True)
    _report_problems(problems, csv_path, out)
    if not measured:
        raise DataError(f"{csv_path}: no visit could be measured ({ROW_NOTE}; also in {out / 'problems.csv'})",
                        [p.text(csv_path) for p in problems])
    by_patient: dict[str, list[Measured]] = {}
    for m in measured:
        by_patient.setdefault(m.visit.patient, []).append(m)
    folders = safe_ids(list(by_patient))
    summary: list[dict[str, Any]] = []
    for patient, ms in by_patient.items():
        tl = healing_timeline([m.area for m in ms], min_reduction, window_days, tolerance_days)
        thumbs = {m.visit.row: m.thumbnail for m in ms}
        d = out / "patients" / folders[patient]
        atomic_write_bytes(d / "area.csv", area_csv(tl))
        plot_timeline(patient, tl, [thumbs[r.visit.row] for r in tl.rows], d / "area.png", min_reduction,
                      window_days, tolerance_days)
        summary.append(summary_row(patient, f"patients/{folders[patient]}", tl))
    atomic_write_bytes(out / "summary.csv", _csv_bytes(SUMMARY_COLUMNS, [list(r.values()) for r in summary]))
    atomic_write_bytes(out / "summary.md", summary_md(summary, problems, csv_path, min_reduction, window_days,
                                                          tolerance_days))
    flags = {f: sum(r["flag"] == f for r in summary) for f in (ON_TRACK, NOT_ON_TRACK, INSUFFICIENT)}
    return {"patients": len(summary), "visits": len(measured), "problems": len(problems), "flags": flags,
            "pixels_only": sum(r["unit"] == "px" for r in summary), "threshold": backend.operating_threshold,
            "out": str(out)}
