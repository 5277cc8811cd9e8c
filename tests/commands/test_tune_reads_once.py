"""`dfudet tune` reads its checkpoint file once (Predictor.from_loaded), and writes a tuned v3 checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfudet import checkpoint
from dfudet.commands.tune import run_tune


@pytest.mark.slow  # a whole tune of val (~20 s of CPU here); `make test` runs it
def test_tune_reads_the_checkpoint_file_once(tiny_ckpt: Path, tiny_cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real = checkpoint.safe_torch_load

    def counted(path: Path, *args: object, **kwargs: object) -> dict[str, object]:
        reads.append(Path(path))
        return real(path, *args, **kwargs)  # the real load: only the count is added

    monkeypatch.setattr(checkpoint, "safe_torch_load", counted)
    out = tmp_path / "tuned_model.pth"
    table = run_tune(tiny_ckpt, tiny_cache, out=out, sizes=[96], device="cpu", progress=False)  # one size: cheap
    assert reads == [tiny_ckpt]
    assert [t["img_size"] for t in table["trials"]] == [96]
    tuned = checkpoint.load_for_inference(out)
    assert tuned.format == "dfudet-best-v3" and tuned.identity == checkpoint.load_for_inference(tiny_ckpt).identity
