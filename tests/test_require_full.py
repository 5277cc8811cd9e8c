"""The CI switch: under DFUDET_REQUIRE_FULL=1 (set by .ci/run) a missing data folder fails a test instead of
skipping it, so CI cannot go green while the tests on real photos do not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/inference/test_evaluate.py::test_real_fuseg_images"  # needs ../shared/data/fuseg (fuseg_dir)


def _run(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DFUDET_SHARED_DATA": str(tmp_path / "no-data-here"), "DFUDET_REQUIRE_FULL": require}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", TEST],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_missing_data_skips_locally_and_fails_under_the_ci_switch(tmp_path: Path) -> None:
    local = _run(tmp_path, "")
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
    ci = _run(tmp_path, "1")
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout[-2000:]  # a failed fixture is an error
    assert "DFUDET_REQUIRE_FULL=1 and real FUSeg data not found at" in ci.stdout


def test_ci_sets_the_switch() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert "DFUDET_REQUIRE_FULL=1" in text and "make test" in text
