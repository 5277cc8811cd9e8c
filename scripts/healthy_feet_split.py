"""The fixed split of ../shared/data/healthy_feet (99 photos): 60 train / 15 val / 24 test, seeded once.

`python scripts/healthy_feet_split.py make --images DIR` writes configs/splits/healthy_feet.csv (name, sha256,
split) from a seeded shuffle of the sorted file names (seed 0). It was run once; the CSV is the record, and the test
part is never trained or tuned on. `... layout --images DIR --out DIR` lays the photos out as OUT/train, OUT/val,
OUT/test (symlinks), the folder layout `dfudet data import --healthy` reads splits from, after checking every
photo's digest against the CSV.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import sys
from pathlib import Path

SPLIT_CSV = Path(__file__).resolve().parents[1] / "configs" / "splits" / "healthy_feet.csv"
COUNTS = {"train": 60, "val": 15, "test": 24}
SEED = 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(images: Path, out: Path) -> None:
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(names) != sum(COUNTS.values()):
        sys.exit(f"{images}: {len(names)} photos, expected {sum(COUNTS.values())}")
    random.Random(SEED).shuffle(names)
    rows, i = [], 0
    for split, n in COUNTS.items():
        rows += [(name, _sha256(images / name), split) for name in sorted(names[i:i + n])]
        i += n
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "sha256", "split"])
        w.writerows(rows)
    print(f"wrote {out}: " + ", ".join(f"{s} {n}" for s, n in COUNTS.items()))


def layout(images: Path, out: Path, split_csv: Path) -> None:
    with split_csv.open() as f:
        rows = list(csv.DictReader(f))
    bad = [r["name"] for r in rows if not (images / r["name"]).is_file() or _sha256(images / r["name"]) != r["sha256"]]
    if bad:
        sys.exit(f"{images}: {len(bad)} photo(s) missing or changed against {split_csv}: {bad[:5]}")
    for r in rows:
        dst = out / r["split"] / r["name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.symlink_to((images / r["name"]).resolve())
    print(f"laid out {len(rows)} healthy photos under {out}/{{train,val,test}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["make", "layout"])
    ap.add_argument("--images", type=Path, required=True, help="healthy_feet/images")
    ap.add_argument("--out", type=Path, help="make: the CSV (default configs/splits/healthy_feet.csv); layout: a dir")
    ap.add_argument("--split", type=Path, default=SPLIT_CSV, help="layout: the split CSV")
    a = ap.parse_args()
    if a.command == "make":
        make(a.images, a.out or SPLIT_CSV)
    else:
        if a.out is None:
            ap.error("layout needs --out")
        layout(a.images, a.out, a.split)


if __name__ == "__main__":
    main()
