"""Seeding torch's global generators for a block without changing the caller's random state."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device | None = None):
    """Seed torch's global generators inside the block and restore them afterwards.

    Weight initialisation, dropout and the reparameterisation noise draw from torch's global
    generator; forking it keeps a fitted model reproducible without changing the caller's
    random state.

    ``torch.manual_seed`` seeds the CPU and every CUDA generator; the CPU state is always
    restored after the block, a CUDA one only for ``device`` when it is a CUDA device (the one
    the block computes on), so a CPU-only block never initialises CUDA.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
