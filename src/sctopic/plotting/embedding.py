"""Cells and topics in two dimensions: UMAP of cells coloured by label or topic, the joint
gene-topic embedding map (topics as stars among their top genes), and the topic-by-label heatmap.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.plotting.adata import umap_coords  # noqa: F401  (public here too)
from sctopic.plotting.figure import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.figure import Figure


def palette(n: int) -> list:
    """``n`` distinct colours without greys (grey means "other" or "not significant" in these
    figures): tab10, then tab20, then tab20 + tab20b, then evenly spaced hues."""
    from matplotlib import colormaps

    def no_grey(name: str, size: int) -> list:
        cols = [colormaps[name](i) for i in range(size)]
        return [c for c in cols if max(c[:3]) - min(c[:3]) > 0.05]

    for cols in (no_grey("tab10", 10), no_grey("tab20", 20), no_grey("tab20", 20) + no_grey("tab20b", 20)):
        if n <= len(cols):
            return cols[:n]
    return [colormaps["hsv"](i / n) for i in range(n)]


def point_size(n: int) -> float:
    """Marker size that keeps 700 cells visible and 10^6 cells from saturating the panel."""
    return float(np.clip(3000 / max(n, 1), 0.2, 12))


def _categorical(ax, coords, values, *, s: float, legend: bool, max_categories: int = 18) -> int:
    """Scatter by category: the ``max_categories`` largest get colours and legend entries, the
    rest one grey "other" entry (so 100 dominant topics still give a readable legend).
    Returns the number of categories folded into "other"."""
    values = pd.Series(values, dtype=object).fillna("NA").astype(str).to_numpy()
    counts = pd.Series(values).value_counts()
    shown = list(counts.index[:max_categories])
    hidden = list(counts.index[max_categories:])
    if hidden:
        m = np.isin(values, hidden)
        ax.scatter(coords[m, 0], coords[m, 1], s=s, color="0.82", linewidths=0, rasterized=True,
                   label=f"other: {len(hidden)} smaller categories ({int(m.sum())} cells)")
    cols = palette(len(shown))
    for c, col in zip(shown, cols):  # largest first, so small groups are drawn on top
        m = values == c
        ax.scatter(coords[m, 0], coords[m, 1], s=s, color=col, label=f"{c} ({int(m.sum())})", linewidths=0,
                   rasterized=True)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        if hidden:  # "other" last in the legend
            handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
        ax.legend(handles, labels, fontsize=6, markerscale=max(1.0, 6 / np.sqrt(s)), frameon=False,
                  loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 if len(labels) <= 16 else 2,
                  handletextpad=0.2, columnspacing=0.8)
    return len(hidden)


def cell_umap(
    coords: "np.ndarray | AnnData",
    values=None,
    *,
    key: str | None = None,
    basis: str | None = None,
    model: str | None = None,
    title: str | None = None,
    continuous: bool | None = None,
    point_size: float | None = None,
    legend: bool = True,
    max_categories: int = 18,
    size: tuple[float, float] = (5.5, 4.2),
    axis_label: str = "UMAP",
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
) -> "Figure | None":
    """Cells in UMAP coordinates coloured by a label (categorical) or a value (continuous).

    Two forms: ``cell_umap(coords, values)`` with arrays, or ``cell_umap(adata, key=...)`` with an
    AnnData, as ``scanpy.pl.umap(adata, color=...)``.

    Parameters
    ----------
    coords
        ``(n, 2)`` coordinates (:func:`umap_coords`), or an AnnData.
    values
        One label or number per cell (array form).
    key
        AnnData form: an ``obs`` column, a topic name (colour by its theta) or
        ``"dominant_topic"`` (each cell's largest topic).
    basis
        AnnData form: ``obsm`` key of the coordinates (``"umap"`` or ``"X_umap"``); default
        ``X_umap`` when present, else a UMAP of the model's theta, stored in ``obsm["X_<model>_umap"]``.
    model
        AnnData form: model key (default ``uns["sctopic"]["model"]``).
    title
        Axes title (AnnData form: default the key).
    continuous
        Colour by value (viridis) or by category; default: numeric values are continuous.
    point_size
        Marker size (default from the number of cells; points are rasterised, so 10^6 cells
        give a small file).
    legend
        Show the category legend or the colour bar.
    max_categories
        Categories with their own colour and legend entry (the largest ones); the others are
        drawn in grey as one "other" entry.
    size
        Figure size in inches.
    axis_label
        Axis name (``"UMAP"`` gives "UMAP 1", "UMAP 2").
    path, save
        Save the figure here (format from the suffix; ``save`` is scanpy's name).
    show
        Display the figure (IPython) and return None.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (None when ``show`` is true).
    """
    from sctopic.plotting.adata import basis_coords, is_anndata, obs_values

    if is_anndata(coords):
        adata = coords
        if key is None:
            raise InputError("cell_umap(adata, key=...): name an obs column, a topic or 'dominant_topic'.")
        values = obs_values(adata, key, model)
        if key == "dominant_topic" and continuous is None:
            continuous = False
        coords = basis_coords(adata, basis, model)
        title = key if title is None else title
    elif values is None:
        raise InputError("cell_umap(coords, values): one value per cell is needed.")
    coords = np.asarray(coords, dtype=float)
    values = np.asarray(values)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(values) != coords.shape[0]:
        raise InputError(f"coords must be (n, 2) with one value per cell; got {coords.shape} and {len(values)} values.")
    if continuous is None:
        continuous = np.issubdtype(values.dtype, np.number) and values.dtype != bool
    s = point_size if point_size is not None else globals()["point_size"](len(values))
    fig = new_figure(*size)
    ax = fig.add_subplot()
    if continuous:
        v = values.astype(float)
        order = np.argsort(v, kind="stable")  # high values drawn on top
        sc = ax.scatter(coords[order, 0], coords[order, 1], c=v[order], s=s, cmap="viridis", linewidths=0,
                        rasterized=True)
        if legend:
            fig.colorbar(sc, ax=ax, shrink=0.7)
    else:
        _categorical(ax, coords, values, s=s, legend=legend, max_categories=max_categories)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{axis_label} 1", fontsize=8)
    ax.set_ylabel(f"{axis_label} 2", fontsize=8)
    ax.set_title(title or "", fontsize=9)
    return finish(fig, path=path, save=save, show=show)


def dominant_topic(theta: "np.ndarray | AnnData", topic_names: Sequence[str] | None = None, *,
                   model: str | None = None) -> np.ndarray:
    """The name of each cell's largest topic.

    Parameters
    ----------
    theta
        Cells x topics proportions, or an AnnData holding a model's outputs.
    topic_names
        The K topic names (array form).
    model
        AnnData form: model key (default ``uns["sctopic"]["model"]``).

    Returns
    -------
    numpy.ndarray
        One topic name per cell (object dtype).
    """
    from sctopic.plotting.adata import is_anndata, topics

    if is_anndata(theta):
        theta, topic_names, _ = topics(theta, model)
    if topic_names is None:
        raise InputError("dominant_topic(theta, topic_names): the topic names are needed.")
    theta = np.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != len(topic_names):
        raise InputError(f"theta has shape {theta.shape} but {len(topic_names)} topic names were given.")
    return np.asarray(topic_names, dtype=object)[np.argmax(theta, axis=1)]


def gene_topic_map(
    gene_embedding: "np.ndarray | AnnData",
    topic_embedding: np.ndarray | None = None,
    genes: Sequence[str] | None = None,
    topic_gene: np.ndarray | None = None,
    *,
    key: str | None = None,
    topic_names: Sequence[str] | None = None,
    top_n: int = 10,
    n_labels: int = 2,
    max_gene_labels: int = 30,
    max_topic_labels: int = 20,
    topic_importance: Sequence[float] | None = None,
    seed: int = 0,
    layout: str = "umap",
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    title: str = "genes and topics in the embedding space",
) -> "Figure | None":
    """Joint map of the gene and topic embeddings: topics as stars among their top genes.

    The ``top_n`` genes of every topic (by ``topic_gene``) and the topics are embedded together
    (UMAP with the cosine metric on the shared embedding space, PCA when fewer than 10 points).
    Each gene is coloured by the topic in which it ranks highest. Labels never overlap: topic
    names (topics owning most genes first, at most ``max_topic_labels``) and then the first
    ``n_labels`` genes of each topic (at most ``max_gene_labels``) are placed where they fit; the
    title says how many were written.

    Parameters
    ----------
    gene_embedding
        ``(V, L)`` gene embeddings (rho; ``varm['<model>_gene_embedding']``), or an AnnData
        holding a model's outputs (then the other arrays are read from it).
    topic_embedding
        ``(K, L)`` topic embeddings (alpha; ``uns['<model>']['topic_embedding']``).
    genes
        The V gene names.
    topic_gene
        ``(K, V)`` topic-gene weights used to pick each topic's top genes.
    key
        AnnData form: the model key (default ``uns["sctopic"]["model"]``).
    topic_names
        Names of the K topics (default ``topic_0..``).
    top_n
        Top genes per topic to place on the map.
    n_labels
        Candidate gene labels per topic.
    max_gene_labels, max_topic_labels
        At most this many gene and topic names are written.
    topic_importance
        One number per topic; topics (and their genes) are named in decreasing order of it.
        Default: the topic's mean proportion in the AnnData form, else the number of top genes it
        owns on the map.
    seed
        UMAP random state.
    layout
        ``"umap"`` (default) or ``"pca"`` (first two principal components of the embeddings).
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.
    title
        Axes title; a key to the markers and the number of labels is appended.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.adata import is_anndata
    from sctopic.plotting.labels import place_labels

    if is_anndata(gene_embedding):
        from sctopic.plotting.adata import topics

        adata = gene_embedding
        gene_embedding, topic_embedding, genes, topic_gene, names0 = _embeddings_of(adata, key)
        topic_names = names0 if topic_names is None else topic_names
        if topic_importance is None:  # the topics cells use most are the ones worth naming
            topic_importance = topics(adata, key)[0].mean(0)
    if topic_embedding is None or genes is None or topic_gene is None:
        raise InputError("gene_topic_map needs gene_embedding, topic_embedding, genes and topic_gene (or an AnnData).")
    ge = np.asarray(gene_embedding, dtype=np.float64)
    te = np.asarray(topic_embedding, dtype=np.float64)
    w = np.asarray(topic_gene, dtype=np.float64)
    k = te.shape[0]
    if ge.ndim != 2 or te.ndim != 2 or ge.shape[1] != te.shape[1]:
        raise InputError(f"gene and topic embeddings must share their dimension, got {ge.shape} and {te.shape}.")
    if w.shape != (k, ge.shape[0]) or len(genes) != ge.shape[0]:
        raise InputError(f"topic_gene must be topics x genes {(k, ge.shape[0])}, got {w.shape}.")
    names = list(topic_names) if topic_names is not None else [f"topic_{i}" for i in range(k)]
    top = np.argsort(-w, axis=1, kind="stable")[:, :top_n]
    owner: dict[int, int] = {}
    for r in range(top.shape[1]):  # rank by rank: a gene belongs to the topic where it ranks highest
        for t in range(k):
            owner.setdefault(int(top[t, r]), t)
    gidx = np.array(sorted(owner), dtype=int)
    pts = np.vstack([ge[gidx], te])
    if not np.isfinite(pts).all():
        raise InputError("the embeddings contain NaN values (genes the model did not use?).")
    if layout == "umap" and pts.shape[0] >= 10:
        xy = umap_coords(pts, n_neighbors=15, metric="cosine", seed=seed)
    else:
        c = pts - pts.mean(0)
        xy = c @ np.linalg.svd(c, full_matrices=False)[2][:2].T
    gxy, txy = xy[: len(gidx)], xy[len(gidx):]
    cols = palette(k)
    fig = new_figure(7.0, 6.0)
    ax = fig.add_subplot()
    gcol = [cols[owner[g]] for g in gidx]
    ax.scatter(gxy[:, 0], gxy[:, 1], s=10, c=gcol, alpha=0.7, linewidths=0, rasterized=len(gidx) > 2000,
               label=f"gene (top {top_n} of a topic), coloured by its topic")
    star = float(np.clip(4000 / k, 25, 160))
    ax.scatter(txy[:, 0], txy[:, 1], s=star, marker="*", c=cols, edgecolors="k", linewidths=0.6, zorder=3,
               label="topic")
    ax.set_xticks([])
    ax.set_yticks([])
    from matplotlib.lines import Line2D

    key_ = [Line2D([], [], ls="", marker="o", ms=4, mfc="0.5", mec="none",
                   label=f"gene (top {top_n} of a topic), coloured by its topic"),
            Line2D([], [], ls="", marker="*", ms=10, mfc="0.5", mec="k", label="topic")]
    ax.legend(handles=key_, fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(0, -0.01), ncol=2)
    head = ax.set_title(f"{title}\n{k} topics, {len(gidx)} genes; named: ... topics, ... genes "
                        "(labels that would overlap are left out)", fontsize=8.5)
    # Last: labels are placed in display space, which every artist above may still change.
    # Name the important topics first (default: those owning many top genes, distinct programs).
    if topic_importance is not None:
        imp = np.asarray(topic_importance, dtype=float)
        if imp.shape != (k,):
            raise InputError(f"topic_importance needs one value per topic ({k}), got shape {imp.shape}.")
    else:
        imp = np.bincount([owner[int(g)] for g in gidx], minlength=k).astype(float)
    t_order = np.argsort(-imp, kind="stable")
    placed: list = []
    t_lab = place_labels(ax, txy[t_order, 0], txy[t_order, 1], [names[t] for t in t_order],
                         max_labels=max_topic_labels, fontsize=7, avoid=placed, fontweight="bold")
    pos = {g: i for i, g in enumerate(gidx)}
    cand = [(r, t, int(g)) for r in range(min(n_labels, top.shape[1])) for t in t_order
            for g in top[t, r:r + 1] if owner[int(g)] == t]
    g_lab = place_labels(ax, [gxy[pos[g], 0] for _, _, g in cand], [gxy[pos[g], 1] for _, _, g in cand],
                         [str(genes[g]) for _, _, g in cand], max_labels=max_gene_labels, fontsize=6,
                         avoid=placed, color="0.2")
    head.set_text(head.get_text().replace("... topics, ... genes", f"{len(t_lab)} topics, {len(g_lab)} genes"))
    return finish(fig, path=path, save=save, show=show)


def _embeddings_of(adata, model: str | None):
    """Gene and topic embeddings, genes, topic-gene matrix and topic names of a result AnnData."""
    from sctopic.plotting.adata import topic_gene as topic_gene_of
    from sctopic.plotting.adata import topics

    _, names, m = topics(adata, model)
    w, genes = topic_gene_of(adata, m)
    gemb = adata.varm.get(f"{m}_gene_embedding") if hasattr(adata.varm, "get") else None
    entry = adata.uns.get(m, {})
    temb = entry.get("topic_embedding") if hasattr(entry, "get") else None
    if gemb is None or temb is None:
        raise InputError(f"this AnnData stores no gene/topic embeddings of {m!r} (varm['{m}_gene_embedding'], "
                         f"uns['{m}']['topic_embedding']).")
    pos = pd.Index(adata.var_names.astype(str)).get_indexer(genes)
    if (pos < 0).any():
        raise InputError("some of the model's genes are not in var_names; pass the arrays instead.")
    return np.asarray(gemb)[pos], np.asarray(temb), genes, w, names


def select_rows(vals: np.ndarray, max_rows: int | None, per_column: int = 2) -> np.ndarray:
    """Indices of the rows (topics) worth showing in a topics x groups heatmap.

    Every column keeps its ``per_column`` highest rows (so each group shows its own topics);
    the remaining places go to the rows with the largest maximum. All rows when ``max_rows`` is
    None or not smaller than their number.
    """
    n = vals.shape[0]
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    v = np.where(np.isfinite(vals), vals, -np.inf)
    keep: list[int] = []
    for j in range(v.shape[1]):
        for i in np.argsort(-v[:, j], kind="stable")[:per_column]:
            if int(i) not in keep:
                keep.append(int(i))
    for i in np.argsort(-v.max(1), kind="stable"):
        if len(keep) >= max_rows:
            break
        if int(i) not in keep:
            keep.append(int(i))
    return np.array(sorted(keep[:max(max_rows, 1)]), dtype=int)


def diagonal_order(vals: np.ndarray, col_order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row and column orders that put a topics x groups matrix near block-diagonal form.

    Columns are ordered by hierarchical clustering (average linkage, correlation) of their
    profiles, rows by the column where they peak and then by decreasing peak, so each group's
    topics sit together under it.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage

    v = np.nan_to_num(vals, nan=0.0)
    if col_order is None:
        col_order = np.arange(v.shape[1])
        if v.shape[1] > 2 and np.ptp(v, axis=0).min() > 0:
            col_order = leaves_list(linkage(v.T, method="average", metric="correlation"))
    rank = np.empty(len(col_order), dtype=int)
    rank[col_order] = np.arange(len(col_order))
    peak = rank[np.argmax(v, axis=1)]
    rows = np.lexsort((-v.max(1), peak))
    return rows, np.asarray(col_order)


def topic_label_heatmap(
    theta: "np.ndarray | AnnData",
    labels=None,
    topic_names: Sequence[str] | None = None,
    *,
    key: str | None = None,
    model: str | None = None,
    scale: str = "topic",
    max_topics: int | None = 40,
    order: str = "cluster",
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    title: str | None = None,
) -> "Figure | None":
    """Mean topic proportion of each label: topics (rows) by labels (columns).

    At large K only the topics that matter are drawn (each label's 2 most used topics, then the
    topics with the largest mean proportion anywhere, ``max_topics`` in all); the title says how
    many are hidden. Rows are ordered so that each label's topics sit together under it.

    Parameters
    ----------
    theta
        Cells x topics proportions, or an AnnData with a model's outputs.
    labels
        One label per cell (missing labels are left out); AnnData form: use ``key``.
    topic_names
        The topic names (array form).
    key
        AnnData form: ``obs`` column with the labels (cell types).
    model
        AnnData form: model key (default ``uns["sctopic"]["model"]``).
    scale
        ``"topic"`` (default): each row divided by its maximum, so every topic shows where it
        is used most; ``"none"``: raw means.
    max_topics
        Most topics drawn (None: all).
    order
        ``"cluster"`` (default): labels clustered, topics grouped under the label where they
        peak; ``"none"``: the input order.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.
    title
        Axes title (default "topic use by label").

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.adata import is_anndata, obs_values, topics

    if is_anndata(theta):
        adata = theta
        if key is None:
            raise InputError("topic_label_heatmap(adata, key=...): name the obs column with the labels.")
        labels = obs_values(adata, key, model)
        theta, topic_names, _ = topics(adata, model)
        title = title or f"topic use by {key}"
    if scale not in ("topic", "none"):
        raise InputError(f"scale must be 'topic' or 'none', got {scale!r}.")
    if order not in ("cluster", "none"):
        raise InputError(f"order must be 'cluster' or 'none', got {order!r}.")
    if labels is None or topic_names is None:
        raise InputError("topic_label_heatmap(theta, labels, topic_names): labels and topic names are needed.")
    theta = np.asarray(theta, dtype=float)
    lab = pd.Series(np.asarray(labels, dtype=object))
    if len(lab) != theta.shape[0]:
        raise InputError(f"{len(lab)} labels for {theta.shape[0]} cells.")
    if theta.ndim != 2 or theta.shape[1] != len(topic_names):
        raise InputError(f"theta has shape {theta.shape} but {len(topic_names)} topic names were given.")
    keep = lab.notna().to_numpy()
    # Group means as one sparse (labels x cells) product: no copy of theta, so 10^6 cells x 200
    # topics cost no more memory than theta itself.
    import scipy.sparse as sp

    codes, uniq = pd.factorize(lab.astype(str).where(keep), sort=True)
    ok = codes >= 0
    ind = sp.csr_matrix((np.ones(int(ok.sum())), (codes[ok], np.flatnonzero(ok))), shape=(len(uniq), len(lab)))
    counts = np.asarray(ind.sum(1)).ravel()
    mean = pd.DataFrame((ind @ theta / counts[:, None]).T, index=[str(t) for t in topic_names],
                        columns=[str(u) for u in uniq])  # topics x labels
    raw = mean.to_numpy()
    rows = select_rows(raw, max_topics)
    sub = raw[rows]
    r_ord, c_ord = (diagonal_order(sub) if order == "cluster"
                    else (np.arange(len(rows)), np.arange(sub.shape[1])))
    rows = rows[r_ord]
    vals = raw[np.ix_(rows, c_ord)]
    if scale == "topic":
        vals = vals / np.maximum(raw[rows].max(1, keepdims=True), 1e-12)
    n_hidden = raw.shape[0] - len(rows)
    fig = new_figure(2.4 + 0.32 * vals.shape[1], 1.6 + 0.15 * vals.shape[0])
    ax = fig.add_subplot()
    im = ax.imshow(vals, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(vals.shape[1]), [str(c) for c in mean.columns[c_ord]], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(vals.shape[0]), [str(t) for t in mean.index[rows]], fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.6, label="mean theta" + (" / row max" if scale == "topic" else ""))
    head = title or "topic use by label"
    if n_hidden:
        head += f"\n{len(rows)} of {raw.shape[0]} topics shown\n({n_hidden} less used topics hidden)"
    ax.set_title(head, fontsize=8.5)
    fig.n_hidden_topics = n_hidden
    return finish(fig, path=path, save=save, show=show)
