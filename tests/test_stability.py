"""Choosing K: Hungarian matching of topics, the stability summary, the suggestion, the CLI."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from sctopic.analysis import (
    cosine_similarity_matrix,
    match_topics,
    stability_from_fits,
    suggest_k,
    topic_stability,
)
from sctopic.errors import InputError


def _brute_force(a, b, center=False):
    sim = cosine_similarity_matrix(a, b, center=center)
    k = sim.shape[0]
    best = max(itertools.permutations(range(k)), key=lambda p: sim[np.arange(k), list(p)].sum())
    return np.array(best), sim[np.arange(k), list(best)]


def test_permuted_copy_has_similarity_one_and_recovers_permutation():
    rng = np.random.default_rng(0)
    a = rng.gamma(0.3, size=(8, 50))
    perm = rng.permutation(8)
    b = a[perm] * 3.0  # cosine ignores scale
    match, sim = match_topics(a, b)
    np.testing.assert_allclose(sim, 1.0, atol=1e-12)
    # topic i of a is row j of b with perm[j] == i
    np.testing.assert_array_equal(perm[match], np.arange(8))


def test_centering_makes_logit_offsets_irrelevant():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 40))
    b = a[::-1] + rng.normal(size=(5, 1)) * 10  # per-topic offsets on the logit scale
    match, sim = match_topics(a, b, center=True)
    np.testing.assert_array_equal(match, np.arange(5)[::-1])
    np.testing.assert_allclose(sim, 1.0, atol=1e-10)
    _, raw = match_topics(a, b, center=False)
    assert raw.mean() < 0.99


@pytest.mark.parametrize("seed", range(6))
def test_matching_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 5 + seed % 2
    a = rng.normal(size=(k, 12))
    b = rng.normal(size=(k, 12))
    match, sim = match_topics(a, b)
    best, best_sim = _brute_force(a, b)
    assert sim.sum() == pytest.approx(best_sim.sum(), abs=1e-12)
    assert sorted(match) == list(range(k))


def test_cosine_matrix_values_and_errors():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    s = cosine_similarity_matrix(a, a)
    assert s[0, 1] == pytest.approx(1 / np.sqrt(2))
    assert s[2, 2] == 0.0  # zero row: similarity 0, not NaN
    with pytest.raises(InputError, match="same genes"):
        cosine_similarity_matrix(a, np.ones((3, 3)))
    with pytest.raises(InputError, match="NaN"):
        cosine_similarity_matrix(a, np.full((2, 2), np.nan))
    with pytest.raises(InputError, match="same number of topics"):
        match_topics(a, a[:2])


def _fits(noise: dict[int, float], seeds=(0, 1, 2), v=60):
    rng = np.random.default_rng(0)
    fits = {}
    for k, sd in noise.items():
        base = rng.gamma(0.5, size=(k, v))
        for s in seeds:
            fits[(k, s)] = np.abs(base[rng.permutation(k)] + rng.normal(scale=sd, size=(k, v)))
    return fits


def test_stability_ranks_noisier_k_lower_and_suggests():
    fits = _fits({3: 0.01, 5: 0.02, 8: 2.0})
    res = stability_from_fits(fits, tolerance=0.05)
    t = res.table.set_index("k")
    assert list(t.index) == [3, 5, 8]
    assert t.loc[3, "stability_mean"] > 0.99 and t.loc[8, "stability_mean"] < 0.9
    assert (t["n_pairs"] == 3).all() and len(res.pairs) == 9
    # K=5 is within 0.05 of the best and larger than K=3; K=8 is not
    assert res.suggested_k == 5
    assert "K=5" in res.reason and "0.05" in res.reason
    d = res.to_dict()
    assert d["suggested_k"] == 5 and len(d["table"]) == 3 and d["reproducible"] is True
    json.dumps(d)  # plain types


def test_no_reproducible_k_warns_and_says_so():
    # Independent random topics for every seed: nothing matches across seeds.
    rng = np.random.default_rng(1)
    fits = {(k, s): rng.gamma(0.5, size=(k, 60)) for k in (4, 6) for s in (0, 1, 2)}
    with pytest.warns(UserWarning, match="No K gives reproducible topics"):
        res = stability_from_fits(fits, min_similarity=0.9)
    assert not res.reproducible and "Warning: no K gives reproducible topics" in res.reason
    assert res.to_dict()["reproducible"] is False


def test_suggest_rules():
    table = pd.DataFrame({"k": [10, 20, 50], "stability_mean": [0.9, 0.88, 0.6], "td_mean": [0.5, 0.9, 1.0]})
    assert suggest_k(table, "tolerance", 0.05)[0] == 20
    assert suggest_k(table, "tolerance", 0.0)[0] == 10
    assert suggest_k(table, "tolerance", 0.5)[0] == 50
    k, reason = suggest_k(table, "product")
    assert k == 20 and "0.792" in reason
    with pytest.raises(InputError, match="rule"):
        suggest_k(table, "best")


@pytest.mark.parametrize(
    "ks, seeds, match",
    [([1, 5], (0, 1), "at least 2 topics"), ([5], (0, 1), "two values of K"), ([5, 10], (0,), "two different seeds"),
     ([5, 10], (3, 3), "two different seeds")],
)
def test_bad_input_errors_before_training(small_adata, ks, seeds, match):
    with pytest.raises(InputError, match=match):
        topic_stability(small_adata, ks, seeds=seeds)


def test_bad_model_and_labels(small_adata):
    with pytest.raises(InputError, match="model"):
        topic_stability(small_adata, [2, 3], model="lda")
    with pytest.raises(InputError, match="nope"):
        topic_stability(small_adata, [2, 3], labels="nope")


def test_topic_stability_end_to_end_small(small_adata):
    res = topic_stability(small_adata, [2, 3], seeds=(0, 1), model="scetm",
                          train_kwargs={"max_epochs": 3, "device": "cpu"}, labels="bulk_labels")
    assert list(res.table["k"]) == [2, 3]
    assert res.table["stability_mean"].between(-1, 1).all()
    assert res.table["ari_mean"].notna().all() and res.table["tc_mean"].isna().all()
    assert res.suggested_k in (2, 3)
    assert res.settings["center"] is True  # scETM: logit-scale topic-gene matrix


def test_cli_select_k(tmp_path, pbmc_small):
    from sctopic.cli import main

    data = tmp_path / "d.h5ad"
    pbmc_small[:200].copy().write_h5ad(data)
    out = tmp_path / "sk"
    rc = main(["-q", "select-k", str(data), "--ks", "2", "3", "--seeds", "0", "1", "--max-epochs", "2",
               "--n-hvg", "0", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    js = json.loads((out / "stability.json").read_text())
    assert js["suggested_k"] in (2, 3) and js["reason"]
    tsv = pd.read_csv(out / "stability.tsv", sep="\t")
    assert list(tsv["k"]) == [2, 3]
    assert (out / "stability.png").stat().st_size > 5000
    assert main(["select-k", str(data), "--ks", "2", "3", "--seeds", "0", "--out", str(out)]) == 2
