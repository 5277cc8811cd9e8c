"""The README cannot go stale: every `dfudet` command in it parses with the real command line, and the first
screen's commands (predict with the shipped model, the Python example) run as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from _require import skip_or_fail
from dfudet.cli import build_parser
from dfudet.inference import zoo

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def dfudet_commands() -> list[list[str]]:
    """Every `dfudet ...` / `.venv/bin/dfudet ...` command of the README's bash blocks, continuation lines joined,
    comments dropped."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name == "dfudet":
                commands.append(words[1:])
    return commands


def test_every_readme_command_parses() -> None:
    commands = dfudet_commands()
    assert len(commands) >= 20  # the page has many; a broken extraction must not pass on an empty list
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"README command does not parse: dfudet {' '.join(words)}")


def _first_screen() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Find ulcers in your photos"):text.index("## Train on your own photos")]


@pytest.mark.slow
def test_first_screen_runs_as_written(tmp_path: Path) -> None:
    screen = _first_screen()
    command = shlex.split(re.search(r"```bash\n(.*?)\n```", screen, flags=re.S).group(1))
    photo = REPO / command[2]
    if not photo.is_file():
        skip_or_fail(f"the README's example photo {photo} is not here (../shared/data)")
    if not zoo.available():
        skip_or_fail("no shipped model is installed")
    assert command[:2] == [".venv/bin/dfudet", "predict"] and command[-2] == "--out"
    out = tmp_path / "preds"
    run = subprocess.run([sys.executable, "-m", "dfudet.cli", *command[1:-1], str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "using the shipped model" in run.stderr
    image = json.loads((out / "predictions.json").read_text())["images"][0]
    assert image["boxes"] and image["outlines"] and all(d["area_px"] > 0 for d in image["detections"])
    assert image["label"] in ("ulcer", "review", "no ulcer") and (out / image["annotated"]).is_file()
    python = re.search(r"```python\n(.*?)```", screen, flags=re.S).group(1)
    run = subprocess.run([sys.executable, "-c", python], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[0] in ("ulcer", "review", "no")
