"""Neighbour graphs: kNN, mutual kNN, connectivity, padded lists and vectorised sampling."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from sctopic.data.graphs import build_graph, knn, mutual_knn, padded_neighbours
from sctopic.data.loader import sample_neighbours


def _data(n=400, d=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6, size=(5, d))
    return (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_knn_matches_brute_force():
    X = _data()
    ind, dist = knn(X, k=10)
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    ref = np.argsort(D, axis=1)[:, :10]
    assert (np.sort(ind, 1) == np.sort(ref, 1)).mean() > 0.999
    np.testing.assert_allclose(dist, np.sqrt(np.take_along_axis(D, ref, 1)), rtol=1e-4, atol=1e-4)


def test_approximate_knn_recall():
    X = _data(n=1500)
    exact, _ = knn(X, k=15, exact=True)
    approx, _ = knn(X, k=15, exact=False, seed=0)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(exact, approx)])
    assert recall > 0.95
    assert not (approx == np.arange(1500)[:, None]).any()


def test_mutual_knn_against_set_definition():
    X = _data(n=150)
    ind, _ = knn(X, k=8)
    M = mutual_knn(ind)
    sets = [set(r) for r in ind]
    ref = {(i, j) for i in range(150) for j in sets[i] if i in sets[j]}
    got = set(zip(*M.nonzero()))
    assert got == ref
    assert (M != M.T).nnz == 0


def test_graph_is_connected_and_contains_mutual_edges():
    X = _data(n=600, seed=1)
    g = build_graph(X, k=15)
    ind, _ = knn(X, k=15)
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
