"""Clustering agreement of an embedding with known cell types.

Protocol (DESIGN section 3): one kNN graph on the embedding (k = 15 counting the cell
itself, UMAP-style fuzzy weights unless told otherwise), then Leiden or Louvain over a
resolution sweep.  Two readings are reported and named:

* ``*_oracle``: the best ARI over the sweep.  This uses the true labels to pick the
  resolution (the scE2TM paper's protocol) and is therefore optimistic.
* ``*_fixed`` / ``*_matched``: label-free choices, the fixed resolution (1.0 by default) and
  the resolution whose number of clusters is closest to ``n_clusters``.
"""
from __future__ import annotations

import time
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sctopic.metrics._labels import check_length, encode
from sctopic.metrics.community import cluster_graph, to_igraph
from sctopic.metrics.neighbors import neighbor_graph

#: the default resolution sweep, 0.1, 0.2, ..., 2.0
DEFAULT_RESOLUTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 21))


def ari(labels, clusters) -> float:
    """Adjusted Rand index (scikit-learn)."""
    return float(adjusted_rand_score(np.asarray(labels), np.asarray(clusters)))


def nmi(labels, clusters) -> float:
    """Normalised mutual information, arithmetic normalisation (scikit-learn's default)."""
    return float(normalized_mutual_info_score(np.asarray(labels), np.asarray(clusters)))


def cluster_sweep(
    embedding,
    labels=None,
    *,
    k: int = 15,
    resolutions: Sequence[float] | None = None,
    method: Literal["leiden", "louvain"] = "leiden",
    seed: int = 0,
    fixed_resolution: float = 1.0,
    n_clusters: int | None = None,
    graph: sp.spmatrix | None = None,
    weights: Literal["umap", "connectivity"] = "umap",
    exact: bool | None = None,
    n_iterations: int = 2,
    backend: Literal["igraph", "leidenalg"] = "igraph",
    return_clusters: bool = False,
) -> dict:
    """Cluster an embedding over a resolution sweep and score it against labels.

    Parameters
    ----------
    embedding
        Cells x dimensions (e.g. the cell-topic matrix theta).  Ignored when ``graph`` is given
        (pass ``None`` then).
    labels
        Known cell types, one per cell; ``None`` gives cluster counts only (ARI/NMI null).
        Cells with a missing label (NaN/None) are clustered but not scored.
    k
        Neighbourhood size, counting the cell itself (scanpy's ``n_neighbors`` convention).
    resolutions
        Resolutions to try; default 0.1, 0.2, ..., 2.0.
    method
        ``"leiden"`` or ``"louvain"`` (see :mod:`sctopic.metrics.community`).
    seed
        Seed for the approximate neighbour search and the community detection.
    fixed_resolution
        The label-free resolution reported as ``*_fixed`` (clustered separately when it is
        not in ``resolutions``).
    n_clusters
        When given, ``*_matched`` reports the resolution whose number of clusters is
        closest to it (ties: the smaller resolution).
    graph
        A precomputed symmetric weighted adjacency (cells x cells); skips the kNN step.
    weights
        Edge weights of the kNN graph: ``"umap"`` fuzzy memberships (default, as scanpy) or
        plain ``"connectivity"``.  See :func:`sctopic.metrics.neighbors.neighbor_graph`.
    exact
        Exact or approximate (pynndescent) neighbour search; default exact up to 50,000
        cells (see :data:`sctopic.data.neighbors.EXACT_MAX_CELLS`).
    n_iterations
        Leiden passes per resolution (default 2; negative: until no improvement).
    backend
        Leiden implementation, ``"igraph"`` (default, fast) or ``"leidenalg"``; both optimise
        modularity with resolution (see :mod:`sctopic.metrics.community`).
    return_clusters
        Also return the cluster labels at every resolution (key ``clusters``).

    Returns
    -------
    dict
        ``ari_oracle``, ``nmi_oracle``, ``resolution_oracle``, ``n_clusters_oracle``
        (best ARI over the sweep, chosen with the labels);
        ``ari_fixed``, ``nmi_fixed``, ``resolution_fixed``, ``n_clusters_fixed``;
        ``ari_matched``, ``nmi_matched``, ``resolution_matched``, ``n_clusters_matched``
        (``None`` without ``n_clusters``); ``table`` (list of dicts with ``resolution``,
        ``n_clusters``, ``ari``, ``nmi``); ``method``, ``k``, ``weights``, ``n_cells``;
        ``seconds`` (dict: ``graph``, ``clustering``, ``total``).
    """
    t0 = time.perf_counter()
    if graph is None:
        if embedding is None:
            raise ValueError("give an embedding or a graph")
        graph = neighbor_graph(embedding, k, weights=weights, exact=exact, seed=seed)
    graph = sp.csr_matrix(graph)
    n = graph.shape[0]
    codes = None
    labelled = slice(None)
    if labels is not None:
        check_length(n, (labels, "labels"))
        # cells without a label are clustered but left out of ARI/NMI
        known = ~pd.isna(pd.Series(np.asarray(labels, dtype=object))).to_numpy()
        labelled = known if not known.all() else slice(None)
        codes, _ = encode(np.asarray(labels, dtype=object)[known])
    t_graph = time.perf_counter() - t0

    res_list = [float(r) for r in (DEFAULT_RESOLUTIONS if resolutions is None else resolutions)]
    if not res_list:
        raise ValueError("resolutions is empty")
    todo = list(dict.fromkeys(res_list + [float(fixed_resolution)]))
    g = to_igraph(graph)
    clusters: dict[float, np.ndarray] = {}
    rows: dict[float, dict] = {}
    for r in todo:
        c = cluster_graph(
            g, r, method=method, seed=seed, n_iterations=n_iterations, backend=backend
        )
        clusters[r] = c
        rows[r] = {
            "resolution": r,
            "n_clusters": int(c.max() + 1) if c.size else 0,
            "ari": ari(codes, c[labelled]) if codes is not None else None,
            "nmi": nmi(codes, c[labelled]) if codes is not None else None,
        }
    t_clu = time.perf_counter() - t0 - t_graph

    table = [rows[r] for r in res_list]
    out: dict = {
        "method": method, "backend": backend if method == "leiden" else "igraph",
        "k": int(k), "weights": weights, "n_cells": int(n),
    }

    def _put(prefix: str, row: dict | None) -> None:
        out[f"ari_{prefix}"] = None if row is None else row["ari"]
        out[f"nmi_{prefix}"] = None if row is None else row["nmi"]
        out[f"resolution_{prefix}"] = None if row is None else row["resolution"]
        out[f"n_clusters_{prefix}"] = None if row is None else row["n_clusters"]

    # oracle: first resolution reaching the best ARI (labels required)
    _put("oracle", max(table, key=lambda row: row["ari"]) if codes is not None else None)
    _put("fixed", rows[float(fixed_resolution)])
    matched = None
    if n_clusters is not None:
        matched = min(table, key=lambda row: (abs(row["n_clusters"] - n_clusters), row["resolution"]))
    _put("matched", matched)
    out["table"] = table
    if return_clusters:
        out["clusters"] = {r: clusters[r] for r in res_list}
    out["seconds"] = {
        "graph": round(t_graph, 4),
        "clustering": round(t_clu, 4),
        "total": round(time.perf_counter() - t0, 4),
    }
    return out


def celltype_accuracy(labels, clusters) -> dict:
    """Per-cell-type accuracy after a one-to-one matching of clusters to cell types.

    Clusters are matched to cell types by the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) maximising the number of cells in matched
    pairs; each type gets at most one cluster and vice versa.  A cell counts as correct when
    its cluster is the one matched to its type.

    Returns
    -------
    dict
        ``overall`` (correct cells / all cells), ``per_type`` (type -> fraction of its
        cells in its matched cluster, 0 when no cluster is left for it), ``matching``
        (type -> matched cluster label or ``None``), ``balanced`` (mean of per-type values).
    """
    y, types = encode(labels, "labels")
    c, clus = encode(clusters, "clusters")
    if len(y) != len(c):
        raise ValueError(f"labels ({len(y)}) and clusters ({len(c)}) differ in length")
    table = np.bincount(y * len(clus) + c, minlength=len(types) * len(clus))
    table = table.reshape(len(types), len(clus))
    r, col = linear_sum_assignment(table, maximize=True)
    sizes = table.sum(axis=1)
    per_type = {str(t): 0.0 for t in types}
    matching: dict[str, object] = {str(t): None for t in types}
    for ti, ci in zip(r, col):
        per_type[str(types[ti])] = float(table[ti, ci] / sizes[ti])
        cl = clus[ci]
        matching[str(types[ti])] = cl.item() if hasattr(cl, "item") else cl
    overall = float(table[r, col].sum() / max(len(y), 1))
    return {
        "overall": overall,
        "balanced": float(np.mean(list(per_type.values()))),
        "per_type": per_type,
        "matching": matching,
    }
