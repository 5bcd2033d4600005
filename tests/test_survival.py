"""Bulk projection and survival: scores against a plain loop, Cox against lifelines, errors, CLI."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from sctopic.analysis import logrank_split, score_bulk, survival_association
from sctopic.errors import InputError


@pytest.fixture(scope="module")
def tcga():
    """The real TCGA melanoma bulk data (472 tumours x 2,454 genes, log2 expression)."""
    return ad.read_h5ad(shared_file("tcga_skcm_bulk_survival.h5ad"))


@pytest.fixture(scope="module")
def rossi():
    """Rossi et al. recidivism data (432 released prisoners), shipped with lifelines."""
    from lifelines.datasets import load_rossi

    return load_rossi()


def _topic_gene(genes, n_topics=4, seed=0, logits=False):
    rng = np.random.default_rng(seed)
    vals = rng.normal(size=(n_topics, len(genes))) if logits else rng.gamma(0.3, size=(n_topics, len(genes)))
    return pd.DataFrame(vals, index=[f"topic_{k}" for k in range(n_topics)], columns=genes)


def _loop_scores(beta: pd.DataFrame, bulk, n_top, logits):
    X = np.asarray(bulk.X, dtype=np.float64)
    names = list(bulk.var_names)
    out = np.full((bulk.n_obs, beta.shape[0]), np.nan)
    for k in range(beta.shape[0]):
        row = beta.iloc[k]
        top = row.sort_values(ascending=False, kind="stable").index[:n_top]
        used = [g for g in top if g in names and X[:, names.index(g)].std(ddof=1) > 0]
        w = row[used].to_numpy()
        w = np.exp(w - w.max()) if logits else w
        w = w / w.sum()
        for i in range(bulk.n_obs):
            total = 0.0
            for g, wg in zip(used, w):
                col = X[:, names.index(g)]
                total += wg * (col[i] - col.mean()) / col.std(ddof=1)
            out[i, k] = total
    return out


@pytest.mark.parametrize("logits", [False, True])
def test_score_bulk_matches_plain_loop(tcga, logits):
    bulk = tcga[:60, :300].copy()
    # Model genes: half shared with the bulk data, half not.
    genes = list(bulk.var_names[:150]) + [f"NOT_IN_BULK_{i}" for i in range(150)]
    beta = _topic_gene(genes, logits=logits)
    scores = score_bulk(beta, bulk, n_top=40)
    np.testing.assert_allclose(scores.to_numpy(), _loop_scores(beta, bulk, 40, logits), rtol=1e-10, atol=1e-12)
    assert scores.attrs["beta_scale"] == ("logits" if logits else "weights")
    for t, used in scores.attrs["genes_used"].items():
        assert all(g in set(bulk.var_names) for g in used)
        assert sum(scores.attrs["weights"][t]) == pytest.approx(1.0)
    assert list(scores.index) == list(bulk.obs_names)


def test_score_bulk_from_result_anndata(tcga, tmp_path):
    genes = list(tcga.var_names[:200])
    beta = _topic_gene(genes, n_topics=3)
    result = ad.AnnData(X=np.zeros((2, len(genes)), np.float32), var=pd.DataFrame(index=genes))
    result.obsm["X_sce2tm"] = np.full((2, 3), 1 / 3, np.float32)
    result.uns["sctopic"] = {"model": "sce2tm"}
    result.uns["sce2tm"] = {"topic_gene": beta.to_numpy(np.float32), "genes": np.array(genes, dtype=object),
                            "topic_names": np.array(beta.index, dtype=object)}
    result.write_h5ad(tmp_path / "result.h5ad")
    a = score_bulk(tmp_path, tcga, n_top=30)
    b = score_bulk(beta.astype(np.float32).astype(np.float64), tcga, n_top=30)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)


def test_score_bulk_errors(tcga):
    beta = _topic_gene([f"GENE_X{i}" for i in range(20)])
    with pytest.raises(InputError, match="no gene of the model"):
        score_bulk(beta, tcga)
    with pytest.raises(InputError, match="method"):
        score_bulk(_topic_gene(list(tcga.var_names[:10])), tcga, method="ssgsea")
    # A topic whose top genes are all missing scores NaN, with a warning.
    genes = list(tcga.var_names[:5]) + [f"MISSING{i}" for i in range(5)]
    b = pd.DataFrame(np.zeros((2, 10)), index=["t0", "t1"], columns=genes)
    b.iloc[0, :5] = 1.0
    b.iloc[1, 5:] = 1.0
    with pytest.warns(UserWarning, match="score NaN"):
        s = score_bulk(b, tcga, n_top=5)
    assert s["t1"].isna().all() and s["t0"].notna().all()


def test_cox_hr_matches_lifelines(rossi):
    from lifelines import CoxPHFitter

    tab = survival_association(rossi[["age", "prio"]], rossi["week"], rossi["arrest"])
    for name in ("age", "prio"):
        raw = CoxPHFitter().fit(rossi[["week", "arrest", name]], "week", "arrest").summary.loc[name]
        sd = rossi[name].std(ddof=1)
        row = tab.set_index("topic").loc[name]
        # Standardising the score multiplies the coefficient by its standard deviation.
        assert row["coef"] == pytest.approx(raw["coef"] * sd, rel=1e-5)
        assert row["hr"] == pytest.approx(np.exp(raw["coef"] * sd), rel=1e-5)
        assert row["ci_low"] == pytest.approx(np.exp(raw["coef lower 95%"] * sd), rel=1e-5)
        assert row["p"] == pytest.approx(raw["p"], rel=1e-4)


def test_cox_with_covariates_known_case(rossi):
    """The full Rossi model: age's coefficient is -0.0574 per year (Fox & Weisberg)."""
    cov = rossi[["fin", "race", "wexp", "mar", "paro", "prio"]]
    tab = survival_association(rossi[["age"]], rossi["week"], rossi["arrest"], covariates=cov)
    coef_per_year = tab["coef"].iloc[0] / rossi["age"].std(ddof=1)
    assert coef_per_year == pytest.approx(-0.0574, abs=5e-4)
    assert tab["hr"].iloc[0] < 1 and tab["p"].iloc[0] < 0.01


def test_fdr_is_bh_and_categorical_covariates(rossi):
    from statsmodels.stats.multitest import multipletests

    scores = rossi[["age", "prio", "fin", "wexp"]].astype(float)
    cov = pd.DataFrame({"group": np.where(rossi["race"] == 1, "b", "a")})
    tab = survival_association(scores, rossi["week"].to_numpy(), rossi["arrest"].to_numpy(), covariates=cov)
    np.testing.assert_allclose(tab["fdr"], multipletests(tab["p"], method="fdr_bh")[1])
    assert tab.attrs["covariates"] == ["cov_group_b"]
    assert list(tab.columns[:7]) == ["topic", "hr", "ci_low", "ci_high", "coef", "se", "z"]


def test_survival_errors(rossi):
    s = rossi[["age"]]
    with pytest.raises(InputError, match="values for"):
        survival_association(s, rossi["week"][:10], rossi["arrest"])
    with pytest.raises(InputError, match="0 \\(censored\\) or 1"):
        survival_association(s, rossi["week"], rossi["arrest"] * 2)
    with pytest.raises(InputError, match="no event"):
        survival_association(s, rossi["week"], np.zeros(len(rossi)))
    with pytest.raises(InputError, match=">= 0"):
        survival_association(s, -rossi["week"], rossi["arrest"])
    with pytest.warns(UserWarning, match="left out"):
        t = rossi["week"].astype(float).copy()
        t.iloc[:5] = np.nan
        tab = survival_association(s, t, rossi["arrest"])
    assert tab["n_samples"].iloc[0] == len(rossi) - 5
    const = pd.DataFrame({"c": np.ones(len(rossi))})
    assert np.isnan(survival_association(const, rossi["week"], rossi["arrest"])["hr"].iloc[0])


def test_logrank_matches_lifelines(rossi):
    from lifelines.statistics import logrank_test

    res = logrank_split(rossi["age"], rossi["week"], rossi["arrest"])
    high = rossi["age"] > rossi["age"].median()
    ref = logrank_test(rossi["week"][high], rossi["week"][~high], rossi["arrest"][high], rossi["arrest"][~high])
    assert res["p"] == pytest.approx(ref.p_value)
    assert res["n_high"] + res["n_low"] == len(rossi)


def test_kaplan_meier_plot(rossi, tmp_path):
    from sctopic.plotting import kaplan_meier

    fig = kaplan_meier(rossi["prio"].to_numpy(), rossi["week"].to_numpy(), rossi["arrest"].to_numpy(),
                       topic="prio", path=tmp_path / "km.png")
    assert (tmp_path / "km.png").stat().st_size > 1000
    assert 0 < fig.logrank["p"] < 1


def _result_dir(tcga, tmp_path):
    genes = list(tcga.var_names[:400])
    beta = _topic_gene(genes, n_topics=3, seed=2)
    d = tmp_path / "fit"
    d.mkdir()
    result = ad.AnnData(X=np.zeros((2, len(genes)), np.float32), var=pd.DataFrame(index=genes))
    result.obsm["X_sce2tm"] = np.full((2, 3), 1 / 3, np.float32)
    result.uns["sctopic"] = {"model": "sce2tm"}
    result.uns["sce2tm"] = {"topic_gene": beta.to_numpy(np.float32), "genes": np.array(genes, dtype=object)}
    result.write_h5ad(d / "result.h5ad")
    return d


def test_cli_survival(tcga, tmp_path):
    from sctopic.cli import main

    d = _result_dir(tcga, tmp_path)
    bulk = shared_file("tcga_skcm_bulk_survival.h5ad")
    out = tmp_path / "table.tsv"
    rc = main(["survival", str(d), str(bulk), "--time-key", "time", "--event-key", "event", "--n-top", "30",
               "--covariates", "gender", "--out", str(out), "--plot", str(tmp_path / "km.png")])
    assert rc == 0
    tab = pd.read_csv(out, sep="\t")
    for col in ("topic", "hr", "ci_low", "ci_high", "p", "fdr", "top_genes", "n_genes_used"):
        assert col in tab.columns
    assert len(tab) == 3 and (tmp_path / "km.png").exists()
    assert main(["survival", str(d), str(bulk), "--time-key", "os_time", "--out", str(out)]) == 2
    assert main(["survival", str(d), str(bulk), "--event-key", "nope", "--out", str(out)]) == 2
    assert main(["survival", str(d), str(bulk), "--plot-topic", "topic_0", "--out", str(out)]) == 2


def test_na_text_in_categorical_covariate_is_missing(rossi):
    grp = np.where(rossi["race"] == 1, "b", "a").astype(object)
    grp[:7] = "NA"
    with pytest.warns(UserWarning, match="7 samples"):
        tab = survival_association(rossi[["age"]], rossi["week"], rossi["arrest"],
                                   covariates=pd.DataFrame({"group": grp}))
    assert tab["n_samples"].iloc[0] == len(rossi) - 7
    assert tab.attrs["covariates"] == ["cov_group_b"]


def test_covariates_and_outcomes_align_by_sample_name(rossi):
    # Labelled inputs in another row order must give the same Cox table as aligned ones
    # (covariates used to be paired with the scores by position).
    data = rossi.copy()
    data.index = [f"s{i}" for i in range(len(data))]
    scores, cov = data[["age", "prio"]], data[["fin", "race", "wexp", "mar", "paro"]]
    aligned = survival_association(scores, data["week"], data["arrest"], covariates=cov)
    order = np.random.default_rng(0).permutation(len(data))
    shuffled = survival_association(scores, data["week"].iloc[order], data["arrest"].iloc[order[::-1]],
                                    covariates=cov.iloc[order])
    pd.testing.assert_frame_equal(aligned, shuffled)
    with pytest.raises(InputError, match="no value for 1 of the 432 samples.*s5"):
        survival_association(scores, data["week"], data["arrest"], covariates=cov.drop(index="s5"))
    with pytest.raises(InputError, match="time has no value"):
        survival_association(scores, data["week"].rename(lambda i: "x" + i), data["arrest"])
