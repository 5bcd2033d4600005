"""Neighbourhood graphs on an embedding, for the clustering evaluation.

We build the graph ourselves rather than through ``scanpy.pp.neighbors``: scanpy 1.11's
pynndescent path breaks on scipy 1.17, and owning the code keeps the weights documented.

The search is :func:`sctopic.data.neighbors.knn`, the one kNN function of sctopic (also used
for the training graphs), re-exported here. Convention for ``k``: as in scanpy's
``n_neighbors``, ``k`` counts the cell itself, so every cell gets ``k - 1`` other neighbours.
This keeps ``k=15`` comparable with the reference clustering protocol
(``sc.pp.neighbors(n_neighbors=15)`` then Leiden/Louvain).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from sctopic.data.neighbors import EXACT_MAX_CELLS, knn

__all__ = ["EXACT_MAX_CELLS", "knn", "neighbor_graph"]


# Ours rather than umap-learn's fuzzy_simplicial_set (same graph, weights within 3e-6): that
# one costs ~20 s of import and numba compilation per process, ours 0.05 s at 2.6k cells.
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
