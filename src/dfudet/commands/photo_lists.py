"""Reading photo lists: the CSV files `dfudet predict --photos` and `dfudet track` (VISITS.csv) take.

One reading for both: column names are case-insensitive ('Photo' is 'photo'), the scale column is `scale` or
`mm_per_px` (never both), photo paths are relative to the list's folder (`~` expanded), and rows are numbered as in
a spreadsheet: the header is row 1, blank lines and rows of empty cells count as rows but are not read.
No matplotlib or torch here, so predict and track can both import it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfudet.errors import ConfigError, DataError
from dfudet.inference.area import parse_scale

SCALE_COLUMNS = ("scale", "mm_per_px")
ROW_NOTE = "rows counted with the header as row 1"


def read_rows(path: Path, required: Sequence[str], what: str) -> list[list[str]]:
    """Every row of the CSV file `path` (header first); DataError for a missing, unreadable or empty file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc})") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file (expected a header with {', '.join(required)}[, scale])")
    return rows


def column_index(header: Sequence[str], path: Path, required: Sequence[str]) -> dict[str, int]:
    """Column index by lower-case name (the first of repeated names); DataError naming a missing required column
    or a list with both a 'scale' and a 'mm_per_px' column."""
    cols: dict[str, int] = {}
    for i, name in enumerate(header):
        cols.setdefault(name.strip().lower(), i)
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)} (the header has "
                        f"{', '.join(repr(h) for h in header) or 'nothing'}; needed: {', '.join(required)}, "
                        f"optional scale)")
    if all(c in cols for c in SCALE_COLUMNS):
        raise DataError(f"{path}: both a 'scale' and a 'mm_per_px' column: keep one (mm per pixel)")
    return cols


def scale_column(cols: dict[str, int]) -> str | None:
    """The name of the list's scale column ('scale' or 'mm_per_px'), None without one."""
    return next((c for c in SCALE_COLUMNS if c in cols), None)


def cell(cells: Sequence[str], cols: dict[str, int], name: str | None) -> str:
    """The stripped cell of column `name` ("" when there is no such column or the row is shorter than the header)."""
    i = cols.get(name) if name is not None else None
    return cells[i].strip() if i is not None and i < len(cells) else ""


def data_rows(rows: Sequence[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of every data row with a non-empty cell; the header is row 1."""
    for n, cells in enumerate(rows[1:], start=2):
        if any(c.strip() for c in cells):
            yield n, cells


def resolve_photo(photo: str, list_path: Path) -> Path:
    """The path of a listed photo: absolute as written, else relative to the list's folder."""
    p = Path(photo).expanduser()
    return p if p.is_absolute() else list_path.parent / p


@dataclass(frozen=True)
class ListRow:
    """One data row of a photo list, read by the rules above (predict and track read their rows through it)."""

    number: int  # spreadsheet row number (the header is row 1)
    cells: list[str]
    cols: dict[str, int]  # column index by lower-case name
    list_path: Path

    def cell(self, name: str) -> str:
        """The stripped cell of column `name` ("" when absent)."""
        return cell(self.cells, self.cols, name)

    def photo(self) -> tuple[str, Path, str | None]:
        """(the photo as written, its resolved path, why it cannot be read as a file or None)."""
        written = self.cell("photo")
        path = resolve_photo(written, self.list_path)
        return written, path, photo_problem(written, path)

    def scale(self) -> tuple[float | None, str | None]:
        """(mm per pixel of the row's scale column, None when empty or absent; the problem with it or None)."""
        name = scale_column(self.cols)
        if name is None:
            return None, None
        try:
            return parse_scale(self.cell(name), name), None
        except ConfigError as exc:
            return None, str(exc)


def list_rows(path: Path, required: Sequence[str], what: str) -> list[ListRow]:
    """Every data row of the photo list `path` with a non-empty cell; DataError for an unreadable file or a missing
    required column (`what` names the file in messages, e.g. "photo list")."""
    rows = read_rows(path, required, what)
    cols = column_index(rows[0], path, required)
    return [ListRow(n, cells, cols, path) for n, cells in data_rows(rows)]


def photo_problem(photo: str, path: Path) -> str | None:
    """Why a listed photo cannot be read as a file (empty, missing, a folder), None when it is a file."""
    if not photo:
        return "empty photo"
    if not path.exists():
        return f"photo {photo} does not exist ({path})"
    if not path.is_file():
        return f"photo {photo} is not a file ({path})"
    return None
