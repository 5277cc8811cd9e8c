"""Train/val/test assignment: from the source when it has splits, else seeded by image or by patient.

Rules, in order:
1. the annotation file name (COCO/CSV): a word train/training, val/valid/validation, test/testing in its stem
   (`train.json`, `instances_val2017.json`; `trainval.json` names no split);
2. the first folder of the image path relative to --images (or to a --healthy dir) being one of those words;
3. otherwise a seeded shuffle of groups (one group per patient when a patient id is known, else per image),
   cut into test / val / train by the fractions. A patient whose images already have a split from the source
   puts its other images in that split too, so one patient is never in two splits because of the seeded part.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from dfudet.data.records import SPLITS
from dfudet.errors import ConfigError

SPLIT_WORDS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


class Splittable(Protocol):
    name: str
    split: str | None
    patient: str | None


def split_from_filename(path: Path) -> str | None:
    """Split named by a word in an annotation file's stem, or None (also None when it names several)."""
    words = {SPLIT_WORDS[w] for w in re.split(r"[^a-z]+", path.stem.lower()) if w in SPLIT_WORDS}
    return words.pop() if len(words) == 1 else None


def split_from_relpath(rel: str) -> str | None:
    """Split named by the first folder of a relative image path (`train/x.jpg` -> train), or None."""
    parts = rel.replace("\\", "/").split("/")
    return SPLIT_WORDS.get(parts[0].lower()) if len(parts) > 1 else None


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse fractions that leave no training data or are not fractions at all."""
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {v}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be < 1 (got {val_fraction} + {test_fraction})")


def compile_patient_regex(pattern: str | None) -> re.Pattern[str] | None:
    """Compile --patient-regex and insist on exactly one capture group."""
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--patient-regex {pattern!r} is not a valid regular expression ({exc})") from exc
    if rx.groups != 1:
        raise ConfigError(f"--patient-regex {pattern!r} must have exactly one capture group (it has {rx.groups})")
    return rx


def patient_from_name(rx: re.Pattern[str], name: str) -> str | None:
    """Patient id from a file name (re.search on the path relative to --images), or None when it does not match."""
    m = rx.search(name)
    return m.group(1) if m and m.group(1) else None


def assign_splits(items: Sequence[Splittable], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Fill `split` where it is None (seeded, grouped by patient) and return warnings about patients in two splits."""
    check_fractions(val_fraction, test_fraction)
    groups: dict[tuple[str, str], list[Splittable]] = defaultdict(list)
    for it in items:
        key = ("patient", it.patient) if it.patient is not None else ("image", it.name)
        groups[key].append(it)

    warnings: list[str] = []
    free: list[tuple[str, str]] = []
    for key, members in groups.items():
        fixed = Counter(m.split for m in members if m.split is not None)
        if not fixed:
            free.append(key)
            continue
        if key[0] == "patient" and len(fixed) > 1:
            names = ", ".join(s for s in SPLITS if s in fixed)
            warnings.append(f"warning: patient {key[1]!r} has images in splits {names} (as given by the source)")
        # the source's most common split for this patient, ties broken by train < val < test
        chosen = max(fixed, key=lambda s: (fixed[s], -SPLITS.index(s) if s in SPLITS else -99))
        for m in members:
            if m.split is None:
                m.split = chosen

    free.sort()
    random.Random(seed).shuffle(free)
    n = len(free)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    for i, key in enumerate(free):
        split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        for m in groups[key]:
            m.split = split
    return warnings
