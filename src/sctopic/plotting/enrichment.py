"""Enrichment figures: the GSEA running-sum plot of one topic and gene set, and the Manhattan
plot of every (topic, gene set) test.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.plotting.figure import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.figure import Figure


def running_sum(weights: np.ndarray, genes: Sequence[str], gene_set, weight: float = 1.0):
    """GSEA's weighted running sum of one gene set along one topic's ranking.

    Genes are ranked by decreasing weight (ties: input order). A hit adds
    ``|w|^weight / sum(|w_hits|^weight)``, a miss subtracts ``1 / (V - n_hits)``.

    Parameters
    ----------
    weights
        ``(V,)`` gene weights of one topic.
    genes
        The V gene names.
    gene_set
        Gene names of the set (those absent from ``genes`` are ignored).
    weight
        Exponent of the hit weights (1: Subramanian 2005; 0: classic KS).

    Returns
    -------
    curve, hits, es
        The running sum at each of the V ranks, the ranks of the set's genes, and the
        enrichment score (the signed maximum deviation from 0).
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(genes) != w.size:
        raise InputError(f"{len(genes)} gene names for {w.size} weights.")
    order = np.argsort(-w, kind="stable")
    members = set(map(str, gene_set))
    is_hit = np.array([str(genes[i]) in members for i in order])
    n_hit = int(is_hit.sum())
    if not 0 < n_hit < w.size:
        raise InputError(f"the gene set shares {n_hit} genes with the ranking; need between 1 and {w.size - 1}.")
    hw = np.abs(w[order]) ** weight * is_hit
    total = hw.sum()
    step_hit = hw / total if total > 0 else is_hit / n_hit
    step = np.where(is_hit, step_hit, -1.0 / (w.size - n_hit))
    curve = np.cumsum(step)
    i = int(np.argmax(np.abs(curve)))
    return curve, np.flatnonzero(is_hit), float(curve[i])


def gsea_running_sum(
    weights: "np.ndarray | AnnData",
    genes: Sequence[str] | None = None,
    gene_set=None,
    *,
    key: str | None = None,
    model: str | None = None,
    set_name: str = "gene set",
    topic: str = "topic",
    weight: float = 1.0,
    size: tuple[float, float] = (5.0, 3.4),
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
) -> "Figure | None":
    """GSEA running-sum plot: the enrichment curve, the set's genes as ticks, and the ranked weights.

    Parameters
    ----------
    weights, genes, gene_set, weight
        See :func:`running_sum`. AnnData form: ``gsea_running_sum(adata, key="topic_3",
        gene_set=[...])`` reads the topic's weights and the genes from the model's outputs.
    key
        AnnData form: the topic name.
    model
        AnnData form: model key (default ``uns["sctopic"]["model"]``).
    set_name, topic
        Used in the title (AnnData form: ``topic`` defaults to ``key``).
    size
        Figure size in inches.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.adata import is_anndata, topic_gene, topics

    if is_anndata(weights):
        adata = weights
        if key is None or gene_set is None:
            raise InputError("gsea_running_sum(adata, key='<topic>', gene_set=[...]): name the topic and the set.")
        _, names, m = topics(adata, model)
        if key not in names:
            raise InputError(f"{key!r} is not a topic ({', '.join(names[:5])}...).")
        w, genes = topic_gene(adata, m)
        weights = w[names.index(key)]
        topic = key if topic == "topic" else topic
    if genes is None or gene_set is None:
        raise InputError("gsea_running_sum(weights, genes, gene_set): genes and the gene set are needed.")
    curve, hits, es = running_sum(weights, genes, gene_set, weight)
    ranked = np.sort(np.asarray(weights, dtype=float))[::-1]
    fig = new_figure(*size)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 0.6, 1.2]})
    x = np.arange(1, curve.size + 1)
    ax1.plot(x, curve, c="tab:green", lw=1.2)
    ax1.axhline(0, c="0.5", lw=0.6)
    ax1.axhline(es, c="tab:red", lw=0.6, ls="--")
    ax1.set_ylabel("running ES", fontsize=8)
    from sctopic.plotting.labels import wrap_label

    ax1.set_title(wrap_label(f"{topic}: {set_name} (ES {es:.2f}, {hits.size} genes)", width=70), fontsize=8)
    ax2.vlines(hits + 1, 0, 1, colors="k", lw=0.5)
    ax2.set_yticks([])
    ax3.fill_between(x, ranked, color="0.6", lw=0)
    ax3.set_ylabel("weight", fontsize=8)
    ax3.set_xlabel("gene rank in topic", fontsize=8)
    for a in (ax1, ax2, ax3):
        a.tick_params(labelsize=7)
    return finish(fig, path=path, save=save, show=show)


def set_label(row, width: int = 26, max_lines: int = 2) -> str:
    """A gene set's readable name: its description (the GO term name) wrapped, else its ID."""
    from sctopic.plotting.labels import wrap_label

    desc = getattr(row, "description", None)
    name = str(desc) if isinstance(desc, str) and desc.strip() and desc != row.set else str(row.set)
    return wrap_label(name, width=width, max_lines=max_lines)


def enrichment_manhattan(
    table: "pd.DataFrame | AnnData",
    *,
    key: str | None = None,
    alpha: float = 0.05,
    n_labels: int = 8,
    topic_names: Sequence[str] | None = None,
    size: tuple[float, float] = (8.0, 3.8),
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    title: str | None = None,
) -> "Figure | None":
    """Manhattan plot of enrichment: every (topic, gene set) test, ``-log10 p`` by topic.

    Sets significant at ``fdr < alpha`` are coloured by topic. Each topic's most significant set
    is a label candidate (one per topic, so one strong topic cannot fill the plot, and each term
    once, at its strongest topic); the ``n_labels`` most significant candidates are named by their
    term names (wrapped), where they fit without overlapping.

    Parameters
    ----------
    table
        Output of :func:`sctopic.genesets.ora` or :func:`~sctopic.genesets.gsea` (columns
        ``topic``, ``set``, ``p``, ``fdr``; ``description`` gives the term names), or an AnnData
        holding it in ``uns[key]`` (:func:`sctopic.tl.enrichment`).
    key
        AnnData form: the ``uns`` key (default ``"enrichment"``).
    alpha
        FDR threshold for colouring.
    n_labels
        Most sets named.
    topic_names
        Names of the topics (for the axis; default the ``topic`` values).
    size
        Figure size in inches.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.
    title
        Axes title (default: what is plotted and the FDR threshold).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.adata import is_anndata, topics, uns_entry
    from sctopic.plotting.labels import place_labels

    if is_anndata(table):
        adata = table
        table = uns_entry(adata, key or "enrichment", "run sctopic.tl.enrichment(adata, ...) first")
        if topic_names is None:
            try:
                topic_names = topics(adata)[1]
            except InputError:
                topic_names = None
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"expected the DataFrame of ora or gsea, got {type(table).__name__}.")
    for col in ("topic", "set", "p", "fdr"):
        if col not in table.columns:
            raise InputError(f"the enrichment table has no column {col!r}; pass the output of ora or gsea.")
    if table.empty:
        raise InputError("the enrichment table is empty.")
    from sctopic.plotting.embedding import palette

    table = table.reset_index(drop=True)
    topics_ = sorted(pd.unique(table["topic"]))
    xpos = {t: i for i, t in enumerate(topics_)}
    rng = np.random.default_rng(0)
    x = table["topic"].map(xpos).to_numpy(dtype=float) + rng.uniform(-0.35, 0.35, len(table))
    y = -np.log10(np.clip(table["p"].to_numpy(dtype=float), 1e-300, 1.0))
    sig = table["fdr"].to_numpy(dtype=float) < alpha
    cols = palette(len(topics_))
    c = [cols[xpos[t]] for t in table["topic"]]
    fig = new_figure(*size)
    ax = fig.add_subplot()
    ax.scatter(x[~sig], y[~sig], s=3, c="0.75", linewidths=0, rasterized=True)
    ax.scatter(x[sig], y[sig], s=8, c=[c[i] for i in np.flatnonzero(sig)], linewidths=0,
               rasterized=int(sig.sum()) > 5000)
    ax.set_ylim(0, max(float(y.max()) * 1.35, -np.log10(alpha) + 1))  # head room for the labels
    ranked = table[sig].assign(_y=y[sig]).sort_values("_y", ascending=False, kind="stable")
    # One candidate per topic and per term: many topics may share their best term (ribosomal
    # topics all say "cytoplasmic translation"); each term is named once, at its strongest topic.
    rows, seen_t, seen_s = [], set(), set()
    for r in ranked.itertuples():
        if r.topic not in seen_t and r.set not in seen_s:
            rows.append(r)
            seen_t.add(r.topic)
            seen_s.add(r.set)
    names = list(topic_names) if topic_names is not None else [str(t) for t in topics_]
    if len(names) != len(topics_) and all(isinstance(t, (int, np.integer)) for t in topics_) \
            and max(topics_) < len(names):
        names = [str(names[int(t)]) for t in topics_]  # topic indices into the full name list
    if len(names) == len(topics_):
        step = max(1, int(np.ceil(len(topics_) / 40)))
        ax.set_xticks(range(0, len(topics_), step), [str(names[i]) for i in range(0, len(topics_), step)],
                      rotation=90, fontsize=6)
    ax.set_xlim(-0.8, len(topics_) - 0.2)
    ax.set_ylabel("-log10 p", fontsize=8)
    ax.set_title(title or f"enrichment of every topic and gene set (coloured: FDR < {alpha}; "
                          "named: each topic's best term, once)", fontsize=9)
    # Last: labels are placed in display space, which every artist above may still change.
    place_labels(ax, [x[r.Index] for r in rows], [y[r.Index] for r in rows],
                 [set_label(r) for r in rows], max_labels=n_labels, fontsize=5.5)
    return finish(fig, path=path, save=save, show=show)
