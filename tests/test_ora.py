"""Over-representation analysis and Benjamini-Hochberg."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import hypergeom

from sctopic.errors import InputError
from sctopic.genesets import GeneSetLibrary, bh_fdr, ora


def _random_case(seed: int, n_genes=300, n_lib_genes=220, n_sets=40, n_topics=4):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    universe = rng.choice(genes, n_lib_genes, replace=False).tolist() + ["absent1", "absent2"]
    sets = {
        f"S{j}": rng.choice(universe, rng.integers(3, 60), replace=False).tolist()
        for j in range(n_sets)
    }
    lib = GeneSetLibrary.from_dict(sets, name="rand")
    tg = rng.gamma(0.5, 1.0, size=(n_topics, n_genes))
    return genes, lib, tg, sets


def _plain_bh(p):
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p)
    q = np.empty(m)
    prev = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        prev = min(prev, p[i] * m / rank)
        q[i] = prev
    return q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ora_matches_pairwise_hypergeometric(seed):
    genes, lib, tg, sets = _random_case(seed)
    top_n = 15
    df = ora(tg, genes, lib, top_n=top_n, min_size=5, max_size=50)
    gene_set = set(genes)
    in_lib = {g for v in sets.values() for g in v} & gene_set
    background = [g for g in genes if g in in_lib]
    assert df.attrs["background"] == len(background)
    kept = {k: set(v) & gene_set for k, v in sets.items() if 5 <= len(set(v) & gene_set) <= 50}
    assert len(df) == tg.shape[0] * len(kept)
    bg_idx = np.array([genes.index(g) for g in background])
    for k in range(tg.shape[0]):
        order = np.argsort(-tg[k, bg_idx], kind="stable")[:top_n]
        top = [background[i] for i in order]
        rows = df[df.topic == k].set_index("set")
        for name, members in kept.items():
            x = len(set(top) & members)
            expected = hypergeom.sf(x - 1, len(background), len(members), top_n)
            row = rows.loc[name]
            assert row["statistic"] == x
            assert row["set_size"] == len(members)
            assert row["p"] == pytest.approx(expected, rel=1e-12, abs=1e-300)
            assert row["genes"] == ",".join(g for g in top if g in members)
        np.testing.assert_allclose(rows["fdr"], _plain_bh(rows["p"]), rtol=1e-12)
    assert (df["method"] == "ora").all()
    # sorted by topic, then p
    assert (df.groupby("topic")["p"].apply(lambda s: s.is_monotonic_increasing)).all()


def test_ora_planted_signal_and_background():
    genes = [f"g{i}" for i in range(200)]
    sets = {f"S{j}": genes[10 * j : 10 * j + 10] for j in range(15)}  # g150..g199 in no set
    lib = GeneSetLibrary.from_dict(sets)
    tg = np.full((2, 200), 0.001)
    tg[:, 150:] = 10.0  # highest weights on genes absent from the library: must be ignored
    tg[0, 30:40] = 1.0  # topic 0's top library genes are exactly S3
    tg[1, [0, 15, 25, 35, 45, 55, 65, 75, 85, 95]] = 1.0  # spread over S0..S9
    df = ora(tg, genes, lib, top_n=10)
    t0 = df[df.topic == 0]
    assert t0.iloc[0]["set"] == "S3" and t0.iloc[0]["statistic"] == 10
    assert t0.iloc[0]["p"] == pytest.approx(hypergeom(150, 10, 10).pmf(10), rel=1e-9)
    assert t0.iloc[0]["fdr"] < 1e-10
    assert (t0.iloc[1:]["statistic"] == 0).all() and (t0.iloc[1:]["p"] == 1).all()
    assert df.attrs["background"] == 150
    t1 = df[df.topic == 1]
    assert (t1["fdr"] > 0.5).all()


def test_ora_input_errors():
    genes = [f"g{i}" for i in range(50)]
    lib = GeneSetLibrary.from_dict({"S": genes[:10], "T": genes[10:20]})
    tg = np.ones((2, 50))
    with pytest.raises(InputError, match="top_n"):
        ora(tg, genes, lib, top_n=21)
    with pytest.raises(InputError, match="columns"):
        ora(tg[:, :40], genes, lib)
    bad = tg.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ora(bad, genes, lib)
    m = lib.match(genes, min_size=5)
    with pytest.raises(InputError, match="different gene list"):
        ora(tg[:, :49], genes[:49], m)
    # a 1-D topic is one topic; with_genes=False drops the column
    df = ora(tg[0], genes, m, with_genes=False)
    assert set(df.topic) == {0} and "genes" not in df.columns


def test_bh_matches_plain_and_statsmodels():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(5, 200)) ** 3
    p[:, :3] = p[:, [0]]  # ties
    q = bh_fdr(p, axis=1)
    for row, qrow in zip(p, q):
        np.testing.assert_allclose(qrow, _plain_bh(row), rtol=1e-12)
    np.testing.assert_allclose(bh_fdr(p.T, axis=0), q.T)
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    for row, qrow in zip(p, q):
        np.testing.assert_allclose(qrow, multitest.multipletests(row, method="fdr_bh")[1], rtol=1e-12)


def test_bh_nan_and_edge_cases():
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    q = bh_fdr(p)
    assert np.isnan(q[[1, 4]]).all()
    np.testing.assert_allclose(q[[0, 2, 3]], _plain_bh([0.01, 0.04, 0.03]))
    assert np.isnan(bh_fdr([np.nan, np.nan])).all()
    assert bh_fdr([1.0, 1.0]).tolist() == [1.0, 1.0]
    assert bh_fdr(np.zeros((2, 0))).shape == (2, 0)
