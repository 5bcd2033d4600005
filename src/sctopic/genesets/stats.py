"""Multiple-testing correction."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def bh_fdr(p: ArrayLike, axis: int = -1) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), independently along ``axis``.

    ``q_(i) = min_{j >= i} min(1, m * p_(j) / j)`` for the ascending p-values
    ``p_(1) <= ... <= p_(m)``. NaN entries are ignored (they do not count in ``m``) and
    stay NaN.

    Parameters
    ----------
    p
        p-values, any shape.
    axis
        Axis holding one family of tests (e.g. the gene sets of one topic).

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape as ``p``.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0 or p.size == 0:
        return p.copy()
    moved = np.moveaxis(p, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    n = flat.shape[1]
    order = np.argsort(flat, axis=1, kind="stable")  # NaN sort last
    ps = np.take_along_axis(flat, order, axis=1)
    m = np.sum(~np.isnan(flat), axis=1, keepdims=True)
    q = ps * m / np.arange(1, n + 1)
    # Running minimum from the largest p down; fmin skips the trailing NaNs.
    q = np.fmin.accumulate(q[:, ::-1], axis=1)[:, ::-1]
    q = np.minimum(q, 1.0)
    q[np.isnan(ps)] = np.nan
    out = np.empty_like(flat)
    np.put_along_axis(out, order, q, axis=1)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)
