"""k-nearest-neighbour search: the one kNN function behind the training graphs and the metrics.

Convention (scanpy's ``n_neighbors``): ``n_neighbors`` counts the cell itself and column 0 of
the result is the cell, so ``knn(X, 15)`` gives every cell its 14 nearest other cells.
:func:`sctopic.data.graphs.build_graph` asks for ``k + 1`` and drops column 0 (its ``k`` is the
scE2TM paper's number of *other* cells); the clustering evaluation passes ``k = 15`` as
``sc.pp.neighbors(n_neighbors=15)`` would.

Search: exact up to :data:`EXACT_MAX_CELLS` cells, pynndescent (approximate) above. The exact
search is scikit-learn's brute force, which computes distances tile by tile with a running
top-k, called on ``chunk_rows`` query rows at a time so its outputs are bounded too: memory is
``O(chunk_rows * k)`` plus small per-thread tiles, never ``n x n``. Euclidean distance.

numpy/scikit-learn/pynndescent only, never torch: :mod:`sctopic.metrics` imports this module.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sctopic.errors import InputError

#: Up to this many cells the search is exact; pynndescent above. One threshold for training
#: graphs and evaluation. pynndescent compiles its numba code afresh in every process: its first
#: search of 50k cells x 50 PCs took 115 s on this 2-core machine (10 s once compiled), the
#: chunked brute force 4 s at 20k cells, 9 s at 35k, 19 s at 50k, 66 s at 80k (growing as n^2;
#: load ~5). Below ~50k a process that builds one or two graphs is done sooner exactly, and the
#: exact result does not depend on the thread count.
EXACT_MAX_CELLS = 50_000
#: Query rows per call of the exact search (outputs ``chunk x n_neighbors``; sklearn tiles inside).
EXACT_CHUNK_ROWS = 8192


def index_dtype(n: int):
    """int32 while every index below ``n`` fits, else int64."""
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def as_points(X) -> np.ndarray:
    """``X`` (dense or sparse, cells x dimensions) as a C-contiguous float32 array, checked."""
    if sp.issparse(X):
        X = X.toarray()
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise InputError(f"the representation must be 2-d (cells x dimensions), got {X.shape}.")
    if not np.isfinite(X).all():
        raise InputError("the representation has NaN or infinite values.")
    return X


def uses_exact_search(n_cells: int, exact: bool | None = None) -> bool:
    """Whether :func:`knn` searches exactly for ``n_cells`` cells (``exact`` overrides)."""
    return bool(n_cells <= EXACT_MAX_CELLS if exact is None else exact)


def knn(
    X,
    n_neighbors: int,
    *,
    exact: bool | None = None,
    seed: int = 0,
    queries: np.ndarray | None = None,
    n_jobs: int | None = None,
    chunk_rows: int = EXACT_CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest rows of ``X`` for every row (or every row in ``queries``), the row itself first.

    Parameters
    ----------
    X
        ``(n, d)`` representation of the cells, dense or sparse.
    n_neighbors
        Neighbours per cell **counting the cell itself** (scanpy's convention); capped at ``n``.
    exact
        ``True``: exact chunked brute force; ``False``: approximate pynndescent; ``None``
        (default): exact up to :data:`EXACT_MAX_CELLS` cells.
    seed
        Seed of pynndescent's random projection trees (the exact search has no randomness).
    queries
        Row indices of ``X`` to return neighbours for (default: all rows), searched against
        all of ``X``. The approximate search still builds the graph of all rows.
    n_jobs
        Threads for the search (default: the library's, i.e. OMP/NUMBA_NUM_THREADS).
    chunk_rows
        Query rows per call of the exact search.

    Returns
    -------
    indices, distances
        ``(q, min(n_neighbors, n))`` arrays sorted by distance with the query cell in column 0
        (distance 0): indices int32 (int64 from 2^31 cells), distances float32.
    """
    X = as_points(X)
    n = X.shape[0]
    k = int(min(n_neighbors, n))
    if k < 1:
        raise InputError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    q = np.arange(n) if queries is None else np.asarray(queries).ravel()
    if uses_exact_search(n, exact):
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=n_jobs).fit(X)
        ind = np.empty((len(q), k), dtype=index_dtype(n))
        dist = np.empty((len(q), k), dtype=np.float32)
        step = max(1, int(chunk_rows))
        for a in range(0, len(q), step):
            d, i = nn.kneighbors(X[q[a : a + step]])
            ind[a : a + step] = i
            dist[a : a + step] = d
    else:
        from pynndescent import NNDescent

        index = NNDescent(
            X, n_neighbors=k, random_state=seed, n_jobs=n_jobs, low_memory=True, compressed=True,
        )
        ind, dist = index.neighbor_graph
        del index
        ind = ind.astype(index_dtype(n), copy=False)
        dist = dist.astype(np.float32, copy=False)
        if queries is not None:
            ind, dist = ind[q], dist[q]
    return _self_first(ind, dist, q)


def _self_first(ind: np.ndarray, dist: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put query ``q[r]`` in column 0 of row ``r``, at distance exactly 0 (brute force's
    ``|x|^2 - 2 x.y + |y|^2`` leaves ~1e-7 there); exact duplicates of a point may displace it
    (then it is missing and the last, farthest neighbour makes room). Order is otherwise kept.
    """
    m, k = ind.shape
    rows = np.arange(m)
    q = q.astype(ind.dtype, copy=False)
    if np.array_equal(ind[:, 0], q):
        dist[:, 0] = 0.0
        return ind, dist
    is_self = ind == q[:, None]
    pos = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k - 1)  # first occurrence
    del is_self
    keep = np.ones(ind.shape, dtype=bool)
    keep[rows, pos] = False
    out_i = np.empty_like(ind)
    out_d = np.empty_like(dist)
    out_i[:, 0], out_d[:, 0] = q, 0.0
    out_i[:, 1:] = ind[keep].reshape(m, k - 1)
    out_d[:, 1:] = dist[keep].reshape(m, k - 1)
    return out_i, out_d
