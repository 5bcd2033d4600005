"""Preranked GSEA: exact enrichment scores, permutation null, reproducibility, gseapy agreement."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import kstest, spearmanr

from conftest import shared_file
from sctopic.genesets import GeneSetLibrary, enrichment_scores, gsea, load
from sctopic.genesets.prerank import _compare_to_null, _null_scores, size_grid_points


def slow_running_sum(values, members, weight=1.0):
    """Plain GSEA running sum over the whole ranking (Subramanian 2005).

    Returns (ES, running sum, ranked gene indices)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    order = np.argsort(-values, kind="stable")  # ties: input order
    members = set(int(m) for m in members)
    hits = [int(g) in members for g in order]
    w = [abs(values[g]) ** weight for g in order]
    n_r = sum(wi for wi, h in zip(w, hits) if h)
    if n_r == 0:  # all members weigh 0: equal weights
        w, n_r = [1.0] * n, float(len(members))
    miss = 1.0 / (n - len(members))
    rs, run = [], 0.0
    for wi, h in zip(w, hits):
        run += wi / n_r if h else -miss
        rs.append(run)
    top, bottom = max(rs), min(rs)
    return (top if abs(top) > abs(bottom) else bottom), np.array(rs), order


def _assert_es_equal(fast, values, sets, weight=1.0):
    for j, members in enumerate(sets):
        es, rs, _ = slow_running_sum(values, members, weight)
        if abs(rs.max() + rs.min()) < 1e-9:  # exact tie between peak and trough: sign is a convention
            assert abs(fast[j]) == pytest.approx(abs(es), abs=1e-12)
        else:
            assert fast[j] == pytest.approx(es, abs=1e-12)


@pytest.mark.parametrize("kind", ["continuous", "ties", "zeros", "signed"])
def test_es_equals_plain_running_sum(kind):
    rng = np.random.default_rng(hash(kind) % 2**32)
    n = 80
    if kind == "continuous":
        values = rng.gamma(0.7, 1.0, size=(3, n))
    elif kind == "ties":
        values = rng.integers(1, 5, size=(3, n)).astype(float)
    elif kind == "zeros":
        values = rng.gamma(0.7, 1.0, size=(3, n)) * (rng.uniform(size=(3, n)) < 0.4)
    else:
        values = rng.normal(size=(3, n))
    sets = [rng.choice(n, s, replace=False) for s in [1, 2, 5, 5, 17, 40, 79]]
    sets.append(np.flatnonzero(values[0] == 0)[:6] if kind == "zeros" else np.arange(10))
    for weight in (1.0, 0.0, 2.0):
        fast = enrichment_scores(values, sets, weight=weight)
        for k in range(values.shape[0]):
            _assert_es_equal(fast[k], values[k], sets, weight)


def test_es_extremes():
    values = np.linspace(2.0, 1.0, 50)  # ranking = input order, all weights positive
    top, bottom, single_top = np.arange(8), np.arange(42, 50), [0]
    es = enrichment_scores(values, [top, bottom, single_top, np.arange(49)])[0]
    assert es[0] == pytest.approx(1.0, abs=1e-15)
    assert es[1] == pytest.approx(-1.0, abs=1e-15)
    assert es[2] == pytest.approx(1.0, abs=1e-15)
    assert es[3] == pytest.approx(slow_running_sum(values, np.arange(49))[0], abs=1e-12)
    with pytest.raises(ValueError):
        enrichment_scores(values, [np.arange(50)])


def _toy_library(n_genes=400, n_sets=60, seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    sets = {f"S{j}": rng.choice(genes, rng.integers(5, 45), replace=False).tolist() for j in range(n_sets)}
    return genes, GeneSetLibrary.from_dict(sets, name="toy"), sets


def test_gsea_es_column_and_leading_edge():
    genes, lib, sets = _toy_library()
    rng = np.random.default_rng(1)
    tg = rng.gamma(0.5, 1.0, size=(3, len(genes)))
    df = gsea(tg, genes, lib, permutations=0, leading_edge=True)
    assert df["p"].isna().all() and df["statistic"].isna().all()
    index = {g: i for i, g in enumerate(genes)}
    for _, row in df.iterrows():
        members = [index[g] for g in sets[row["set"]]]
        es, rs, order = slow_running_sum(tg[row["topic"]], members)
        assert row["es"] == pytest.approx(es, abs=1e-12)
        assert row["set_size"] == len(members)
        # leading edge: members up to the peak (ES > 0) or from the trough on (ES < 0)
        ranked_members = [genes[g] for g in order if index[genes[g]] in set(members)]
        pos_of = {genes[g]: i for i, g in enumerate(order)}
        if es > 0:
            expected = [g for g in ranked_members if pos_of[g] <= int(np.argmax(rs))]
        else:
            expected = [g for g in ranked_members if pos_of[g] > int(np.argmin(rs))]
        assert row["leading_edge"].split(",") == expected


def test_null_scores_equal_es_of_the_drawn_sets():
    genes, _, _ = _toy_library()
    rng = np.random.default_rng(2)
    tg = rng.gamma(0.5, 1.0, size=(4, len(genes)))
    order = np.argsort(-tg, axis=1, kind="stable")
    ranked = np.take_along_axis(tg, order, axis=1)
    s, n_perm = 12, 30
    pos = np.sort(np.stack([rng.choice(len(genes), s, replace=False) for _ in range(n_perm)]), axis=1)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        null = _null_scores(np.ascontiguousarray(ranked.T, dtype=dtype), pos.T.copy(), None, 500)
        for k in range(tg.shape[0]):
            expected = enrichment_scores(tg[k], [order[k, p] for p in pos])[0]
            np.testing.assert_allclose(null[k], expected, atol=tol)


def test_null_comparison_formula():
    rng = np.random.default_rng(3)
    null = rng.normal(size=(2, 101))
    obs = np.array([[0.5, -0.5, 0.0, 10.0], [-10.0, 1.0, -1.0, 0.2]])
    p, mpos, mneg = _compare_to_null(null, obs)
    for k in range(2):
        pos, neg = null[k][null[k] >= 0], null[k][null[k] < 0]
        assert mpos[k] == pytest.approx(pos.mean()) and mneg[k] == pytest.approx(neg.mean())
        for j, e in enumerate(obs[k]):
            if e >= 0:
                expected = ((pos >= e).sum() + 1) / (len(pos) + 1)
            else:
                expected = ((neg <= e).sum() + 1) / (len(neg) + 1)
            assert p[k, j] == pytest.approx(expected)


def test_gsea_null_is_calibrated_and_detects_planted_set():
    genes, lib, sets = _toy_library(n_genes=600, n_sets=150, seed=4)
    rng = np.random.default_rng(5)
    tg = rng.gamma(0.5, 1.0, size=(2, len(genes)))
    planted = [genes.index(g) for g in sets["S0"]]
    tg[1, planted] += 50.0  # topic 1 puts S0 at the top
    df = gsea(tg, genes, lib, permutations=400, seed=0)
    # topic 0 has no signal: nominal p-values of the (random) sets look uniform
    p0 = df.loc[df.topic == 0, "p"].to_numpy()
    assert kstest(p0, "uniform").pvalue > 1e-3
    assert df.loc[df.topic == 0, "fdr"].min() > 0.05
    best = df[df.topic == 1].iloc[0]
    assert best["set"] == "S0" and best["es"] == pytest.approx(1.0)
    # the smallest attainable p: no random set of the null reaches ES = 1
    assert best["p"] == df.loc[df.topic == 1, "p"].min() < 0.005 and best["statistic"] > 1
    # NES keeps the sign of ES (NaN only where the null has no score of that sign)
    has = df["statistic"].notna()
    assert has.mean() > 0.9
    assert (np.sign(df.loc[has, "statistic"]) == np.sign(df.loc[has, "es"])).all()
    assert ((df["p"] > 0) & (df["p"] <= 1)).all()


def test_gsea_reproducible_and_independent_of_chunking():
    genes, lib, _ = _toy_library(seed=6)
    tg = np.random.default_rng(7).gamma(0.5, 1.0, size=(5, len(genes)))
    a = gsea(tg, genes, lib, permutations=200, seed=11)
    b = gsea(tg, genes, lib, permutations=200, seed=11, n_jobs=2, chunk_elements=3000)
    pd.testing.assert_frame_equal(a, b)
    c = gsea(tg, genes, lib, permutations=200, seed=12)
    assert not np.allclose(a["p"], c.set_index(["topic", "set"]).loc[list(zip(a.topic, a["set"])), "p"])


def test_gsea_size_grid_approximation():
    genes, lib, _ = _toy_library(n_genes=500, n_sets=120, seed=8)
    tg = np.random.default_rng(9).gamma(0.5, 1.0, size=(3, len(genes)))
    exact = gsea(tg, genes, lib, permutations=300, seed=1).set_index(["topic", "set"]).sort_index()
    approx = gsea(tg, genes, lib, permutations=300, seed=1, size_grid=1.25)
    approx = approx.set_index(["topic", "set"]).sort_index()
    grid = size_grid_points(exact["set_size"].to_numpy(), 1.25)
    assert len(grid) < len(np.unique(exact["set_size"]))
    on_grid = exact["set_size"].isin(grid)
    pd.testing.assert_series_equal(exact.loc[on_grid, "p"], approx.loc[on_grid, "p"])
    np.testing.assert_allclose(exact["es"], approx["es"])
    assert spearmanr(exact["p"], approx["p"])[0] > 0.95
    # NES is NaN where the null has no score of the observed sign (both modes alike)
    pd.testing.assert_series_equal(exact["statistic"].isna(), approx["statistic"].isna())
    assert spearmanr(exact["statistic"], approx["statistic"], nan_policy="omit")[0] > 0.98


def test_gsea_drops_sets_holding_every_gene():
    genes = [f"g{i}" for i in range(8)]
    lib = GeneSetLibrary.from_dict({"all": genes, "some": genes[:4]})
    df = gsea(np.arange(8.0)[None, ::-1] + 1, genes, lib, permutations=20, min_size=2, max_size=10)
    assert list(df["set"]) == ["some"] and df["es"].iat[0] == pytest.approx(1.0)


def test_gsea_agrees_with_gseapy_prerank():
    gseapy = pytest.importorskip("gseapy")
    import scanpy as sc

    adata = ad.read_h5ad(shared_file("pbmc3k_seurat_labels.h5ad"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    mono = (adata.obs["cell_type"] == "CD14+ Mono").to_numpy()
    score = np.asarray(adata.X[mono].mean(0)).ravel() - np.asarray(adata.X[~mono].mean(0)).ravel()
    genes = list(map(str, adata.var_names))
    lib = load("hallmark")

    ours = gsea(score, genes, lib, permutations=1000, seed=0).set_index("set")
    rnk = pd.Series(score, index=genes).sort_values(ascending=False)
    ref = gseapy.prerank(
        rnk=rnk, gene_sets=lib.to_dict(), permutation_num=200, seed=1, min_size=5,
        max_size=500, outdir=None, threads=1, verbose=False,
    ).res2d.set_index("Term")
    both = ours.join(ref, how="inner")
    assert len(both) == 50
    np.testing.assert_allclose(both["es"], both["ES"].astype(float), atol=1e-9)
    assert spearmanr(both["statistic"], both["NES"].astype(float))[0] >= 0.95
    assert spearmanr(both["fdr"], both["FDR q-val"].astype(float))[0] >= 0.95
    assert spearmanr(both["fdr_nes"], both["FDR q-val"].astype(float))[0] >= 0.95
    assert spearmanr(both["p"], both["NOM p-val"].astype(float))[0] >= 0.95


def _brute_force_nes_fdr(tg, genes, lib, permutations, seed):
    """GSEA FDR from an explicit pooled null: every set contributes the null of its size."""
    m = lib.match(genes)
    sizes = m.sizes
    n = len(genes)
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.choice(n, sizes.max(), replace=False) for _ in range(permutations)])
    order = np.argsort(-tg, axis=1, kind="stable")
    out = []
    for k in range(tg.shape[0]):
        obs = enrichment_scores(tg[k], [m.incidence[i].indices for i in range(len(sizes))])[0]
        null_nes, obs_nes = [], np.empty_like(obs)
        for s in np.unique(sizes):
            null = enrichment_scores(tg[k], [order[k, np.sort(d[:s])] for d in draws])[0]
            pos_mean, neg_mean = null[null >= 0].mean(), -null[null < 0].mean()
            nn = np.where(null >= 0, null / pos_mean, null / neg_mean)
            null_nes += [nn] * int((sizes == s).sum())
            here = sizes == s
            obs_nes[here] = np.where(obs[here] >= 0, obs[here] / pos_mean, obs[here] / neg_mean)
        pool = np.concatenate(null_nes)
        fdr = np.empty_like(obs)
        for j, e in enumerate(obs_nes):
            if e >= 0:
                num = (pool >= e).sum() / (pool >= 0).sum()
                den = (obs_nes >= e).sum() / (obs_nes >= 0).sum()
            else:
                num = (pool <= e).sum() / (pool < 0).sum()
                den = (obs_nes <= e).sum() / (obs_nes < 0).sum()
            fdr[j] = min(1.0, num / den)
        out.append(pd.DataFrame({"topic": k, "set": m.set_names, "fdr_nes": fdr, "nes": obs_nes}))
    return pd.concat(out).set_index(["topic", "set"]).sort_index()


def test_gsea_pooled_nes_fdr_matches_brute_force():
    genes, lib, sets = _toy_library(n_genes=300, n_sets=40, seed=10)
    rng = np.random.default_rng(11)
    tg = rng.normal(size=(2, len(genes)))  # signed scores: both tails populated
    tg[0, [genes.index(g) for g in sets["S1"]]] += 3.0
    ref = _brute_force_nes_fdr(tg, genes, lib, permutations=150, seed=4)
    got = gsea(tg, genes, lib, permutations=150, seed=4).set_index(["topic", "set"]).sort_index()
    np.testing.assert_allclose(got["statistic"], ref["nes"], rtol=1e-4)
    np.testing.assert_allclose(got["fdr_nes"], ref["fdr_nes"], atol=0.02)
    assert spearmanr(got["fdr_nes"], ref["fdr_nes"])[0] > 0.99
    assert got.loc[(0, "S1"), "fdr_nes"] < 0.05
