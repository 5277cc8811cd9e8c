"""Random-number-generator states (Python, NumPy, torch CPU and CUDA) as plain data, for exact resume.

Lightning's last.ckpt holds weights, optimizer, loops and callbacks but not the global generators; the model draws
from them in training (torchvision's RPN and RoI samplers call torch.randperm), so a resumed epoch would differ from
the uninterrupted one. The states are stored as tensors, ints and tuples only, so last.ckpt still loads with
`torch.load(weights_only=True)`. The sampler and the augmentation do not need them: both are seeded from
(seed, epoch[, index]) (data/sampler.py, data/dataset.py).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The current state of every global generator a training step may draw from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Put every generator back to a state from `capture()` (CUDA only when the same devices are present)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
