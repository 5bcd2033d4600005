"""Cell-type separation and batch mixing: silhouette (ASW), batch ASW, kBET.

Euclidean distances on the embedding throughout.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import chi2
from sklearn.metrics import silhouette_samples, silhouette_score

from sctopic.metrics._labels import check_length, encode
from sctopic.data.neighbors import as_points, knn


def _subsample(n: int, max_cells: int | None, seed: int) -> np.ndarray:
    if max_cells is None or n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))


def silhouette(embedding, labels, *, max_cells: int | None = 20000, seed: int = 0) -> dict:
    """Average silhouette width of the cell types.

    Parameters
    ----------
    embedding
        Cells x dimensions.
    labels
        Cell type per cell.
    max_cells
        Silhouettes cost O(n^2): above this many cells a uniform random subset (seeded) is
        scored.  ``None`` scores all cells.

    Returns
    -------
    dict
        ``asw_raw``: mean silhouette in [-1, 1] (scikit-learn);
        ``asw``: (asw_raw + 1) / 2, in [0, 1] as in scib (higher = types better separated);
        ``n_cells_scored``.  Both ``None`` when there are fewer than two types.
    """
    x = as_points(embedding)
    check_length(x.shape[0], (labels, "labels"))
    y, cats = encode(labels)
    idx = _subsample(len(y), max_cells, seed)
    if len(cats) < 2 or len(np.unique(y[idx])) < 2 or len(idx) <= len(np.unique(y[idx])):
        return {"asw": None, "asw_raw": None, "n_cells_scored": int(len(idx))}
    raw = float(silhouette_score(x[idx], y[idx], metric="euclidean"))
    return {"asw": (raw + 1.0) / 2.0, "asw_raw": raw, "n_cells_scored": int(len(idx))}


def batch_asw(embedding, labels, batches, *, max_cells_per_type: int | None = 20000, seed: int = 0) -> dict:
    """Batch-mixing silhouette, scib's definition.

    Within each cell type, silhouettes s_i are computed with the *batch* as the cluster
    label; the type's score is mean(1 - |s_i|); the result is the mean over cell types.
    1 = batches perfectly mixed inside every type, 0 = fully separated.  Types that occur in
    only one batch (or where every cell is its own batch) are skipped, as in scib.

    Returns
    -------
    dict
        ``batch_asw`` (``None`` when no type could be scored) and ``per_type``
        (type -> score).
    """
    x = as_points(embedding)
    check_length(x.shape[0], (labels, "labels"), (batches, "batches"))
    y, types = encode(labels, "labels")
    b, _ = encode(batches, "batches")
    per_type: dict[str, float] = {}
    rng_seed = seed
    for t, name in enumerate(types):
        cells = np.flatnonzero(y == t)
        cells = cells[_subsample(len(cells), max_cells_per_type, rng_seed + t)]
        bt = b[cells]
        nb = len(np.unique(bt))
        if nb < 2 or nb >= len(cells):
            continue
        s = silhouette_samples(x[cells], bt, metric="euclidean")
        per_type[str(name)] = float(np.mean(1.0 - np.abs(s)))
    score = float(np.mean(list(per_type.values()))) if per_type else None
    return {"batch_asw": score, "per_type": per_type}


def kbet(
    embedding,
    batches,
    *,
    k: int = 50,
    alpha: float = 0.05,
    exact: bool | None = None,
    seed: int = 0,
) -> dict:
    """k-nearest-neighbour batch-effect test (kBET, Buttner et al. 2019), vectorised.

    For every cell, the batch composition of its ``k`` nearest other cells is compared with
    the global batch frequencies by Pearson's chi-square test (B - 1 degrees of freedom,
    B = number of batches).  A cell's neighbourhood is *rejected* when p < ``alpha``.
    Unlike the R package, every cell is tested (not a random 10 %), and no
    neighbourhood-size heuristic is applied: ``k`` is used as given.

    Returns
    -------
    dict
        ``kbet``: acceptance rate = fraction of cells NOT rejected (higher = better mixing;
        about 1 - alpha for perfectly mixed batches, about 0 for separated ones);
        ``rejection_rate`` = 1 - kbet; ``k``; ``n_batches``.  ``kbet`` is ``None`` with
        fewer than two batches.
    """
    x = as_points(embedding)
    n = x.shape[0]
    check_length(n, (batches, "batches"))
    b, cats = encode(batches, "batches")
    nb = len(cats)
    if nb < 2:
        return {"kbet": None, "rejection_rate": None, "k": int(k), "n_batches": int(nb)}
    kk = int(min(k, n - 1))
    idx, _ = knn(x, kk + 1, exact=exact, seed=seed)
    nbr_batch = b[idx[:, 1:]]  # n x kk
    flat = (np.arange(n)[:, None] * nb + nbr_batch).ravel()
    counts = np.bincount(flat, minlength=n * nb).reshape(n, nb).astype(np.float64)
    freq = np.bincount(b, minlength=nb) / n
    expected = kk * freq
    stat = ((counts - expected) ** 2 / expected).sum(axis=1)
    p = chi2.sf(stat, df=nb - 1)
    rejection = float(np.mean(p < alpha))
    return {"kbet": 1.0 - rejection, "rejection_rate": rejection, "k": kk, "n_batches": int(nb)}
