"""Differential topics: vectorised tests against plain loops, corrections, errors, plots."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sctopic.analysis import differential as dmod
from sctopic.analysis import differential_activity, differential_topics
from sctopic.errors import InputError


@pytest.fixture(scope="module")
def fitted(pbmc_small):
    """A small SCETM trained on the bundled 700 real PBMCs (a few seconds)."""
    import sctopic

    adata = pbmc_small.copy()
    model = sctopic.SCETM(adata, n_topics=8, seed=0)
    model.train(max_epochs=30, progress=False, device="cpu")
    return model


def _loop_pvalues(values, in_mask, perms):
    """Plain per-topic, per-permutation implementation (the reference)."""
    n_perm = perms.shape[0]
    out = []
    for k in range(values.shape[1]):
        x = values[:, k]
        obs = x[in_mask].mean() - x[~in_mask].mean()
        hits = 0
        for r in range(n_perm):
            m = perms[r]
            d = x[m].mean() - x[~m].mean()
            if abs(d) >= abs(obs) - 1e-12 * max(np.abs(x).max(), 1e-300):
                hits += 1
        out.append((1 + hits) / (1 + n_perm))
    return np.array(out)


def test_permutation_labels_are_subsets_of_fixed_size():
    rng = np.random.default_rng(1)
    perms = dmod.permutation_labels(rng, 50, 7, 200)
    assert perms.shape == (200, 50)
    assert (perms.sum(1) == 7).all()
    # Blocks drawn one after another equal one draw of all rows.
    a = dmod.permutation_labels(np.random.default_rng(3), 30, 4, 10)
    g = np.random.default_rng(3)
    b = np.vstack([dmod.permutation_labels(g, 30, 4, 3), dmod.permutation_labels(g, 30, 4, 7)])
    np.testing.assert_array_equal(a, b)


def test_permutation_pvalues_match_loop(fitted):
    theta = fitted.get_cell_topics().astype(np.float64)
    in_mask = (fitted.adata.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy()
    perms = dmod.permutation_labels(np.random.default_rng(0), len(in_mask), int(in_mask.sum()), 150)
    diff, p = dmod.permutation_pvalues(theta, in_mask, perms)
    np.testing.assert_allclose(p, _loop_pvalues(theta, in_mask, perms))
    np.testing.assert_allclose(diff, theta[in_mask].mean(0) - theta[~in_mask].mean(0), rtol=1e-6, atol=1e-9)


def test_differential_topics_uses_those_permutations(fitted, monkeypatch):
    theta = fitted.adata.obsm["X_scetm"].astype(np.float64)
    labels = fitted.adata.obs["bulk_labels"].astype(str).to_numpy()
    # Tiny blocks: the result must not depend on how permutations are split into blocks.
    monkeypatch.setattr(dmod, "_BLOCK_ENTRIES", 700 * 7)
    tab = differential_topics(fitted, "bulk_labels", groups=["CD19+ B"], n_permutations=120, seed=5)
    in_mask = labels == "CD19+ B"
    perms = dmod.permutation_labels(np.random.default_rng(5), len(labels), int(in_mask.sum()), 120)
    np.testing.assert_allclose(tab["p"].to_numpy(), _loop_pvalues(theta, in_mask, perms))
    assert list(tab.columns) == dmod.COLUMNS
    assert (tab["n_in"] == in_mask.sum()).all() and (tab["n_out"] == (~in_mask).sum()).all()


def test_effect_sizes_and_corrections(fitted):
    from statsmodels.stats.multitest import multipletests

    tab = differential_topics(fitted, "bulk_labels", n_permutations=200)
    theta = fitted.adata.obsm["X_scetm"].astype(np.float64)
    labels = fitted.adata.obs["bulk_labels"].astype(str).to_numpy()
    assert set(tab["group"]) == set(labels)
    for g, sub in tab.groupby("group"):
        m = labels == g
        a, b = theta[m], theta[~m]
        np.testing.assert_allclose(sub["mean_in"], a.mean(0))
        np.testing.assert_allclose(sub["diff"], a.mean(0) - b.mean(0))
        pooled = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1)) / (len(a) + len(b) - 2))
        np.testing.assert_allclose(sub["cohens_d"], (a.mean(0) - b.mean(0)) / pooled)
        np.testing.assert_allclose(sub["log2_ratio"], np.log2((a.mean(0) + 1e-9) / (b.mean(0) + 1e-9)))
        np.testing.assert_allclose(sub["p_bh"], multipletests(sub["p"], method="fdr_bh")[1])
        np.testing.assert_allclose(sub["p_bonferroni"], multipletests(sub["p"], method="bonferroni")[1])
        assert (sub["p"] >= 1 / 201).all()


def test_mannwhitney_matches_scipy_per_topic(fitted):
    from scipy.stats import mannwhitneyu

    tab = differential_topics(fitted, "phase", groups=["G1"], reference="S", method="mannwhitney", use="logits")
    logits = fitted.adata.obsm["X_scetm_logits"].astype(np.float64)
    ph = fitted.adata.obs["phase"].astype(str).to_numpy()
    for k in range(logits.shape[1]):
        r = mannwhitneyu(logits[ph == "G1", k], logits[ph == "S", k], alternative="two-sided")
        assert tab["statistic"].iloc[k] == pytest.approx(r.statistic)
        assert tab["p"].iloc[k] == pytest.approx(r.pvalue, rel=1e-10)
    assert tab["log2_ratio"].isna().all()  # logits can be negative: no ratio
    assert (tab["reference"] == "S").all()


def test_result_anndata_gives_same_table(fitted, tmp_path):
    result = fitted.adata.copy()
    path = tmp_path / "result.h5ad"
    result.write_h5ad(path)
    a = differential_topics(fitted, "bulk_labels", groups="CD56+ NK", n_permutations=50)
    b = differential_topics(path, "bulk_labels", groups="CD56+ NK", n_permutations=50)
    c = differential_topics(tmp_path, "bulk_labels", groups="CD56+ NK", n_permutations=50)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    pd.testing.assert_frame_equal(a, c, check_dtype=False)


def test_differential_activity_on_plain_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    x[:20, 0] += 3.0
    lab = np.array(["a"] * 20 + ["b"] * 20, dtype=object)
    tab = differential_activity(x, lab, groups=["a"], n_permutations=500)
    assert tab["p"].iloc[0] == pytest.approx(1 / 501)
    assert tab["p"].iloc[1] > 0.01


def test_differential_errors(fitted, pbmc_small):
    with pytest.raises(InputError, match="not in adata.obs"):
        differential_topics(fitted, "no_such_column")
    adata = fitted.adata.copy()
    adata.obs["one"] = "x"
    with pytest.raises(InputError, match="single label"):
        differential_topics(adata, "one")
    adata.obs["tiny"] = ["a"] + ["b"] * 2 + ["c"] * (adata.n_obs - 3)
    with pytest.raises(InputError, match="fewer than 2 cells"):
        differential_topics(adata, "tiny", groups=["a"])
    with pytest.raises(InputError, match="reference"):
        differential_topics(adata, "tiny", reference="a")
    with pytest.warns(UserWarning, match="skipped"):
        tab = differential_topics(adata, "tiny", n_permutations=10)
    assert set(tab["group"]) == {"b", "c"}
    with pytest.raises(InputError, match="groups not found"):
        differential_topics(adata, "bulk_labels", groups=["nope"])
    with pytest.raises(InputError, match="no topics"):
        differential_topics(pbmc_small, "bulk_labels")
    with pytest.raises(InputError, match="method"):
        differential_topics(fitted, "bulk_labels", method="ttest")
    with pytest.raises(InputError, match="use"):
        differential_topics(fitted, "bulk_labels", use="beta")


def test_group_vs_rest_needs_two_outside(fitted):
    adata = fitted.adata.copy()
    adata.obs["two"] = ["a"] * (adata.n_obs - 1) + ["b"]
    with pytest.raises(InputError, match="at least 2"):
        differential_topics(adata, "two", groups=["a"])


def test_volcano_and_heatmap(fitted, tmp_path):
    from matplotlib.figure import Figure

    from sctopic.plotting import topic_heatmap, volcano

    tab = differential_topics(fitted, "bulk_labels", n_permutations=50)
    fig = volcano(tab, "CD14+ Monocyte", path=tmp_path / "v.png")
    assert isinstance(fig, Figure) and (tmp_path / "v.png").stat().st_size > 1000
    with pytest.raises(InputError, match="groups"):
        volcano(tab)
    fig = topic_heatmap(tab, path=tmp_path / "h.pdf")
    assert isinstance(fig, Figure) and (tmp_path / "h.pdf").exists()
