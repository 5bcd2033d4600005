"""Pieces shared by the CLI commands."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sctopic.data.io import write_text_atomic
from sctopic.errors import InputError


def positive_int(value: str) -> int:
    import argparse

    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def nonneg_int(value: str) -> int:
    import argparse

    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


def _clean(obj: Any) -> Any:
    """Make numpy scalars and NaN JSON-safe (NaN -> null)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(data: dict, path: str | Path) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    return write_text_atomic(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n", path)


def prepare_out_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    return out
