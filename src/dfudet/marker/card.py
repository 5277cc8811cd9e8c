"""The printable calibration card: a ChArUco pattern of stated physical size, a 50 mm scale bar, a grey patch.

Why this card (docs/marker.md): 63.5 x 38.1 mm (2.5 x 1.5 in) is smaller than a credit card, so it lies beside a
heel or toe wound on the same skin, and at 600 dpi it is exactly 1500 x 900 printer dots, so the PNG and the PDF
carry no rounding. The pattern is an OpenCV ChArUco board (`cv2.aruco.CharucoBoard`, not a home-made detector):
6 x 3 squares of 1/3 in (8.467 mm) with 4x4-bit ArUco markers of 1/4 in (6.35 mm, one bit = 1.06 mm) from
DICT_4X4_50, with a FIXED set of nine ids that no default board uses: a board of the default ids, another
dictionary, or other ids is "not our card". ChArUco gives the 10 inner chessboard corners (saddle points, located to
a fraction of a pixel) on top of the 36 marker corners, all used for the homography.

Coordinates: millimetres on the card, origin at its top-left corner, x to the right, y down (the printed text reads
left to right); `card_points_mm` gives the corners the detector can find, in the order of OpenCV's ids.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dfudet.errors import ConfigError
from dfudet.utils import atomic_write_bytes

DPI = 600
MM_PER_INCH = 25.4
DOT_MM = MM_PER_INCH / DPI  # one printer dot at 600 dpi
CARD_DOTS = (1500, 900)  # width, height in dots at 600 dpi = 2.5 x 1.5 in
CARD_MM = (CARD_DOTS[0] * DOT_MM, CARD_DOTS[1] * DOT_MM)  # (63.5, 38.1)
SQUARES = (6, 3)  # ChArUco squares across, down
SQUARE_DOTS, MARKER_DOTS = 200, 150  # 1/3 in squares, 1/4 in markers (6 bits of 25 dots with the border bit)
SQUARE_MM, MARKER_MM = SQUARE_DOTS * DOT_MM, MARKER_DOTS * DOT_MM
BOARD_ORIGIN_DOTS = (60, 60)  # top-left corner of the pattern on the card (2.54 mm margin)
BOARD_ORIGIN_MM = (BOARD_ORIGIN_DOTS[0] * DOT_MM, BOARD_ORIGIN_DOTS[1] * DOT_MM)
DICTIONARY_NAME = "DICT_4X4_50"
# the card's nine marker ids (one per white square, row by row); chosen scattered so that a default board (ids 0..8)
# of the same layout is told apart
MARKER_IDS = (11, 23, 5, 38, 17, 42, 29, 3, 46)
SCALE_BAR_MM = 50.0
BAR_Y_DOTS = (700, 730)  # the bar's top and bottom
GREY = 128  # sRGB 128: a neutral mid-grey patch for judging the photo's colour cast
GREY_BOX_DOTS = (1300, 60, 1440, 660)  # x1, y1, x2, y2
INSTRUCTIONS = ("dfudet wound card - print at 100% (actual size): the bar must measure 50 mm",
                "Lay it flat beside the wound, on the same skin plane; do not cover the wound")


@lru_cache(maxsize=1)
def dictionary() -> cv2.aruco.Dictionary:
    """The card's ArUco dictionary (DICT_4X4_50)."""
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, DICTIONARY_NAME))


@lru_cache(maxsize=1)
def board() -> cv2.aruco.CharucoBoard:
    """The card's ChArUco board, in millimetres, with the card's marker ids."""
    return cv2.aruco.CharucoBoard(SQUARES, SQUARE_MM, MARKER_MM, dictionary(), np.array(MARKER_IDS, np.int32))


@dataclass(frozen=True)
class CardGeometry:
    """Where the detectable points lie on the card, in mm (card origin at its top-left corner)."""

    charuco_mm: np.ndarray  # (10, 2) inner chessboard corners, indexed by ChArUco corner id
    marker_mm: dict[int, np.ndarray]  # marker id -> (4, 2) corners in OpenCV's order (clockwise from top-left)
    size_mm: tuple[float, float]


@lru_cache(maxsize=1)
def geometry() -> CardGeometry:
    """The card's point coordinates in mm, from the board OpenCV builds (so they match what it detects)."""
    b = board()
    offset = np.array(BOARD_ORIGIN_MM, np.float64)
    corners = np.asarray(b.getChessboardCorners(), np.float64)[:, :2] + offset
    markers = {int(i): np.asarray(p, np.float64).reshape(4, 3)[:, :2] + offset
               for i, p in zip(np.asarray(b.getIds()).ravel(), b.getObjPoints())}
    return CardGeometry(corners, markers, CARD_MM)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_card(dpi: int = DPI) -> np.ndarray:
    """The card as a greyscale uint8 image at `dpi` (600: 1500 x 900 px, exactly 63.5 x 38.1 mm).

    Other resolutions are drawn at 600 dpi and resized with area averaging (the bench and tests render the card
    at a few pixels per mm this way; the printer gets the 600 dpi original).
    """
    if dpi <= 0:
        raise ConfigError(f"card dpi must be positive, got {dpi}")
    w, h = CARD_DOTS
    canvas = np.full((h, w), 255, np.uint8)
    bw, bh = SQUARES[0] * SQUARE_DOTS, SQUARES[1] * SQUARE_DOTS
    pattern = board().generateImage((bw, bh), marginSize=0, borderBits=1)
    x0, y0 = BOARD_ORIGIN_DOTS
    canvas[y0:y0 + bh, x0:x0 + bw] = pattern
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    gx1, gy1, gx2, gy2 = GREY_BOX_DOTS
    draw.rectangle((gx1, gy1, gx2 - 1, gy2 - 1), fill=GREY)
    # the scale bar: 50 mm of solid black from the pattern's left edge, ticks every 10 mm
    bar_len = SCALE_BAR_MM / DOT_MM  # 1181.1 dots: the last dot is drawn partly grey to keep the length exact
    by1, by2 = BAR_Y_DOTS
    full = int(bar_len)
    draw.rectangle((x0, by1, x0 + full - 1, by2 - 1), fill=0)
    frac = bar_len - full
    draw.line((x0 + full, by1, x0 + full, by2 - 1), fill=int(round(255 * (1 - frac))))
    for k in range(6):
        tx = x0 + round(k * 10.0 / DOT_MM)
        draw.line((min(tx, x0 + full - 3), by1 - 18, min(tx, x0 + full - 3), by1), fill=0, width=3)
    draw.text((x0 + full + 20, by1 - 12), f"{SCALE_BAR_MM:g} mm", fill=0, font=_font(44))
    for k, line in enumerate(INSTRUCTIONS):
        draw.text((x0, 775 + 52 * k), line, fill=0, font=_font(38))
    draw.rectangle((0, 0, w - 1, h - 1), outline=170, width=3)  # cutting line
    out = np.asarray(im)
    if dpi != DPI:
        size = (max(1, round(w * dpi / DPI)), max(1, round(h * dpi / DPI)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
    return out


def card_png_bytes() -> bytes:
    """The card as a 600 dpi PNG (the dpi is stored, so image viewers print it at its size)."""
    buf = io.BytesIO()
    Image.fromarray(render_card()).save(buf, format="PNG", dpi=(DPI, DPI))
    return buf.getvalue()


def card_pdf_bytes() -> bytes:
    """The card as a one-page PDF whose page is exactly the card (63.5 x 38.1 mm = 180 x 108 pt)."""
    # a palette image with a grey ramp: Pillow writes it losslessly (greyscale and RGB pages would be JPEG-coded,
    # whose ringing blurs the marker edges)
    grey = Image.fromarray(render_card())
    im = Image.frombytes("P", grey.size, grey.tobytes())
    im.putpalette([v for g in range(256) for v in (g, g, g)])
    buf = io.BytesIO()
    im.save(buf, format="PDF", resolution=float(DPI))
    return buf.getvalue()


def write_card(out: str | Path) -> Path:
    """Write the card to `out`, as PDF or PNG by its extension (atomic); ConfigError for any other extension."""
    out = Path(out)
    ext = out.suffix.lower()
    if ext == ".pdf":
        data = card_pdf_bytes()
    elif ext == ".png":
        data = card_png_bytes()
    else:
        raise ConfigError(f"{out}: the card is written as .pdf or .png (got {ext or 'no extension'}); e.g. "
                          "`dfudet marker --out card.pdf`")
    atomic_write_bytes(out, data)
    return out
