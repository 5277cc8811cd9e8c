"""dfudet.inference.quality: each measure answers to its own degradation, the gate says why, thresholds are checked."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from dfudet.data.demo import render_sample
from dfudet.errors import ConfigError
from dfudet.inference.quality import (
    QualityThresholds,
    assess_quality,
    judge,
    measure_quality,
    quality_thresholds,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 512 px synthetic foot photo with an ulcer (skin texture, edges, a background), at 80% of its brightness
    (the demo's white background would otherwise count as clipped highlights)."""
    return (render_sample(5, 0, 512, healthy=False).image * 0.8).astype(np.uint8)


def _exposure(image: np.ndarray, stops: float) -> np.ndarray:
    x = np.arange(256) / 255.0
    lut = np.clip(255 * np.clip(x ** 2.2 * 2.0 ** stops, 0, 1) ** (1 / 2.2) + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def test_a_clean_photo_passes_with_the_default_thresholds(photo: np.ndarray) -> None:
    r = assess_quality(photo)
    assert r.ok and r.reasons == ()
    assert r.measures.width == r.measures.height == r.measures.short_side == 512
    assert r.measures.content_share == 1.0


def test_sharpness_falls_with_blur_and_the_gate_calls_it_blurred(photo: np.ndarray) -> None:
    sharp = measure_quality(photo).sharpness
    values = [measure_quality(cv2.GaussianBlur(photo, (0, 0), s)).sharpness for s in (1, 2, 4)]
    assert sharp > values[0] > values[1] > values[2]
    assert values[2] < sharp / 5
    r = assess_quality(cv2.GaussianBlur(photo, (0, 0), 4))
    assert not r.ok and len(r.reasons) == 1 and r.reasons[0].startswith("blurred: sharpness")


def test_sharpness_does_not_depend_on_the_resolution() -> None:
    """A 1024 px photo and the same photo stored at 512 px read the same (measured at a fixed 512 px), where the
    Laplacian's variance at the stored size would differ."""
    big = render_sample(5, 1, 1024, healthy=False).image
    small = cv2.resize(big, (512, 512), interpolation=cv2.INTER_AREA)
    a, b = measure_quality(small), measure_quality(big)
    assert b.sharpness == pytest.approx(a.sharpness, rel=0.01)  # grey before or after the resize: rounding only
    assert b.short_side == 1024 and a.short_side == 512

    def native(im: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    lo, hi = sorted((native(small), native(big)))
    assert hi > 1.5 * lo


def test_exposure_measures_answer_to_darkening_and_brightening(photo: np.ndarray) -> None:
    normal = measure_quality(photo)
    dark = measure_quality(_exposure(photo, -5))
    bright = measure_quality(_exposure(photo, 3))
    assert dark.mean_luma < normal.mean_luma / 3 and dark.dark_share > normal.dark_share
    assert bright.mean_luma > normal.mean_luma and bright.bright_share > normal.bright_share + 0.3
    # the sharpness is divided by the contrast: less light is not taken for blur
    assert dark.sharpness == pytest.approx(normal.sharpness, rel=0.5)
    assert [r.split(":")[0] for r in judge(dark).reasons] == ["too dark"]
    assert {r.split(":")[0] for r in judge(bright).reasons} == {"overexposed"}


def test_a_tiny_photo_is_too_small(photo: np.ndarray) -> None:
    tiny = cv2.resize(photo, (120, 90), interpolation=cv2.INTER_AREA)
    r = assess_quality(tiny)
    assert r.measures.short_side == 90 and not r.ok
    assert any(x.startswith("too small: the short side is 90 px (of 120x90), under 96 px") for x in r.reasons)
    # with the bar lowered it is no longer refused for its size
    lowered = assess_quality(tiny, quality_thresholds(min_short_side=64))
    assert not any(x.startswith("too small") for x in lowered.reasons)


def test_black_bars_are_not_counted_as_dark_pixels_or_edges(photo: np.ndarray) -> None:
    """A letterboxed photo (black bars, as every FUSeg photo has) measures like the photo itself."""
    content = cv2.resize(photo, (512, 384), interpolation=cv2.INTER_AREA)
    boxed = np.zeros((512, 512, 3), np.uint8)
    boxed[64:448] = content
    a, b = measure_quality(content), measure_quality(boxed)
    assert b.content_share == pytest.approx(378 * 512 / 512 ** 2)  # 3 px more cut on each side with a bar
    assert b.short_side == 378
    assert b.dark_share == pytest.approx(a.dark_share, abs=0.01)
    assert b.mean_luma == pytest.approx(a.mean_luma, rel=0.02)
    assert b.sharpness == pytest.approx(a.sharpness, rel=0.1)
    # a photo that is nearly all black is an underexposed photo: nothing is cut
    night = _exposure(photo, -9)
    assert measure_quality(night).content_share == 1.0
    assert not assess_quality(night).ok


def test_every_failed_check_gives_its_reason_and_the_result_is_json_ready(photo: np.ndarray) -> None:
    m = measure_quality(photo)
    worst = replace(m, sharpness=1.0, mean_luma=20.0, dark_share=0.7, bright_share=0.3, short_side=90)
    r = judge(worst)
    assert not r.ok
    assert [x.split(":")[0] for x in r.reasons] == ["blurred", "too dark", "too dark", "overexposed", "too small"]
    assert r.reasons[1] == "too dark: mean brightness 20 of 255 is under 60"
    assert r.reasons[2] == "too dark: 70% of the pixels are near black (over 60%)"
    assert r.reasons[3] == "overexposed: 30% of the pixels are near white (over 25%)"
    assert judge(replace(m, mean_luma=230.0)).reasons == ("overexposed: mean brightness 230 of 255 is over 215",)
    d = json.loads(json.dumps(r.as_dict()))
    assert d["ok"] is False and d["reasons"] == list(r.reasons) and d["measures"]["short_side"] == 90
    # on real pixels: blurred and small together
    both = assess_quality(cv2.resize(cv2.GaussianBlur(photo, (0, 0), 6), (80, 80), interpolation=cv2.INTER_AREA))
    assert [x.split(":")[0] for x in both.reasons] == ["blurred", "too small"]


@pytest.mark.parametrize("values, field", [
    ({"sharpness_min": -1}, "sharpness_min"),
    ({"dark_share_max": 1.5}, "dark_share_max"),
    ({"luma_max": 300}, "luma_max"),
    ({"min_short_side": 0}, "min_short_side"),
    ({"luma_min": 200, "luma_max": 100}, "luma_min"),
    ({"blurr_min": 3}, "blurr_min"),
])
def test_bad_thresholds_are_a_config_error_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        quality_thresholds(**values)


def test_thresholds_are_one_typed_frozen_place() -> None:
    t = quality_thresholds(sharpness_min=5)
    assert isinstance(t, QualityThresholds) and t.sharpness_min == 5 and t.luma_min == QualityThresholds().luma_min
    with pytest.raises(Exception, match="frozen"):
        t.sharpness_min = 1  # type: ignore[misc]


def test_measures_refuse_what_is_not_an_8_bit_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        measure_quality(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        measure_quality(np.zeros((0, 8, 3), np.uint8))
