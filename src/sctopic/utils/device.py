"""Choosing the torch device (used by training and by the foundation-model adapters)."""
from __future__ import annotations

import torch

from sctopic.errors import InputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; other values are checked and returned."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu'.")
    return dev
