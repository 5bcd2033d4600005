"""Neighbour graphs: kNN, mutual kNN, connectivity, padded lists and vectorised sampling."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from sctopic.data.graphs import build_graph, mutual_knn, padded_neighbours
from sctopic.data.loader import sample_neighbours
from sctopic.data.neighbors import knn


def _others(X, k, **kw):
    """The training graphs' kNN lists: the ``k`` nearest *other* cells (``k + 1`` with self)."""
    ind, dist = knn(X, k + 1, **kw)
    return ind[:, 1:], dist[:, 1:]


def _data(n=400, d=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6, size=(5, d))
    return (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_mutual_knn_against_set_definition():
    X = _data(n=150)
    ind, _ = _others(X, 8)
    M = mutual_knn(ind)
    sets = [set(r) for r in ind]
    ref = {(i, j) for i in range(150) for j in sets[i] if i in sets[j]}
    got = set(zip(*M.nonzero()))
    assert got == ref
    assert (M != M.T).nnz == 0


def test_graph_is_connected_and_contains_mutual_edges():
    X = _data(n=600, seed=1)
    g = build_graph(X, k=15)
    ind, _ = _others(X, 15)
    M = mutual_knn(ind)
    assert (M - M.multiply(g.adjacency)).nnz == 0  # every mutual edge kept
    n_knn_comp = connected_components(sp.csr_matrix((np.ones(ind.size), (np.repeat(np.arange(600), 15), ind.ravel())), shape=(600, 600)), directed=False)[0]
    assert g.stats["components"] == n_knn_comp
    assert (g.degree >= 1).all()
    assert g.stats["components_mutual_knn"] >= g.stats["components"]


def test_padded_lists_roundtrip():
    A = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], dtype=np.float32))
    nb, deg = padded_neighbours(A)
    assert deg.tolist() == [2, 1, 2, 1]
    for i in range(4):
        assert set(nb[i, : deg[i]]) == set(A[i].indices)
        assert (nb[i, deg[i]:] == -1).all()


def test_sampling_returns_only_neighbours_of_the_right_cell():
    X = _data(n=300, seed=2)
    g = build_graph(X, k=10)
    nb, deg = torch.as_tensor(g.neighbours), torch.as_tensor(g.degree)
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(300).repeat(20)
    draws = sample_neighbours(nb, deg, idx, gen).numpy()
    adj = g.adjacency.tocsr()
    assert all(adj[i, j] == 1 for i, j in zip(idx.numpy(), draws))
    # Every neighbour of a high-degree cell is eventually drawn (uniform over the list).
    i = int(np.argmax(g.degree))
    many = sample_neighbours(nb, deg, torch.full((4000,), i), gen).numpy()
    assert set(many) == set(adj[i].indices)


# --- scale: chunked exact search, int32 internals, degree cap -------------------------------

from sctopic.data.graphs import graph_from_knn, spanning_forest  # noqa: E402


@pytest.fixture(scope="module")
def real_pcs(pbmc_small):
    """50 PCs of the 700 real bundled PBMCs."""
    from sctopic.data.counts import get_counts, pca_embedding

    return pca_embedding(get_counts(pbmc_small), 50, seed=0)


def test_graph_from_knn_matches_old_definitions(real_pcs):
    """Mutual edges and forest as the set/sparse-algebra definitions give them."""
    X = real_pcs
    ind, dist = _others(X, 15, exact=True)
    g = graph_from_knn(ind, dist)
    A = sp.csr_matrix((np.ones(ind.size), (np.repeat(np.arange(len(X)), 15), ind.ravel())),
                      shape=(len(X),) * 2)
    M_old = A.multiply(A.T).tocsr()
    M = mutual_knn(ind)
    assert (M != M_old).nnz == 0 and M.indices.dtype == np.int32
    T = spanning_forest(ind, dist)
    ref_adj = ((M_old + T) > 0).astype(np.float32)
    assert (g.adjacency != ref_adj).nnz == 0
    # The forest has n - components edges and the total length of scipy's MST of the
    # symmetrised kNN graph.
    from scipy.sparse.csgraph import minimum_spanning_tree

    W = sp.csr_matrix((dist.ravel().astype(np.float64), (np.repeat(np.arange(len(X)), 15), ind.ravel())),
                      shape=(len(X),) * 2)
    W = W.maximum(W.T)
    n_comp = connected_components(W, directed=False)[0]
    assert T.nnz // 2 == len(X) - n_comp == g.stats["forest_edges"]
    np.testing.assert_allclose(W.multiply(T).sum() / 2, minimum_spanning_tree(W).sum(), rtol=1e-5)
    assert g.stats["mutual_edges"] == M.nnz // 2
    assert g.stats["edges"] == g.adjacency.nnz // 2
    assert g.adjacency.indices.dtype == np.int32
    # build_graph gives the same graph (exact search, small n).
    g2 = build_graph(X, k=15)
    assert (g2.adjacency != g.adjacency).nnz == 0
    np.testing.assert_array_equal(g2.neighbours, g.neighbours)
    assert set(g2.stats["seconds"]) == {"knn", "mutual", "forest", "lists"}


def _hub_data(n_leaves=120, seed=0):
    """A hub at the origin and leaves on the axes at distance ~1: the MST is a star."""
    rng = np.random.default_rng(seed)
    d = n_leaves
    leaves = np.eye(d) * (1.0 + 0.01 * rng.random(d))[:, None]
    X = np.vstack([np.zeros((1, d)), leaves]) + rng.normal(scale=1e-3, size=(d + 1, d))
    return X.astype(np.float32)


def test_degree_cap_keeps_nearest_and_full_adjacency():
    X = _hub_data()
    n = len(X)
    full = build_graph(X, k=3, max_neighbours=1000)
    capped = build_graph(X, k=3, max_neighbours=10)
    assert full.stats["max_degree"] == n - 1 == full.degree[0]  # every leaf joins the hub
    # The adjacency is never capped; the padded lists are.
    assert (capped.adjacency != full.adjacency).nnz == 0
    assert capped.neighbours.shape == (n, 10) and capped.degree[0] == 10
    assert capped.stats["capped_cells"] == 1 and capped.stats["list_width"] == 10
    assert capped.stats["max_degree"] == n - 1
    # The hub keeps its 10 nearest leaves.
    d0 = np.linalg.norm(X[1:] - X[0], axis=1)
    assert set(capped.neighbours[0]) == set(1 + np.argsort(d0)[:10])
    # Other cells are unchanged (their lists hold the same neighbours).
    for i in range(1, n):
        assert set(capped.neighbours[i, : capped.degree[i]]) == set(full.neighbours[i, : full.degree[i]])
    assert (capped.degree >= 1).all()
    with pytest.raises(Exception, match="max_neighbours"):
        build_graph(X, k=3, max_neighbours=0)


def test_padded_neighbours_cap_by_lengths():
    A = sp.csr_matrix(np.array([[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32))
    lengths = np.array([3.0, 1.0, 2.0, 1.0, 1.0, 1.0], dtype=np.float32)  # row 0: to 1, 2, 3
    nb, deg = padded_neighbours(A, max_neighbours=2, lengths=lengths)
    assert deg.tolist() == [2, 1, 1, 1] and nb.shape == (4, 2)
    assert set(nb[0]) == {2, 3} and nb[0].tolist() == [2, 3]
    assert nb[1].tolist() == [0, -1]


def test_large_approximate_graph_int32_and_bounded_width():
    X = _data(n=3000, d=20, seed=3)
    g = build_graph(X, k=15, exact=False, max_neighbours=20)
    assert g.neighbours.dtype == np.int64 and g.neighbours.shape[1] <= 20
    assert g.adjacency.indices.dtype == np.int32 and g.adjacency.indptr.dtype == np.int32
    assert (g.degree >= 1).all() and g.stats["exact"] is False
    assert (g.adjacency != g.adjacency.T).nnz == 0 and g.adjacency.diagonal().sum() == 0
