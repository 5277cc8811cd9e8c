"""Missing test material (the real data, a browser, an optional package): a skip here, a failure in CI.

`.ci/run` sets DFUDET_REQUIRE_FULL=1: there the data, the browser and every dev dependency are present by
construction, so a test that would skip means CI is not testing what it claims, and it fails instead.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

ENV = "DFUDET_REQUIRE_FULL"


def require_full() -> bool:
    """True when missing test material must fail the run (CI)."""
    return os.environ.get(ENV, "").strip() == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with the reason; under DFUDET_REQUIRE_FULL=1 fail with it."""
    if require_full():
        pytest.fail(f"{ENV}=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str, reason: str | None = None) -> ModuleType:
    """pytest.importorskip that fails under DFUDET_REQUIRE_FULL=1."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(reason or f"cannot import {name} ({exc})")
