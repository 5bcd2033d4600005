"""Out-of-core PCA (sctopic.data.pca) against scikit-learn's PCA of the whole matrix."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import shared_file
from sctopic.data import pca as pca_mod
from sctopic.data.counts import get_counts, log_normalize, pca_embedding
from sctopic.data.pca import pca_blocks, row_blocks
from sctopic.errors import InputError


def _corr(a, b):
    return np.array([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(a.shape[1])])


@pytest.fixture(scope="module")
def pbmc_counts(pbmc_small):
    return get_counts(pbmc_small)  # 700 real cells x 765 genes


@pytest.fixture(scope="module")
def kang_counts():
    """4,000 real Kang PBMCs x 1,287 genes (../shared/data)."""
    a = ad.read_h5ad(shared_file("kang2018_pbmc_ctrl_8donors.h5ad"))
    rng = np.random.default_rng(0)
    return get_counts(a[np.sort(rng.choice(a.n_obs, 4000, replace=False))].copy())


def _check_equal(ref, got, n_check=20, var_tol=1e-4, signed=True):
    assert got.shape == ref.shape and got.dtype == np.float32
    c = _corr(ref[:, :n_check], got[:, :n_check])
    assert (c > 0.999).all() if signed else (np.abs(c) > 0.999).all(), c
    ev_ref, ev = ref.var(0, ddof=1)[:n_check], got.var(0, ddof=1)[:n_check]
    np.testing.assert_allclose(ev, ev_ref, rtol=var_tol)


def test_gram_path_equals_sklearn_pca_with_same_signs(pbmc_counts):
    X = pbmc_counts
    ref = pca_embedding(X, 50, seed=0)
    got, model = pca_blocks(row_blocks(X, 97), X.shape[1], 50, return_model=True)
    assert model.method == "gram" and model.n_cells == X.shape[0]
    # Every component: same direction and sign (sklearn's v-based svd_flip), same variance.
    _check_equal(ref, got, n_check=50)
    np.testing.assert_allclose(got, ref, atol=5e-3 * np.abs(ref).max())
    # The model agrees with sklearn's fitted attributes and projects the same scores.
    from sklearn.decomposition import PCA

    skl = PCA(50, svd_solver="arpack", random_state=0).fit(log_normalize(X))
    np.testing.assert_allclose(model.explained_variance, skl.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(model.explained_variance_ratio, skl.explained_variance_ratio_,
                               rtol=1e-4)
    np.testing.assert_allclose(model.mean, skl.mean_, atol=1e-5)
    np.testing.assert_allclose(model.transform(X), got, atol=1e-4)


def test_result_does_not_depend_on_blocks(pbmc_counts):
    X = pbmc_counts
    one = pca_blocks(row_blocks(X, 10_000), X.shape[1], 30)
    many = pca_blocks(row_blocks(X, 33), X.shape[1], 30)
    dense = pca_blocks(lambda: (X[a : a + 250].toarray() for a in range(0, 700, 250)), X.shape[1], 30)
    np.testing.assert_allclose(many, one, atol=1e-4)
    np.testing.assert_allclose(dense, one, atol=1e-4)


def test_gram_path_on_real_kang_cells(kang_counts):
    X = kang_counts
    ref = pca_embedding(X, 50, seed=0)
    got = pca_blocks(row_blocks(X, 1500), X.shape[1], 50)
    _check_equal(ref, got, n_check=50)


def test_randomized_path_on_real_kang_cells(kang_counts):
    X = kang_counts
    ref = pca_embedding(X, 50, seed=0)
    got, model = pca_blocks(row_blocks(X, 1500), X.shape[1], 50, method="randomized",
                            return_model=True)
    assert model.method == "randomized"
    _check_equal(ref, got, n_check=20)
    # Trailing components: still close (documented as approximate); a sign may differ where
    # two loadings of a component are nearly equal in size.
    assert (np.abs(_corr(ref, got)) > 0.999).all()


def test_auto_uses_randomized_above_threshold(pbmc_counts, monkeypatch):
    monkeypatch.setattr(pca_mod, "GRAM_MAX_GENES", 100)
    X = pbmc_counts
    got, model = pca_blocks(row_blocks(X, 200), X.shape[1], 10, return_model=True)
    assert model.method == "randomized"
    _check_equal(pca_embedding(X, 10), got, n_check=10)


def test_backed_anndata_blocks(pbmc_counts, tmp_path):
    X = pbmc_counts
    path = tmp_path / "b.h5ad"
    ad.AnnData(X=sp.csr_matrix(X)).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    got = pca_blocks(row_blocks(backed.X, 128), backed.n_vars, 20)
    backed.file.close()
    np.testing.assert_allclose(got, pca_blocks(row_blocks(X, 128), X.shape[1], 20), atol=1e-5)


def test_caps_and_errors(pbmc_counts):
    X = pbmc_counts[:30]
    assert pca_blocks(row_blocks(X, 7), X.shape[1], 50).shape == (30, 29)  # min(n, V) - 1
    with pytest.raises(InputError, match="columns"):
        pca_blocks(row_blocks(X, 7), X.shape[1] + 1, 5)
    with pytest.raises(InputError, match="method"):
        pca_blocks(row_blocks(X, 7), X.shape[1], 5, method="svd")
    with pytest.raises(InputError, match="too few"):
        pca_blocks(row_blocks(X[:1], 7), X.shape[1], 5)
