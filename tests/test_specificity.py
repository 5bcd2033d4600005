"""Topic specificity (fold enrichment of topic use per cell type) against a plain loop."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import sctopic
from sctopic.analysis import marker_topics, topic_specificity
from sctopic.errors import InputError


def _result(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    n, k = 300, 6
    labels = np.array(["A"] * 120 + ["B"] * 100 + ["C"] * 75 + ["tiny"] * 5, dtype=object)
    theta = rng.dirichlet(np.ones(k), n)
    theta[labels == "B", 2] += 2.0  # topic_2 marks B
    theta /= theta.sum(1, keepdims=True)
    a = ad.AnnData(np.zeros((n, 3), dtype=np.float32), obs=pd.DataFrame({"cell_type": labels},
                                                                          index=[f"c{i}" for i in range(n)]))
    a.obs.loc["c0", "cell_type"] = np.nan  # a missing label: left out of both sides
    a.obsm["X_scetm"] = theta
    a.uns["sctopic"] = {"model": "scetm"}
    return a


def test_fold_enrichment_matches_a_plain_loop():
    a = _result()
    tab = topic_specificity(a, "cell_type")
    theta, lab = a.obsm["X_scetm"], a.obs["cell_type"].to_numpy()
    keep = pd.notna(lab)
    assert list(tab.columns) == ["A", "B", "C"]  # "tiny" (5 cells) is under min_cells
    for g in tab.columns:
        for t in range(theta.shape[1]):
            inside = [theta[i, t] for i in range(len(lab)) if keep[i] and lab[i] == g]
            outside = [theta[i, t] for i in range(len(lab)) if keep[i] and lab[i] != g]
            assert tab.loc[f"topic_{t}", g] == pytest.approx(np.mean(inside) / np.mean(outside), rel=1e-10)
    markers = marker_topics(tab)
    assert markers.loc["B", "topic"] == "topic_2" and markers.loc["B", "fold"] > 3
    assert markers["fold"].is_monotonic_decreasing


def test_tl_form_stores_the_table_and_errors_are_clear():
    a = _result(1)
    tab = sctopic.tl.topic_specificity(a, "cell_type", min_cells=1)
    assert "tiny" in tab.columns and a.uns["topic_specificity"] is tab
    with pytest.raises(InputError, match="not in adata.obs"):
        topic_specificity(a, "celltype")
    with pytest.raises(InputError, match="at least 2 groups"):
        topic_specificity(a, "cell_type", min_cells=500)
