"""Val AP50 against wall-clock training minutes for several runs (docs/results.md figure).

Reads each run's metrics.csv (columns elapsed_seconds and ap50, written every epoch by `dfudet train`) and plots one
line per run; `--point LABEL:MINUTES:AP50` adds a single measured result of a run that predates per-epoch AP50.

    python scripts/plot_time_to_quality.py --run "FCOS + Lite0, pretrained=runs/fuseg_cpu_pretrained/train" \
        --run "Faster R-CNN + Lite0, pretrained=runs/fuseg_cpu_frcnn_effnet/train" \
        --point "FCOS + ResNet-10-T, from scratch (final only)":60.5:0.749 --out docs/img/fuseg_val_ap50_vs_minutes.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(minutes, val AP50) per epoch of a run dir's metrics.csv."""
    with open(run_dir / "metrics.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "ap50" not in rows[0] or "elapsed_seconds" not in rows[0]:
        raise SystemExit(f"{run_dir / 'metrics.csv'} has no ap50/elapsed_seconds columns (run predates them)")
    return [float(r["elapsed_seconds"]) / 60 for r in rows], [float(r["ap50"]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=RUN_DIR", help="a run to plot (repeatable)")
    ap.add_argument("--point", action="append", default=[], metavar="LABEL:MINUTES:AP50",
                    help="a single measured result (repeatable)")
    ap.add_argument("--bar", type=float, default=None, help="draw a horizontal reference line at this AP50")
    ap.add_argument("--bar-label", default="reference")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for spec in a.run:
        label, _, run_dir = spec.partition("=")
        minutes, ap50 = read_curve(Path(run_dir))
        ax.plot(minutes, ap50, marker="o", markersize=4, label=label)
    for spec in a.point:
        label, minutes, ap50 = spec.rsplit(":", 2)
        ax.scatter([float(minutes)], [float(ap50)], marker="*", s=140, zorder=5, label=label)
    if a.bar is not None:
        ax.axhline(a.bar, color="grey", linestyle="--", linewidth=1, label=a.bar_label)
    ax.set_xlabel("training wall-clock minutes (2 CPU cores)")
    ax.set_ylabel("val AP50 (COCO)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
