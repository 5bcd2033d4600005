"""Small helpers for label vectors shared by the metric modules."""
from __future__ import annotations

import numpy as np
import pandas as pd


def encode(labels, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and category values of a label vector; missing labels are rejected.

    Returns
    -------
    codes, categories
        ``codes[i]`` indexes ``categories``.
    """
    s = pd.Series(np.asarray(labels, dtype=object) if not isinstance(labels, pd.Series) else labels)
    if s.isna().any():
        raise ValueError(f"{name} contain {int(s.isna().sum())} missing values; drop those cells first")
    codes, cats = pd.factorize(s, sort=True)
    return codes.astype(np.int64), np.asarray(cats, dtype=object)


def check_length(n: int, *arrays_and_names) -> None:
    """Raise when an array's first dimension differs from ``n``."""
    for arr, nm in arrays_and_names:
        if len(arr) != n:
            raise ValueError(f"{nm} has {len(arr)} entries but the embedding has {n} cells")
