"""Interpretability metrics on hand-made cases whose answers are worked out below."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sctopic.metrics import (
    enrichment_summary,
    interpretability_purity,
    npmi_per_topic,
    top_gene_indices,
    top_genes,
    topic_coherence,
    topic_diversity,
    topic_diversity_exclusive,
    topic_quality,
)

GENES = ["g0", "g1", "g2", "g3", "g4", "g5"]
# top-3 lists: A = {g0, g1, g2}, B = {g2, g3, g4}, C = {g3, g4, g5}
BETA = np.array(
    [
        [5.0, 4.0, 3.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 2.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 3.0, 2.0, 1.0],
    ]
)
# 4 gene sets (documents); g5 is in none of them
SETS = [{"g0", "g1", "g2"}, {"g0", "g1"}, {"g2", "g3"}, {"g4"}]
INCIDENCE = sp.csr_matrix([[g in s for g in GENES] for s in SETS], dtype=float)


def test_top_gene_indices_order_and_ties():
    top = top_gene_indices(BETA, 3)
    np.testing.assert_array_equal(top, [[0, 1, 2], [2, 3, 4], [3, 4, 5]])
    # ties across the cut-off are broken by gene index, deterministically
    tied = np.array([[1.0, 2.0, 2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(top_gene_indices(tied, 2), [[1, 2]])
    assert top_genes(BETA, GENES, 2) == [["g0", "g1"], ["g2", "g3"], ["g3", "g4"]]
    with pytest.raises(ValueError):
        top_gene_indices(BETA, 7)


def test_topic_diversity_both_definitions():
    # 6 distinct genes among 3 x 3 = 9 slots; g0, g1, g5 occur in exactly one list
    assert topic_diversity(BETA, 3) == pytest.approx(6 / 9)
    assert topic_diversity_exclusive(BETA, 3) == pytest.approx(3 / 9)
    same = np.tile(BETA[:1], (4, 1))
    assert topic_diversity(same, 3) == pytest.approx(1 / 4)
    assert topic_diversity_exclusive(same, 3) == 0.0


def npmi(p_ij, p_i, p_j):
    return math.log(p_ij / (p_i * p_j)) / -math.log(p_ij)


def test_topic_coherence_by_hand():
    # D = 4 sets; p(g0) = p(g1) = p(g2) = 2/4, p(g3) = p(g4) = 1/4, g5 absent.
    a = [npmi(2 / 4, 2 / 4, 2 / 4), npmi(1 / 4, 2 / 4, 2 / 4), npmi(1 / 4, 2 / 4, 2 / 4)]
    assert a == pytest.approx([1.0, 0.0, 0.0])
    b_23 = npmi(1 / 4, 2 / 4, 1 / 4)
    assert b_23 == pytest.approx(0.5)
    # default: never co-occurring pairs and pairs with an absent gene score 0
    per_topic = npmi_per_topic(BETA, GENES, INCIDENCE, 3)
    np.testing.assert_allclose(per_topic, [1 / 3, 0.5 / 3, 0.0])
    assert topic_coherence(BETA, GENES, INCIDENCE, 3) == pytest.approx(1 / 6)
    # limit convention: never co-occurring pairs score -1 (absent-gene pairs stay 0)
    tc = topic_coherence(BETA, GENES, INCIDENCE, 3, zero_convention=-1)
    assert tc == pytest.approx((1 / 3 + (0.5 - 1 - 1) / 3 + (-1 + 0 + 0) / 3) / 3)
    # skipping absent genes: topic C keeps only its (g3, g4) pair
    tc = topic_coherence(BETA, GENES, INCIDENCE, 3, zero_convention=-1, absent="skip")
    assert tc == pytest.approx((1 / 3 - 0.5 - 1) / 3)


def test_topic_coherence_perfect_pair_and_library_object():
    from sctopic.genesets import GeneSetLibrary

    genes = [f"G{i}" for i in range(12)]
    sets = {
        "s1": genes[0:6], "s2": genes[0:6], "s3": genes[6:12], "s4": genes[3:9],
    }
    lib = GeneSetLibrary.from_dict(sets, name="toy")
    inc = sp.csr_matrix([[g in v for g in genes] for v in sets.values()], dtype=float)
    beta = np.zeros((2, 12))
    beta[0, [0, 1, 2]] = [3, 2, 1]
    beta[1, [6, 7, 0]] = [3, 2, 1]
    via_obj = topic_coherence(beta, genes, lib, 3)
    via_mat = topic_coherence(beta, genes, inc, 3)
    assert via_obj == pytest.approx(via_mat)
    # topic 0: genes 0,1,2 each in s1, s2 only -> p = 1/2, p_ij = 1/2 -> NPMI 1 for all pairs
    assert npmi_per_topic(beta, genes, inc, 3)[0] == pytest.approx(1.0)
    # a pair in every document is perfectly associated (NPMI limit 1, not 0/0)
    everywhere = sp.csr_matrix(np.ones((3, 12)))
    assert topic_coherence(beta, genes, everywhere, 3) == pytest.approx(1.0)


def test_topic_quality_and_purity():
    assert topic_quality(0.2, 0.5) == pytest.approx(0.1)
    theta = np.array(
        [[0.9, 0.1, 0], [0.8, 0.2, 0], [0.6, 0.4, 0], [0.1, 0.9, 0], [0, 0.7, 0.3], [0, 0.1, 0.9]]
    )
    labels = ["a", "a", "b", "b", "b", "c"]
    # topic 0 holds a, a, b (2), topic 1 holds b, b (2), topic 2 holds c (1)
    assert interpretability_purity(theta, labels) == pytest.approx(5 / 6)
    assert interpretability_purity(theta, ["x"] * 6) == 1.0


def test_enrichment_summary_ora_and_gsea():
    ora = pd.DataFrame(
        {
            "topic": [0, 0, 0, 1, 1, 2],
            "set": ["A", "B", "C", "A", "D", "E"],
            "method": "ora",
            "statistic": [3, 2, 1, 3, 2, 1],
            "fdr": [0.001, 0.02, 0.2, 0.004, 0.009, 0.049],
        }
    )
    # P_O = (0,A), (0,B), (1,A), (1,D), (2,E) -> N = 4 distinct sets, U = 4/5, Q = 16/5
    s = enrichment_summary(ora)
    assert s == {"n": 4, "u": pytest.approx(0.8), "q": pytest.approx(3.2), "pairs": 5, "fdr_column": "fdr"}
    # the reference notebook's stricter threshold
    s = enrichment_summary(ora, fdr=0.01)
    assert (s["n"], s["pairs"]) == (2, 3)
    assert s["u"] == pytest.approx(2 / 3)
    gsea = ora.assign(method="gsea", statistic=[2.1, -1.9, 1.0, 1.5, 1.7, -2.0], es=0.5)
    # only positive NES count: (0,A), (1,A), (1,D) -> N = 2, U = 2/3
    s = enrichment_summary(gsea)
    assert (s["n"], s["pairs"]) == (2, 3)
    assert s["q"] == pytest.approx(2 * 2 / 3)
    # With GSEA's own NES-based FDR present, it is the one thresholded (as gseapy's q-value).
    s = enrichment_summary(gsea.assign(fdr_nes=[0.001, 0.001, 0.001, 0.3, 0.001, 0.001]))
    # positive NES and fdr_nes < 0.05: (0,A), (0,C), (1,D)
    assert s["fdr_column"] == "fdr_nes" and (s["n"], s["pairs"]) == (3, 3)
    empty = enrichment_summary(ora.iloc[:0])
    assert empty == {"n": 0, "u": 0.0, "q": 0.0, "pairs": 0, "fdr_column": "fdr"}


def test_topic_coherence_document_count():
    from sctopic.genesets import GeneSetLibrary

    genes = [f"G{i}" for i in range(12)]
    sets = {
        "s1": genes[0:6], "s2": genes[0:6], "s3": genes[6:12], "s4": genes[3:9],
        "s5": ["X1", "X2", "X3", "X4", "X5"],  # no dataset gene: not a matched document
    }
    lib = GeneSetLibrary.from_dict(sets, name="toy")
    beta = np.zeros((1, 12))
    beta[0, [3, 6]] = [2, 1]
    # G3 in s1, s2, s4; G6 in s3, s4; together in s4 only
    matched = topic_coherence(beta, genes, lib, 2)
    assert matched == pytest.approx(npmi(1 / 4, 3 / 4, 2 / 4))
    everything = topic_coherence(beta, genes, lib, 2, documents="all")
    assert everything == pytest.approx(npmi(1 / 5, 3 / 5, 2 / 5))
    with pytest.raises(ValueError):
        topic_coherence(beta, genes, lib.match(genes), 2, documents="all")
