"""Neighbour graphs on a cell representation: kNN, mutual kNN made connected, padded lists.

The cross-view losses of scE2TM pull a cell towards a *mutual* nearest neighbour in the other
view. A mutual kNN graph alone is badly fragmented (the reference code's graph on a 512-d view
of pbmc3k has 2,233 components for 2,638 cells, so most sampled "neighbours" are the cell
itself). We therefore add the edges of a minimum spanning forest of the kNN graph, which gives
every cell at least one neighbour and joins the mutual graph into the components of the kNN
graph, and we report component counts before and after.

Scale (10^4 to 10^6+ cells). Nothing here allocates anything ``n x n`` or ``n x k x k``:

* kNN search: :func:`sctopic.data.neighbors.knn` (exact chunked brute force up to
  :data:`~sctopic.data.neighbors.EXACT_MAX_CELLS` cells, pynndescent above: recall about 0.97 at
  k = 15 on 50 PCs of real PBMCs, measured in ``benchmarks/results/graph_scale.md``).
  ``k`` here is the paper's: ``k`` *other* cells, so the search asks for ``k + 1`` (which counts
  the cell itself) and drops column 0. SCE2TM's ``n_neighbors=15`` is this ``k``, i.e. 15 other
  cells, whereas the clustering evaluation's ``k = 15`` counts the cell (scanpy's convention).
* Mutual kNN: for each chunk of cells, whether each neighbour lists the cell back
  (``ind[ind[chunk]] == cell``), giving the mutual edges straight from the kNN lists.
* Spanning forest: scipy's Kruskal on the ``k n``-edge directed kNN graph (each stored edge is
  taken as undirected; the two directions of a pair carry the same length).
* The edge lists are int32 (cells < 2^31), the union of the edges is de-duplicated by one sort.
* Padded neighbour lists: at most ``max_neighbours`` per cell (default 64): a cell with more
  graph neighbours (spanning-tree hubs) keeps its ``max_neighbours`` nearest in the padded
  lists used for sampling; ``adjacency`` keeps every edge. Mutual neighbours number at most
  ``k``, so with ``k <= max_neighbours`` the cap only ever drops spanning-forest edges, and
  only from the hub's side (the other end still lists the hub).

Everything here is numpy/scipy (plus scikit-learn and pynndescent for the search); no torch.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from sctopic.data import neighbors as _neighbors  # not `import knn`: graphs.knn was k *other* cells
from sctopic.data.neighbors import index_dtype, uses_exact_search
from sctopic.errors import InputError

log = logging.getLogger(__name__)

#: Default cap on the padded neighbour list of one cell (see the module docstring).
MAX_NEIGHBOURS = 64
#: Cells per chunk of the mutual-neighbour check (a ``chunk x k x k`` temporary).
_MUTUAL_CHUNK = 1 << 16


def knn_matrix(ind: np.ndarray, values: np.ndarray | None = None) -> sp.csr_matrix:
    """Directed kNN adjacency as CSR: entry (i, ind[i, j]) = values[i, j] (or 1).

    Built directly in CSR form (row ``i`` holds ``ind[i]``; column order as in ``ind``,
    duplicates summed) with int32 indices when the cell count allows.
    """
    n, k = ind.shape
    idt = index_dtype(max(n, n * k))
    data = np.ones(n * k, dtype=np.float32) if values is None else values.ravel().astype(np.float32)
    indptr = np.arange(0, n * k + 1, k, dtype=idt)
    A = sp.csr_matrix((data, ind.ravel().astype(idt, copy=False), indptr), shape=(n, n))
    A.sum_duplicates()
    return A


def _mutual_mask(ind: np.ndarray) -> np.ndarray:
    """``mask[i, a]``: cell ``ind[i, a]`` lists ``i`` among its neighbours (and is not ``i``)."""
    n, k = ind.shape
    mask = np.empty((n, k), dtype=bool)
    for a in range(0, n, _MUTUAL_CHUNK):
        b = min(n, a + _MUTUAL_CHUNK)
        rows = np.arange(a, b, dtype=ind.dtype)[:, None]
        nb = ind[a:b]
        m = (ind[nb] == rows[:, :, None]).any(axis=2)
        m &= nb != rows
        mask[a:b] = m
        del m
    return mask


def _dedupe_rows(ind: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` with repeated entries of a row of ``ind`` switched off (first one kept)."""
    n, k = ind.shape
    srt = np.sort(ind, axis=1)
    if not (srt[:, 1:] == srt[:, :-1]).any():
        return mask
    mask = mask.copy()
    for i in np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1)):
        _, first = np.unique(ind[i], return_index=True)
        dup = np.ones(k, dtype=bool)
        dup[first] = False
        mask[i, dup] = False
    return mask


def mutual_knn(ind: np.ndarray) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency of mutual nearest neighbours (j in kNN(i) and i in kNN(j))."""
    n, k = ind.shape
    ind = np.asarray(ind).astype(index_dtype(n), copy=False)
    mask = _dedupe_rows(ind, _mutual_mask(ind))
    deg = mask.sum(axis=1)
    idt = index_dtype(max(n, int(deg.sum())))
    indptr = np.zeros(n + 1, dtype=idt)
    np.cumsum(deg, out=indptr[1:])
    M = sp.csr_matrix((np.ones(int(indptr[-1]), np.float32), ind[mask].astype(idt, copy=False),
                       indptr), shape=(n, n))
    M.sort_indices()
    return M


def _forest_edges(ind: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges (row, col, length) of a minimum spanning forest of the kNN graph, one per pair."""
    n, k = ind.shape
    # scipy treats explicit zeros as missing edges: duplicates get a tiny positive length.
    # Kruskal on the directed kNN graph: each stored edge counts as undirected.
    W = knn_matrix(ind, np.maximum(dist, 1e-12))
    W = sp.csr_matrix((W.data.astype(np.float64), W.indices, W.indptr), shape=W.shape)
    T = minimum_spanning_tree(W, overwrite=True).tocoo()
    del W
    idt = index_dtype(n)
    return T.row.astype(idt), T.col.astype(idt), T.data.astype(np.float32)


def spanning_forest(ind: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency of a minimum spanning forest of the kNN graph."""
    n = ind.shape[0]
    r, c, _ = _forest_edges(ind, dist)
    rows, cols = np.concatenate([r, c]), np.concatenate([c, r])
    T = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
    T.sum_duplicates()
    T.data[:] = 1.0
    return T


@dataclass
class NeighbourGraph:
    """A connected mutual-kNN graph with padded neighbour lists for fast sampling.

    Attributes
    ----------
    adjacency
        Symmetric 0/1 CSR adjacency (mutual kNN plus spanning-forest edges), no self loops.
    neighbours
        ``(n, width)`` int64 array of neighbour indices, padded with -1; ``width`` is the
        largest degree capped at ``max_neighbours`` (the nearest are kept for capped cells).
    degree
        ``(n,)`` number of valid entries per row of ``neighbours`` (>= 1 for every cell).
    stats
        Component counts, degrees, edge counts and the seconds of each step, for reports.
    """

    adjacency: sp.csr_matrix
    neighbours: np.ndarray
    degree: np.ndarray
    stats: dict = field(default_factory=dict)


def padded_neighbours(
    adj: sp.csr_matrix, max_neighbours: int | None = None, lengths: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of a CSR adjacency as a -1-padded int64 array and the per-row counts.

    With ``max_neighbours``, rows with more entries keep the ``max_neighbours`` of smallest
    ``lengths`` (aligned with ``adj.data``; default ``adj.data``), ties by column order.
    """
    adj = sp.csr_matrix(adj)
    n = adj.shape[0]
    deg = np.diff(adj.indptr).astype(np.int64)
    cap = int(deg.max(initial=0)) if max_neighbours is None else int(max_neighbours)
    if cap < 1:
        raise InputError(f"max_neighbours must be >= 1, got {max_neighbours}.")
    starts = adj.indptr[:-1].astype(np.int64)
    # Position of every stored entry inside its row.
    rows = np.repeat(np.arange(n, dtype=index_dtype(n)), deg)
    pos = np.arange(adj.nnz, dtype=np.int64) - np.repeat(starts, deg)
    over = np.flatnonzero(deg > cap)
    if len(over):
        lengths = adj.data if lengths is None else np.asarray(lengths)
        d_over = deg[over]
        offs = np.repeat(np.cumsum(d_over) - d_over, d_over)  # start of each row within sel
        sel = np.repeat(starts[over], d_over) + (np.arange(int(d_over.sum())) - offs)
        order = np.lexsort((pos[sel], lengths[sel], rows[sel]))  # by row, then length
        pos[sel[order]] = np.arange(len(sel)) - offs
    width = int(max(min(deg.max(initial=0), cap), 1))
    out = np.full((n, width), -1, dtype=np.int64)
    keep = pos < width
    out[rows[keep], pos[keep]] = adj.indices[keep]
    return out, np.minimum(deg, width)


def build_graph(
    X: np.ndarray,
    k: int = 15,
    seed: int = 0,
    connect: bool = True,
    exact: bool | None = None,
    max_neighbours: int = MAX_NEIGHBOURS,
    n_jobs: int | None = None,
) -> NeighbourGraph:
    """Mutual kNN graph of ``X``, made connected with a minimum spanning forest of the kNN graph.

    Parameters
    ----------
    X
        ``(n, d)`` representation of the cells (e.g. 50 PCs of log-normalised expression, or an
        external embedding).
    k
        Nearest *other* cells per cell for the kNN search (15 as in the paper); the search
        asks :func:`~sctopic.data.neighbors.knn` for ``k + 1``, which counts the cell itself.
    seed
        Seed of the approximate search for large ``n``.
    connect
        Add the spanning-forest edges (recommended). Without it, cells with no mutual
        neighbour get their nearest neighbour as the only neighbour.
    exact
        Exact or approximate search; default exact up to
        :data:`~sctopic.data.neighbors.EXACT_MAX_CELLS` cells (see
        :func:`~sctopic.data.neighbors.knn`).
    max_neighbours
        Cap on each cell's padded neighbour list (its nearest are kept); ``adjacency`` is
        not capped. See the module docstring.
    n_jobs
        Threads for the kNN search (default: all of OMP/NUMBA_NUM_THREADS).
    """
    if int(max_neighbours) < 1:
        raise InputError(f"max_neighbours must be >= 1, got {max_neighbours}.")
    t = time.perf_counter()
    ind, dist = _neighbors.knn(X, k + 1, exact=exact, seed=seed, n_jobs=n_jobs)
    if len(ind) < 2:
        raise InputError("at least 2 cells are needed to build a neighbour graph.")
    ind, dist = np.ascontiguousarray(ind[:, 1:]), np.ascontiguousarray(dist[:, 1:])  # drop the cell
    t_knn = time.perf_counter() - t
    g = graph_from_knn(ind, dist, connect=connect, max_neighbours=max_neighbours)
    g.stats["exact"] = uses_exact_search(len(ind), exact)
    g.stats["seconds"] = {"knn": round(t_knn, 3), **g.stats["seconds"]}
    return g


def graph_from_knn(
    ind: np.ndarray,
    dist: np.ndarray,
    connect: bool = True,
    max_neighbours: int = MAX_NEIGHBOURS,
) -> NeighbourGraph:
    """The rest of :func:`build_graph`, from kNN lists ``(n, k)`` sorted by distance.

    The arrays are not modified (int32 copies are made if the indices are int64).
    """
    if int(max_neighbours) < 1:
        raise InputError(f"max_neighbours must be >= 1, got {max_neighbours}.")
    ind = np.ascontiguousarray(ind).astype(index_dtype(ind.shape[0]), copy=False)
    dist = np.ascontiguousarray(dist, dtype=np.float32)
    n, kk = ind.shape
    secs = {}
    t = time.perf_counter()
    mask = _dedupe_rows(ind, _mutual_mask(ind))
    mdeg = mask.sum(axis=1)
    n_isolated = int((mdeg == 0).sum())
    r_m = np.repeat(np.arange(n, dtype=ind.dtype), mdeg)
    c_m = ind[mask]
    w_m = dist[mask]
    del mask
    n_mutual_edges = len(r_m) // 2
    idt = index_dtype(max(n, len(r_m)))
    indptr = np.zeros(n + 1, dtype=idt)
    np.cumsum(mdeg, out=indptr[1:])
    M = sp.csr_matrix((np.ones(len(c_m), np.float32), c_m, indptr), shape=(n, n))
    n_comp_mutual = int(connected_components(M, directed=False)[0])
    del M, indptr
    secs["mutual"] = time.perf_counter() - t

    t = time.perf_counter()
    if connect:
        r_e, c_e, w_e = _forest_edges(ind, dist)
    else:
        # Minimal fix-up: each isolated cell is linked to its nearest neighbour.
        r_e = np.flatnonzero(mdeg == 0).astype(ind.dtype)
        c_e, w_e = ind[r_e, 0], dist[r_e, 0]
    n_extra = len(r_e)
    secs["forest"] = time.perf_counter() - t

    t = time.perf_counter()
    adj, lengths = _union(n, (r_m, c_m, w_m), (r_e, c_e, w_e), (c_e, r_e, w_e))
    del r_m, c_m, w_m, r_e, c_e, w_e
    full_deg = np.diff(adj.indptr)
    nbrs, deg = padded_neighbours(adj, max_neighbours, lengths)
    del lengths
    secs["lists"] = time.perf_counter() - t
    stats = {
        "n_cells": int(n),
        "k": int(kk),
        "components_mutual_knn": n_comp_mutual,
        "isolated_in_mutual_knn": n_isolated,
        "mutual_edges": int(n_mutual_edges),
        ("forest_edges" if connect else "fixup_edges"): int(n_extra),
        "edges": int(adj.nnz // 2),
        "components": int(connected_components(adj, directed=False)[0]),
        "mean_degree": float(full_deg.mean()),
        "max_degree": int(full_deg.max()),
        "max_neighbours": int(max_neighbours),
        "capped_cells": int((full_deg > max_neighbours).sum()),
        "list_width": int(nbrs.shape[1]),
        "seconds": {key: round(v, 3) for key, v in secs.items()},
    }
    return NeighbourGraph(adjacency=adj, neighbours=nbrs, degree=deg, stats=stats)


def _union(n: int, *edge_sets) -> tuple[sp.csr_matrix, np.ndarray]:
    """Symmetric 0/1 CSR of the union of directed edge sets, and each entry's length.

    Self loops are dropped; a pair given more than once keeps its smallest length.
    """
    rows = np.concatenate([e[0] for e in edge_sets])
    cols = np.concatenate([e[1] for e in edge_sets])
    w = np.concatenate([e[2] for e in edge_sets]).astype(np.float32, copy=False)
    key = rows.astype(np.int64) * n + cols
    del rows, cols
    ok = (key // n) != (key % n)
    key, w = key[ok], w[ok]
    order = np.lexsort((w, key))  # by pair, shortest first
    key, w = key[order], w[order]
    del order
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, w = key[first], w[first]
    del first
    idt = index_dtype(max(n, len(key)))
    indptr = np.zeros(n + 1, dtype=idt)
    np.cumsum(np.bincount(key // n, minlength=n), out=indptr[1:])
    indices = (key % n).astype(idt)
    del key
    adj = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n, n))
    adj.has_sorted_indices = True
    return adj, w
