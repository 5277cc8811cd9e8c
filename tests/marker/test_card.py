"""The printable card: its size on paper, its pattern, and `dfudet marker`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfudet.cli import main
from dfudet.marker import card
from dfudet.marker.detect import find_card

MM_PER_PT = 25.4 / 72


def test_card_is_exactly_its_stated_size_at_600_dpi():
    im = card.render_card()
    assert im.shape == (900, 1500) and im.dtype == np.uint8
    assert card.CARD_MM == pytest.approx((63.5, 38.1))
    # the scale bar: 50 mm of black along the bar's middle row (the last dot is partly grey)
    row = im[(card.BAR_Y_DOTS[0] + card.BAR_Y_DOTS[1]) // 2]
    start = int(np.argmax(row < 128))
    length = int(np.argmax(row[start:] >= 128))  # the first black run (the "50 mm" label follows it)
    assert length * card.DOT_MM == pytest.approx(50.0, abs=card.DOT_MM)
    # the grey patch is neutral mid-grey
    x1, y1, x2, y2 = card.GREY_BOX_DOTS
    assert np.all(im[y1 + 5:y2 - 5, x1 + 5:x2 - 5] == card.GREY)


def test_the_unwarped_card_is_found_with_its_own_geometry():
    im = card.render_card(dpi=300)  # 750 x 450 px, 11.8 px per mm
    canvas = np.full((650, 950), 140, np.uint8)
    canvas[100:550, 100:850] = im
    d = find_card(canvas)
    assert d.accepted and d.markers_found == 9 and d.points_used >= 40
    px_per_mm = 750 / card.CARD_MM[0]
    truth = np.array([[px_per_mm, 0, 100 - 0.5], [0, px_per_mm, 100 - 0.5], [0, 0, 1]])
    pts = card.geometry().charuco_mm
    mapped = np.c_[pts, np.ones(len(pts))] @ d.homography.T
    expected = np.c_[pts, np.ones(len(pts))] @ truth.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], expected[:, :2], atol=0.3)
    assert d.tilt_deg < 3.0 and d.card_px == pytest.approx(750, rel=0.005)


def test_dfudet_marker_writes_a_pdf_of_the_cards_physical_size_and_a_600_dpi_png(tmp_path: Path, capsys):
    pdf, png = tmp_path / "card.pdf", tmp_path / "card.png"
    assert main(["marker", "--out", str(pdf), "--png", str(png)]) == 0
    assert "63.5 x 38.1 mm" in capsys.readouterr().out
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    box = [float(v) for v in re.search(rb"/MediaBox \[ ([\d. ]+) \]", data).group(1).split()]
    assert (box[2] - box[0]) * MM_PER_PT == pytest.approx(63.5, abs=0.01)
    assert (box[3] - box[1]) * MM_PER_PT == pytest.approx(38.1, abs=0.01)
    assert b"/DCTDecode" not in data  # lossless: no JPEG ringing around the markers
    with Image.open(png) as im:
        assert im.size == (1500, 900) and im.info["dpi"] == pytest.approx((600, 600), abs=0.01)
        assert np.array_equal(np.asarray(im.convert("L")), card.render_card())


def test_dfudet_marker_refuses_other_formats(tmp_path: Path, capsys):
    assert main(["marker", "--out", str(tmp_path / "card.svg")]) == 2
    assert "written as .pdf or .png" in capsys.readouterr().err
    assert not (tmp_path / "card.svg").exists()


def test_the_marker_package_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys, dfudet.marker.card, dfudet.marker.detect, dfudet.marker.scale; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning') "
            "or m.startswith('dfudet.engine')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
