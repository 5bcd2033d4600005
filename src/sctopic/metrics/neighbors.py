"""k-nearest-neighbour search and neighbourhood graphs on an embedding.

We build the graph ourselves rather than through ``scanpy.pp.neighbors``: scanpy 1.11's
pynndescent path breaks on scipy 1.17, and owning the code keeps the weights documented.

Convention for ``k``: as in scanpy's ``n_neighbors``, ``k`` counts the cell itself, so every
cell gets ``k - 1`` other neighbours.  This keeps ``k=15`` comparable with the reference
clustering protocol (``sc.pp.neighbors(n_neighbors=15)`` then Leiden/Louvain).
"""
from __future__ import annotations

import os
from typing import Literal

import numpy as np
import scipy.sparse as sp

#: up to this many cells the exact (brute-force) search is used; above, pynndescent.
#: pynndescent's numba code is compiled afresh in every process (40-60 s on a 2-core
#: machine, no cache), while scikit-learn's blocked brute force takes ~1 s for 12k cells
#: and ~15 s for 50k cells (50 dims), so brute force wins for one-off evaluations below this.
EXACT_MAX_CELLS = 50_000


def _as_dense(x) -> np.ndarray:
    if sp.issparse(x):
        x = x.toarray()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embedding must be 2-D (cells x dims), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embedding contains NaN or infinite values")
    return x


def knn(
    embedding,
    n_neighbors: int,
    *,
    exact: bool | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbours of every cell, the cell itself first.

    Parameters
    ----------
    embedding
        Cells x dimensions (dense or sparse).
    n_neighbors
        Number of neighbours to return per cell, **including the cell itself**.
    exact
        ``True``: scikit-learn brute-force search; ``False``: approximate pynndescent;
        ``None`` (default): exact up to :data:`EXACT_MAX_CELLS` cells (50,000).
    seed
        Seed of pynndescent's random projection trees (makes the result reproducible).

    Returns
    -------
    indices, distances
        Two ``n_cells x n_neighbors`` arrays (int64, float32), sorted by distance, with the
        query cell in column 0.  Euclidean distance.
    """
    x = _as_dense(embedding)
    n = x.shape[0]
    k = int(min(n_neighbors, n))
    if k < 1:
        raise ValueError("n_neighbors must be at least 1")
    if exact is None:
        exact = n <= EXACT_MAX_CELLS
    if exact:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean")
        dist, idx = nn.fit(x).kneighbors(x)
    else:
        from pynndescent import NNDescent

        # numba refuses more threads than cores, so never ask for more than we have.
        n_jobs = max(1, min(os.cpu_count() or 1, 8))
        index = NNDescent(
            x, n_neighbors=k, metric="euclidean", random_state=seed, n_jobs=n_jobs,
            low_memory=True, verbose=False,
        )
        idx, dist = index.neighbor_graph
    idx = np.asarray(idx, dtype=np.int64)
    dist = np.asarray(dist, dtype=np.float32)
    return _self_first(idx, dist)


def _self_first(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make column 0 the query cell itself (duplicates of a point may have displaced it)."""
    n, k = idx.shape
    rows = np.arange(n)
    if np.array_equal(idx[:, 0], rows):
        return idx, dist
    is_self = idx == rows[:, None]
    has_self = is_self.any(axis=1)
    # cells whose own index is missing: drop the last (farthest) neighbour to make room
    pos = np.where(has_self, is_self.argmax(axis=1), k - 1)
    keep = np.ones_like(idx, dtype=bool)
    keep[rows, pos] = False
    others_i = idx[keep].reshape(n, k - 1)
    others_d = dist[keep].reshape(n, k - 1)
    idx = np.column_stack([rows, others_i])
    dist = np.column_stack([np.zeros(n, dtype=dist.dtype), others_d])
    return idx, dist


def _fuzzy_weights(dist: np.ndarray, n_iter: int = 64) -> np.ndarray:
    """UMAP-style membership strengths of each cell's neighbours (self column excluded).

    For cell i with neighbour distances d_ij, rho_i is the distance to its nearest other
    cell and sigma_i solves sum_j exp(-max(d_ij - rho_i, 0) / sigma_i) = log2(k) (k counts
    the cell itself), found by a vectorised bisection.  Weights are
    exp(-max(d_ij - rho_i, 0) / sigma_i), in (0, 1].
    """
    d = dist.astype(np.float64)
    n, m = d.shape
    if m == 0:
        return d
    target = np.log2(m + 1)
    # rho = first strictly positive distance (duplicate cells have distance 0)
    pos = np.where(d > 0, d, np.inf).min(axis=1)
    rho = np.where(np.isfinite(pos), pos, 0.0)
    shifted = np.maximum(d - rho[:, None], 0.0)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    sigma = np.ones(n)
    for _ in range(n_iter):
        s = np.exp(-shifted / sigma[:, None]).sum(axis=1)
        too_big = s > target
        hi = np.where(too_big, sigma, hi)
        lo = np.where(too_big, lo, sigma)
        sigma = np.where(np.isfinite(hi), (lo + hi) / 2, sigma * 2)
    # floor like UMAP so that tight neighbourhoods do not get all-zero weights
    mean_d = d.mean()
    floor = 1e-3 * np.where(rho > 0, d.mean(axis=1), mean_d)
    sigma = np.maximum(sigma, np.maximum(floor, 1e-12))
    return np.exp(-shifted / sigma[:, None])


def neighbor_graph(
    embedding,
    n_neighbors: int = 15,
    *,
    weights: Literal["umap", "connectivity"] = "umap",
    exact: bool | None = None,
    seed: int = 0,
) -> sp.csr_matrix:
    """Symmetric weighted kNN graph of the cells, ready for Leiden/Louvain.

    Parameters
    ----------
    embedding
        Cells x dimensions.
    n_neighbors
        Neighbourhood size counting the cell itself (scanpy's convention): each cell is
        linked to its ``n_neighbors - 1`` nearest other cells.
    weights
        ``"umap"`` (default, what scanpy's neighbours compute): fuzzy membership strengths
        w_ij (see :func:`_fuzzy_weights`) symmetrised by the fuzzy union
        w + w^T - w * w^T.  ``"connectivity"``: plain 0/1 kNN adjacency symmetrised by
        max(A, A^T).
    exact, seed
        Passed to :func:`knn`.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``n_cells x n_cells``, symmetric, zero diagonal, float64.
    """
    idx, dist = knn(embedding, n_neighbors, exact=exact, seed=seed)
    n = idx.shape[0]
    nbr_idx, nbr_dist = idx[:, 1:], dist[:, 1:]
    if weights == "umap":
        w = _fuzzy_weights(nbr_dist)
    elif weights == "connectivity":
        w = np.ones_like(nbr_dist, dtype=np.float64)
    else:
        raise ValueError(f"weights must be 'umap' or 'connectivity', got {weights!r}")
    rows = np.repeat(np.arange(n), nbr_idx.shape[1])
    a = sp.csr_matrix((w.ravel(), (rows, nbr_idx.ravel())), shape=(n, n))
    a.sum_duplicates()
    at = a.T.tocsr()
    if weights == "umap":
        g = a + at - a.multiply(at)
    else:
        g = a.maximum(at)
    g = sp.csr_matrix(g)
    g.setdiag(0)
    g.eliminate_zeros()
    return g
