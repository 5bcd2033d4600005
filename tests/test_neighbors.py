"""The one kNN function (sctopic.data.neighbors.knn): convention, exactness, chunking, duplicates."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sctopic.data.neighbors import EXACT_MAX_CELLS, knn, uses_exact_search
from sctopic.errors import InputError


def _data(n=400, d=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6, size=(5, d))
    return (centres[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _reference(X):
    """Plain numpy brute force in float64: the full n x n distance matrix, each row sorted
    (the cell itself first, at distance 0)."""
    X = X.astype(np.float64)
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, -1.0)  # the cell itself sorts first
    order = np.argsort(D, axis=1, kind="stable")
    D = np.take_along_axis(D, order, 1)
    D[:, 0] = 0.0
    return order, D


@pytest.fixture(scope="module")
def real_pcs(pbmc_small):
    """50 PCs of the 700 real bundled PBMCs."""
    from sctopic.data.counts import get_counts, pca_embedding

    return pca_embedding(get_counts(pbmc_small), 50, seed=0)


def _assert_matches_reference(X, n_neighbors, ind, dist):
    ref, D = _reference(X)
    k = n_neighbors
    assert ind.shape == dist.shape == (len(X), k)
    # Identical neighbour sets wherever the k-th and (k+1)-th distances are not tied.
    untied = (D[:, k] - D[:, k - 1]) > 1e-4 * D[:, k]
    assert untied.mean() > 0.95
    for i in np.flatnonzero(untied):
        assert set(ind[i]) == set(ref[i, :k]), i
    np.testing.assert_allclose(dist, D[:, :k], rtol=1e-4, atol=1e-4)


def test_convention_self_first_and_counted():
    X = _data()
    ind, dist = knn(X, 10)
    assert ind.shape == dist.shape == (400, 10)  # n_neighbors counts the cell itself
    np.testing.assert_array_equal(ind[:, 0], np.arange(400))
    assert (dist[:, 0] == 0).all()
    assert not (ind[:, 1:] == np.arange(400)[:, None]).any()
    assert (np.diff(dist, axis=1) >= 0).all()
    assert ind.dtype == np.int32 and dist.dtype == np.float32
    # n_neighbors = 1 is the cell alone; more than n is capped at n
    np.testing.assert_array_equal(knn(X, 1)[0], np.arange(400)[:, None])
    assert knn(X[:7], 50)[0].shape == (7, 7)


def test_exact_matches_numpy_brute_force():
    X = _data()
    ind, dist = knn(X, 11, exact=True)
    _assert_matches_reference(X, 11, ind, dist)


@pytest.mark.parametrize("chunk_rows", [1, 64, 250, 10_000])
def test_chunked_search_on_real_data(real_pcs, chunk_rows):
    X = real_pcs
    ind, dist = knn(X, 16, exact=True, chunk_rows=chunk_rows)
    _assert_matches_reference(X, 16, ind, dist)
    # chunking changes nothing, to the bit
    ind1, dist1 = knn(X, 16, exact=True, chunk_rows=700)
    np.testing.assert_array_equal(ind, ind1)
    np.testing.assert_array_equal(dist, dist1)


def test_queries_subset(real_pcs):
    X = real_pcs
    q = np.array([5, 0, 699, 123])
    ind_q, dist_q = knn(X, 11, exact=True, queries=q, chunk_rows=3)
    ind_all, dist_all = knn(X, 11)
    np.testing.assert_array_equal(ind_q, ind_all[q])
    np.testing.assert_array_equal(dist_q, dist_all[q])
    np.testing.assert_array_equal(ind_q[:, 0], q)


def test_duplicate_points_keep_self_first():
    X = _data(n=100)
    dup = np.vstack([X, X[:5], X[:5]])  # cells 0-4 have two exact copies each
    ind, dist = knn(dup, 5)
    n = len(dup)
    np.testing.assert_array_equal(ind[:, 0], np.arange(n))
    assert (dist[:, 0] == 0).all()
    assert all(len(set(r)) == 5 for r in ind)
    for i in range(5):  # the two copies come next, at distance 0
        assert set(ind[i, 1:3]) == {100 + i, 105 + i} and (dist[i, 1:3] == 0).all()
    _assert_matches_reference(dup[5:100], 5, *knn(dup[5:100], 5))
    # n_neighbors = 2: brute force can return two copies and not the cell itself (the farthest
    # column then makes room for it)
    ind, dist = knn(dup, 2)
    np.testing.assert_array_equal(ind[:, 0], np.arange(n))
    for i in range(5):
        assert ind[i, 1] in (100 + i, 105 + i) and ind[100 + i, 1] in (i, 105 + i)
    assert (dist[[*range(5), *range(100, 110)]] == 0).all()


def test_input_forms_and_errors():
    X = _data(n=50)
    ind, dist = knn(X.astype(np.float64), 6)
    ind_s, dist_s = knn(sp.csr_matrix(X), 6)
    np.testing.assert_array_equal(ind, ind_s)
    np.testing.assert_array_equal(dist, dist_s)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        knn(bad, 5)
    with pytest.raises(InputError, match="2-d"):
        knn(X[0], 5)
    with pytest.raises(InputError, match="n_neighbors"):
        knn(X, 0)


def test_exact_threshold_switch():
    assert uses_exact_search(EXACT_MAX_CELLS) and not uses_exact_search(EXACT_MAX_CELLS + 1)
    assert uses_exact_search(10**9, exact=True) and not uses_exact_search(10, exact=False)


def test_approximate_search_self_first_and_recall():
    # pynndescent: its numba code compiles once per process (tens of seconds on 2 cores)
    X = _data(n=1500)
    exact, _ = knn(X, 16, exact=True)
    approx, dist = knn(X, 16, exact=False, seed=0)
    np.testing.assert_array_equal(approx[:, 0], np.arange(1500))
    assert (dist[:, 0] == 0).all() and approx.dtype == np.int32
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(exact[:, 1:], approx[:, 1:])])
    assert recall > 0.95
    q = np.array([3, 1400])
    np.testing.assert_array_equal(knn(X, 16, exact=False, seed=0, queries=q)[0], approx[q])


def test_metrics_use_the_same_function():
    import sctopic.metrics
    import sctopic.metrics.neighbors

    assert sctopic.metrics.knn is knn and sctopic.metrics.neighbors.knn is knn
