"""Silhouette, batch ASW and kBET at their extremes."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from sctopic.metrics import batch_asw, kbet, silhouette


def mixed_and_separated(n=600, dim=10, seed=0):
    """Two cell types; batches either random (mixed) or shifted far apart (separated)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 2, n)
    batches = rng.integers(0, 3, n)
    base = types[:, None] * 20.0 + rng.normal(0, 1, (n, dim))
    shifted = base.copy()
    shifted[:, 1] += batches * 30.0
    return base, shifted, types, batches


def test_silhouette_matches_sklearn_and_scales():
    x, _, types, _ = mixed_and_separated()
    s = silhouette(x, types)
    raw = silhouette_score(x, types)
    assert s["asw_raw"] == pytest.approx(raw)
    assert s["asw"] == pytest.approx((raw + 1) / 2)
    assert s["asw"] > 0.9
    # subsampling is seeded and close to the full value
    sub = silhouette(x, types, max_cells=300, seed=1)
    assert sub["n_cells_scored"] == 300
    assert sub["asw_raw"] == pytest.approx(raw, abs=0.05)
    assert silhouette(x, np.zeros(len(x)))["asw"] is None


def test_kbet_extremes():
    mixed, separated, _, batches = mixed_and_separated()
    good = kbet(mixed, batches, k=30)
    assert good["kbet"] > 0.85  # about 1 - alpha expected under perfect mixing
    assert good["rejection_rate"] == pytest.approx(1 - good["kbet"])
    bad = kbet(separated, batches, k=30)
    assert bad["kbet"] < 0.02
    assert kbet(mixed, np.zeros(len(mixed)))["kbet"] is None


def test_kbet_uneven_batches():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (800, 5))
    b = np.where(rng.random(800) < 0.8, "big", "small")  # 80/20 composition, mixed
    assert kbet(x, b, k=40)["kbet"] > 0.85


def test_batch_asw_extremes():
    mixed, separated, types, batches = mixed_and_separated()
    good = batch_asw(mixed, types, batches)["batch_asw"]
    bad = batch_asw(separated, types, batches)
    assert good > 0.9
    assert bad["batch_asw"] < 0.3
    assert set(bad["per_type"]) == {"0", "1"}
    # a type seen in a single batch is skipped (scib); nothing left -> None
    assert batch_asw(mixed, types, np.zeros(len(types)))["batch_asw"] is None
