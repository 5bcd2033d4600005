"""Pieces shared by the CLI commands."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sctopic.data.io import write_text_atomic
from sctopic.errors import InputError


def _int_at_least(value: str, low: int) -> int:
    import argparse

    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {v}")
    return v


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(value, 1)


def nonneg_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(value, 0)


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
