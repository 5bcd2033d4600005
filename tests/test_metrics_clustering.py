"""Clustering metrics: sklearn agreement, blobs, pbmc3k PCA baseline, determinism, Hungarian."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sctopic.metrics import (
    DEFAULT_RESOLUTIONS,
    ari,
    celltype_accuracy,
    cluster_graph,
    cluster_sweep,
    knn,
    neighbor_graph,
    nmi,
)

PBMC3K = Path("/work/shared/data/pbmc3k_seurat_labels.h5ad")


def blobs(n_per=150, n_blobs=4, dim=8, sep=12.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (n_blobs, dim))
    y = np.repeat(np.arange(n_blobs), n_per)
    return centres[y] + rng.normal(0, 1, (y.size, dim)), y


def test_ari_nmi_equal_sklearn():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 7, 300))
    assert ari(a, b) == adjusted_rand_score(a, b)
    assert nmi(a, b) == normalized_mutual_info_score(a, b)
    names = np.array(list("abcde"))[a]
    assert ari(names, b) == adjusted_rand_score(a, b)


def test_neighbor_graph_properties():
    x, _ = blobs(n_per=50)
    idx, dist = knn(x, 15)
    assert idx.shape == (200, 15)
    np.testing.assert_array_equal(idx[:, 0], np.arange(200))
    assert np.all(np.diff(dist, axis=1) >= -1e-6)
    for weights in ("umap", "connectivity"):
        g = neighbor_graph(x, 15, weights=weights)
        assert (abs(g - g.T)).max() < 1e-12
        assert g.diagonal().sum() == 0
        assert g.data.min() > 0 and g.data.max() <= 1 + 1e-12
        # every cell keeps at least its k - 1 own neighbours
        assert np.all(np.diff(g.indptr) >= 14)
    # duplicated points: the cell itself is still put first
    dup = np.vstack([x, x[:5]])
    idx, _ = knn(dup, 5)
    np.testing.assert_array_equal(idx[:, 0], np.arange(dup.shape[0]))


@pytest.mark.parametrize("method", ["leiden", "louvain"])
def test_cluster_sweep_blobs(method):
    x, y = blobs()
    res = cluster_sweep(x, y, method=method, n_clusters=4)
    assert res["ari_oracle"] == pytest.approx(1.0)
    assert res["nmi_oracle"] == pytest.approx(1.0)
    assert [row["resolution"] for row in res["table"]] == list(DEFAULT_RESOLUTIONS)
    assert len(res["table"]) == 20
    best = max(res["table"], key=lambda r: r["ari"])
    assert res["resolution_oracle"] == best["resolution"]
    assert res["n_clusters_matched"] == 4 and res["ari_matched"] == pytest.approx(1.0)
    fixed = next(r for r in res["table"] if r["resolution"] == 1.0)
    assert res["ari_fixed"] == fixed["ari"]
    assert set(res["seconds"]) == {"graph", "clustering", "total"}


def test_cluster_sweep_deterministic_and_options():
    x, y = blobs(n_blobs=6, sep=4.0, seed=3)
    for method in ("leiden", "louvain"):
        a = cluster_sweep(x, y, method=method, seed=7, resolutions=[0.5, 1.5, 3.0], return_clusters=True)
        b = cluster_sweep(x, y, method=method, seed=7, resolutions=[0.5, 1.5, 3.0], return_clusters=True)
        assert a["table"] == b["table"]
        for r in (0.5, 1.5, 3.0):
            np.testing.assert_array_equal(a["clusters"][r], b["clusters"][r])
    # fixed resolution outside the sweep is clustered separately; no labels -> ARI null
    res = cluster_sweep(x, None, resolutions=[0.5], fixed_resolution=1.3)
    assert res["resolution_fixed"] == 1.3 and res["ari_fixed"] is None
    assert res["ari_oracle"] is None and res["n_clusters_fixed"] >= 1
    # missing labels are left out of the scores
    y_nan = y.astype(object)
    y_nan[:10] = None
    res = cluster_sweep(x, y_nan, resolutions=[1.0], return_clusters=True)
    c = res["clusters"][1.0]
    assert res["ari_oracle"] == pytest.approx(adjusted_rand_score(y[10:], c[10:]))
    # a precomputed graph skips the kNN step
    g = neighbor_graph(x, 15)
    res2 = cluster_sweep(None, y, graph=g, resolutions=[1.0])
    assert res2["ari_fixed"] == pytest.approx(cluster_sweep(x, y, resolutions=[1.0])["ari_fixed"])
    labels = cluster_graph(g, 1.0, backend="leidenalg")
    assert labels.shape == (x.shape[0],) and labels.min() == 0


def test_celltype_accuracy_hungarian():
    rng = np.random.default_rng(0)
    y = rng.choice(["B", "T", "NK", "Mono"], 200)
    perm = {"B": 7, "T": 3, "NK": 0, "Mono": 11}
    res = celltype_accuracy(y, [perm[v] for v in y])
    assert res["overall"] == 1.0 and set(res["per_type"].values()) == {1.0}
    assert res["matching"] == perm
    # hand case: clusters 0 = {a, a, b}, 1 = {b, b}; 'c' gets no cluster
    res = celltype_accuracy(["a", "a", "b", "b", "b", "c"], [0, 0, 0, 1, 1, 1])
    assert res["matching"] == {"a": 0, "b": 1, "c": None}
    assert res["per_type"] == {"a": 1.0, "b": pytest.approx(2 / 3), "c": 0.0}
    assert res["overall"] == pytest.approx(4 / 6)


@pytest.fixture(scope="module")
def pbmc3k_pca():
    if not PBMC3K.exists():
        pytest.skip("pbmc3k data not staged")
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(PBMC3K)
    a.X = a.X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
        sc.pp.pca(a, n_comps=50, random_state=0)
    return a.obsm["X_pca"], a.obs["cell_type"].to_numpy()


def test_pbmc3k_pca_leiden_baseline(pbmc3k_pca):
    x, y = pbmc3k_pca
    res = cluster_sweep(x, y, n_clusters=9)
    # DESIGN section 8: PCA + Leiden best-resolution ARI 0.75 on pbmc3k
    assert 0.65 < res["ari_oracle"] < 0.9
    assert res["nmi_oracle"] > 0.65
    assert res["ari_fixed"] > 0.55
    again = cluster_sweep(x, y, n_clusters=9)
    assert again["table"] == res["table"]


@pytest.mark.slow
def test_approximate_neighbours_agree_with_exact():
    # slow: pynndescent's numba code compiles for about a minute on 2 cores
    x, y = blobs(n_per=1500, n_blobs=4, dim=20, sep=6.0)
    exact, _ = knn(x, 15, exact=True)
    approx, _ = knn(x, 15, exact=False, seed=0)
    np.testing.assert_array_equal(approx[:, 0], np.arange(x.shape[0]))
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(exact, approx)])
    assert recall > 0.9
    res = cluster_sweep(x, y, exact=False, resolutions=[0.2, 0.5])
    assert res["ari_oracle"] > 0.95
