"""The CI switch: under DFUDET_REQUIRE_FULL=1 (set by .ci/run) a missing data folder fails a test instead of
skipping it, so CI cannot go green while the tests on real photos do not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# A test of real photos as every such test is written: it asks for the shared `fuseg_dir` fixture. It is written
# to a temporary folder (not named by a path in the suite, so moving test files cannot break this check) and run
# with tests/conftest.py loaded as a plugin, which gives it the suite's fixtures.
REAL_DATA_TEST = '''
def test_reads_the_real_photos(fuseg_dir):
    assert (fuseg_dir / "annotations" / "train.json").is_file()
'''


def _run(tmp_path: Path, require: str, data: Path) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_real_data.py"
    test.write_text(REAL_DATA_TEST)
    env = {**os.environ, "DFUDET_SHARED_DATA": str(data), "DFUDET_REQUIRE_FULL": require,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-p", "conftest", "--rootdir", str(tmp_path), str(test)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three pytest processes, ~4 s each here
def test_missing_data_skips_locally_and_fails_under_the_ci_switch(tmp_path: Path) -> None:
    missing = tmp_path / "no-data-here"
    local = _run(tmp_path, "", missing)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:] + local.stderr[-2000:]
    assert f"real FUSeg data not found at {missing / 'fuseg'}" in local.stdout  # the skip says why
    ci = _run(tmp_path, "1", missing)
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout[-2000:]  # a failed fixture is an error
    assert "DFUDET_REQUIRE_FULL=1 and real FUSeg data not found at" in ci.stdout
    # the other half: with the folder there, the same test runs and passes (the switch does not fail everything)
    data = tmp_path / "data"
    (data / "fuseg" / "annotations").mkdir(parents=True)
    (data / "fuseg" / "annotations" / "train.json").write_text("{}")
    ci = _run(tmp_path, "1", data)
    assert ci.returncode == 0 and "1 passed" in ci.stdout, ci.stdout[-2000:] + ci.stderr[-2000:]


def test_ci_sets_the_switch() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert "DFUDET_REQUIRE_FULL=1" in text and "make test" in text


@pytest.mark.parametrize("value", ["", "0", "yes"])
def test_only_the_value_1_turns_the_switch_on(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from _require import require_full

    monkeypatch.setenv("DFUDET_REQUIRE_FULL", value)
    assert require_full() is False
    monkeypatch.setenv("DFUDET_REQUIRE_FULL", "1")
    assert require_full() is True
