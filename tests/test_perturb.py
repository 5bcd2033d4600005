"""In-silico topic perturbation on the real Kang IFN-beta data (small, fast model)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_file

from sctopic.analysis import decode_expression, perturb_topics
from sctopic.analysis.perturb import empirical_p, hypergeom_overlap_p, scanpy_style_lfc
from sctopic.errors import InputError


@pytest.fixture(scope="module")
def ifn_model():
    """SCETM with batch intercepts on the 1,556 real Kang cells (a few seconds of training)."""
    import anndata as ad

    import sctopic

    adata = ad.read_h5ad(shared_file("kang2018_pbmc_ifnb_vs_ctrl.h5ad"))
    model = sctopic.SCETM(adata, n_topics=10, batch_key="batch", seed=0)
    model.train(max_epochs=40, progress=False, device="cpu")
    return model


def test_hypergeom_p_matches_scipy():
    from scipy.stats import hypergeom

    for k, M, n, N in [(5, 1000, 100, 100), (0, 50, 10, 10), (30, 1267, 100, 100), (10, 10, 10, 10)]:
        expected = hypergeom(M, n, N).pmf(np.arange(k, min(n, N) + 1)).sum() if k > 0 else 1.0
        assert hypergeom_overlap_p(k, M, n, N) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_empirical_p_formula():
    null = [1, 5, 6, 2, np.nan]
    assert empirical_p(5, null) == (1 + 2) / (1 + 5)
    assert empirical_p(2, null, greater=False) == (1 + 2) / (1 + 5)
    assert empirical_p(100, []) == 1.0


def test_scanpy_style_lfc_matches_scanpy():
    """The predicted fold change uses scanpy's definition; check it on scanpy's own output."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    rng = np.random.default_rng(0)
    X = np.log1p(rng.poisson(2.0, size=(60, 8)).astype(float))
    a = ad.AnnData(X=X, obs=pd.DataFrame({"g": pd.Categorical(["a"] * 30 + ["b"] * 30)}, index=[str(i) for i in range(60)]))
    sc.tl.rank_genes_groups(a, "g", groups=["a"], reference="b", method="wilcoxon")
    df = sc.get.rank_genes_groups_df(a, "a").set_index("names").reindex(a.var_names)
    np.testing.assert_allclose(scanpy_style_lfc(X[:30], X[30:]), df["logfoldchanges"], rtol=1e-5, atol=1e-5)


def test_decode_matches_model_formula(ifn_model):
    """decode_expression = softmax(theta alpha rho + lambda_batch), with each cell's batch."""
    m = ifn_model
    theta = m.get_cell_topics()[:50].astype(np.float64)
    batches = m.adata.obs["batch"].astype(str).to_numpy()[:50]
    p = decode_expression(m, theta, batches)
    beta = m.get_topic_gene().to_numpy().astype(np.float64)
    lam = m.module.decoder.batch_intercept.detach().numpy().astype(np.float64)
    codes = np.array([m.batch_categories_.index(b) for b in batches])
    logits = theta @ beta + lam[codes]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=2e-4, atol=1e-9)
    np.testing.assert_allclose(p.sum(1), 1.0)
    with pytest.warns(UserWarning, match="mean batch intercept"):
        q = decode_expression(m, theta[:2], ["unknown", batches[1]])
    mean_logits = theta[0] @ beta + lam.mean(0)
    e0 = np.exp(mean_logits - mean_logits.max())
    np.testing.assert_allclose(q[0], e0 / e0.sum(), rtol=2e-4, atol=1e-9)


def test_decode_sce2tm_eval_batchnorm(pbmc_small):
    """SCE2TM: decoding one cell alone or among others gives the same result (BN in eval mode)."""
    import sctopic

    m = sctopic.SCE2TM(pbmc_small.copy(), n_topics=6, cross_view=False, ecr_weight=0.0, seed=0)
    m.train(max_epochs=3, progress=False, device="cpu")
    theta = m.get_cell_topics()[:20]
    all_at_once = decode_expression(m, theta)
    one = decode_expression(m, theta[3:4])
    np.testing.assert_allclose(all_at_once[3], one[0], rtol=1e-6)
    assert not m.module.training


def test_zero_shift_gives_zero_predicted_lfc(ifn_model):
    res = perturb_topics(ifn_model, group_key="condition", control="ctrl", target="stim",
                         topics=["topic_0", 1], shift=0.0, n_null=0, n_permutations=50)
    np.testing.assert_array_equal(res.genes["predicted_lfc"].to_numpy(), 0.0)
    assert res["distance_to_target_after"] == pytest.approx(res["distance_to_target_before"], rel=1e-6)
    assert res["topics"] == ["topic_0", "topic_1"]


def test_perturbation_statistics_are_consistent(ifn_model):
    res = perturb_topics(ifn_model, group_key="condition", control="ctrl", target="stim",
                         topics=[0, 3], shift=1.0, n_null=5, n_permutations=50, celltype_key="cell_type",
                         min_effect=0.8)
    s = res.to_dict()
    g = res.genes
    assert g["observed_top"].sum() == 100 and g["predicted_top"].sum() == 100
    overlap = int((g["observed_top"] & g["predicted_top"]).sum())
    assert s["overlap"] == s["overlap_top100"] == overlap
    assert s["overlap_hypergeom_p"] == pytest.approx(hypergeom_overlap_p(overlap, len(g), 100, 100))
    from scipy.stats import spearmanr

    assert s["spearman_lfc"] == pytest.approx(spearmanr(g["predicted_lfc"], g["observed_lfc"]).statistic)
    assert len(res.null) == 5
    assert s["null_overlap_mean"] == pytest.approx(res.null["overlap"].mean())
    assert s["empirical_p_overlap"] == pytest.approx(empirical_p(overlap, res.null["overlap"]))
    # Observed DEGs: the top genes by Wilcoxon score are interferon-stimulated genes.
    assert "ISG15" in s["observed_top_genes"][:10]
    for key in ("topics", "top_genes", "overlap_top100", "overlap_hypergeom_p", "spearman_lfc",
                "null_overlap_mean", "empirical_p_overlap", "empirical_p_spearman",
                "distance_to_target_before", "distance_to_target_after",
                "target_neighbour_share_before", "target_neighbour_share_after",
                "empirical_p_distance", "empirical_p_neighbour_share"):
        assert key in s
    assert set(s["top_genes"]) == {"topic_0", "topic_3"}
    json.dumps(res.to_dict(), default=float)  # JSON-ready (numpy scalars aside)
    # Null topics are drawn from the non-differential topics only.
    d = res.differential
    nondiff = set(d.loc[(d["p_bh"] >= 0.05) | (d["cohens_d"].abs() < 0.2), "topic"])
    for t in res.null["topics"]:
        assert set(t.split(",")) <= nondiff and len(t.split(",")) == 2


def test_perturb_errors(ifn_model):
    kw = dict(group_key="condition", control="ctrl", target="stim", n_null=0, n_permutations=20)
    with pytest.raises(InputError, match="topics not present"):
        perturb_topics(ifn_model, topics=["topic_99"], **kw)
    with pytest.raises(InputError, match="topics not present"):
        perturb_topics(ifn_model, topics=[10], **kw)
    with pytest.raises(InputError, match="has 0 cells"):
        perturb_topics(ifn_model, topics=[0], **{**kw, "target": "STIM"})
    with pytest.raises(InputError, match="not in adata.obs"):
        perturb_topics(ifn_model, topics=[0], **{**kw, "group_key": "nope"})
    with pytest.raises(InputError, match="shift"):
        perturb_topics(ifn_model, topics=[0], shift="median", **kw)
    with pytest.raises(InputError, match="no topic is significantly up"):
        perturb_topics(ifn_model, min_effect=100.0, **kw)
    with pytest.raises(InputError, match="non-differential"):
        perturb_topics(ifn_model, topics=[0], alpha=1.01, null_max_effect=0.0, min_effect=0.0, **{**kw, "n_null": 3})
    # Too few non-differential topics: the null pool widens to the topics without a large effect.
    with pytest.warns(UserWarning, match="without a large effect"):
        res = perturb_topics(ifn_model, topics=[0], alpha=1.01, null_max_effect=0.0, min_effect=10.0,
                             **{**kw, "n_null": 2})
    assert res["null_pool_rule"].startswith("without a large effect") and res["null_pool_size"] == 9


def test_cli_perturb(ifn_model, tmp_path):
    from sctopic.cli import main

    d = tmp_path / "fit"
    d.mkdir()
    ifn_model.save(d / "model.pt")
    ifn_model.adata[:, ifn_model.genes].copy().write_h5ad(d / "result.h5ad")
    out = tmp_path / "p.json"
    rc = main(["-q", "perturb", str(d), "--group-key", "condition", "--control", "ctrl", "--target", "stim",
               "--topics", "topic_2", "3", "--shift", "0.5", "--n-null", "3", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["topics"] == ["topic_2", "topic_3"] and len(res["null_draws"]) == 3
    assert 0 <= res["overlap_top100"] <= 100
    rc = main(["perturb", str(d), "--group-key", "condition", "--control", "ctrl", "--target", "nope",
               "--json", str(out)])
    assert rc == 2


def test_lfc_scatter(ifn_model, tmp_path):
    from sctopic.plotting import lfc_scatter

    res = perturb_topics(ifn_model, group_key="condition", control="ctrl", target="stim",
                         topics=[1], shift=1.0, n_null=0, n_permutations=20)
    fig = lfc_scatter(res, path=tmp_path / "lfc.png")
    assert (tmp_path / "lfc.png").stat().st_size > 1000
    assert fig.axes


@pytest.mark.slow
def test_perturbation_umap_and_summary(ifn_model, tmp_path):
    from sctopic.plotting import perturbation_summary, perturbation_umap
    from sctopic.plotting.perturb import perturbation_umap_coords

    res = perturb_topics(ifn_model, group_key="condition", control="ctrl", target="stim",
                         topics=[1], shift=1.0, n_null=3, n_permutations=20)
    coords = perturbation_umap_coords(res)
    assert coords["perturbed"].shape == (res["n_control"], 2)
    perturbation_umap(res, coords=coords, path=tmp_path / "u.png")
    perturbation_summary(res, coords=coords, path=tmp_path / "s.png")
    assert (tmp_path / "u.png").exists() and (tmp_path / "s.png").exists()
