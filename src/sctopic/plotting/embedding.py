"""Cells and topics in two dimensions: UMAP of cells coloured by label or topic, the joint
gene-topic embedding map (topics as stars among their top genes), and the topic-by-label heatmap.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.plotting.figure import new_figure, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def palette(n: int) -> list:
    """``n`` distinct colours: tab10/tab20 when they suffice, else evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def umap_coords(x: np.ndarray, *, n_neighbors: int = 15, metric: str = "euclidean", seed: int = 0) -> np.ndarray:
    """Two-dimensional UMAP (umap-learn, one thread) of the rows of ``x``.

    Parameters
    ----------
    x
        Rows to embed (e.g. cells x topics theta).
    n_neighbors
        UMAP neighbourhood (reduced automatically for few rows).
    metric
        Distance (``"euclidean"``, ``"cosine"``...).
    seed
        Random state (same seed, same layout).

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` coordinates.
    """
    import umap

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 4:
        raise InputError(f"need at least 4 rows to embed, got shape {x.shape}.")
    reducer = umap.UMAP(n_neighbors=int(min(n_neighbors, x.shape[0] - 1)), metric=metric,
                        random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _categorical(ax, coords, values, *, s: float, legend: bool, max_legend: int = 30) -> None:
    values = pd.Series(values, dtype=object).fillna("NA").astype(str).to_numpy()
    cats = list(pd.Series(values).value_counts().index)
    cols = palette(len(cats))
    for c, col in zip(cats, cols):
        m = values == c
        ax.scatter(coords[m, 0], coords[m, 1], s=s, color=col, label=c, linewidths=0, rasterized=True)
    if legend and len(cats) <= max_legend:
        ax.legend(fontsize=6, markerscale=2.5, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))


def cell_umap(
    coords: np.ndarray,
    values,
    *,
    title: str = "",
    continuous: bool | None = None,
    point_size: float | None = None,
    legend: bool = True,
    size: tuple[float, float] = (5.5, 4.2),
    axis_label: str = "UMAP",
    path: "str | os.PathLike | None" = None,
) -> "Figure":
    """Cells in UMAP coordinates coloured by a label (categorical) or a value (continuous).

    Parameters
    ----------
    coords
        ``(n, 2)`` coordinates (:func:`umap_coords`).
    values
        One label or number per cell.
    title
        Axes title.
    continuous
        Colour by value (viridis) or by category; default: numeric values are continuous.
    point_size
        Marker size (default from the number of cells).
    legend
        Show the category legend (at most 30 categories) or the colour bar.
    size
        Figure size in inches.
    axis_label
        Axis name (``"UMAP"`` gives "UMAP 1", "UMAP 2").
    path
        Save the figure here.

    Returns
    -------
    matplotlib.figure.Figure
    """
    coords = np.asarray(coords, dtype=float)
    values = np.asarray(values)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(values) != coords.shape[0]:
        raise InputError(f"coords must be (n, 2) with one value per cell; got {coords.shape} and {len(values)} values.")
    if continuous is None:
        continuous = np.issubdtype(values.dtype, np.number) and values.dtype != bool
    s = point_size if point_size is not None else float(np.clip(3000 / max(len(values), 1), 0.5, 12))
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
        _categorical(ax, coords, values, s=s, legend=legend)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{axis_label} 1", fontsize=8)
    ax.set_ylabel(f"{axis_label} 2", fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def dominant_topic(theta: np.ndarray, topic_names: Sequence[str]) -> np.ndarray:
    """The name of each cell's largest topic."""
    theta = np.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != len(topic_names):
        raise InputError(f"theta has shape {theta.shape} but {len(topic_names)} topic names were given.")
    return np.asarray(topic_names, dtype=object)[np.argmax(theta, axis=1)]


def gene_topic_map(
    gene_embedding: np.ndarray,
    topic_embedding: np.ndarray,
    genes: Sequence[str],
    topic_gene: np.ndarray,
    *,
    topic_names: Sequence[str] | None = None,
    top_n: int = 10,
    n_labels: int = 2,
    seed: int = 0,
    layout: str = "umap",
    path: "str | os.PathLike | None" = None,
    title: str = "genes and topics in the embedding space",
) -> "Figure":
    """Joint map of the gene and topic embeddings: topics as stars among their top genes.

    The ``top_n`` genes of every topic (by ``topic_gene``) and the topics are embedded together
    (UMAP with the cosine metric on the shared embedding space, PCA when fewer than 10 points).
    Each gene is coloured by the topic in which it ranks highest; the ``n_labels`` first genes
    of each topic are written next to it.

    Parameters
    ----------
    gene_embedding
        ``(V, L)`` gene embeddings (rho; ``varm['<model>_gene_embedding']``).
    topic_embedding
        ``(K, L)`` topic embeddings (alpha; ``uns['<model>']['topic_embedding']``).
    genes
        The V gene names.
    topic_gene
        ``(K, V)`` topic-gene weights used to pick each topic's top genes.
    topic_names
        Names of the K topics (default ``topic_0..``).
    top_n
        Top genes per topic to place on the map.
    n_labels
        Gene names written per topic.
    seed
        UMAP random state.
    layout
        ``"umap"`` (default) or ``"pca"`` (first two principal components of the embeddings).
    path
        Save the figure here.
    title
        Axes title; a key to the markers and the number of genes is appended.

    Returns
    -------
    matplotlib.figure.Figure
    """
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
    ok = np.isfinite(pts).all(1)
    if not ok.all():
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
    ax.scatter(gxy[:, 0], gxy[:, 1], s=10, c=gcol, alpha=0.7, linewidths=0)
    ax.scatter(txy[:, 0], txy[:, 1], s=160, marker="*", c=cols, edgecolors="k", linewidths=0.6, zorder=3)
    pos = {g: i for i, g in enumerate(gidx)}
    for t in range(k):
        ax.annotate(str(names[t]), txy[t], fontsize=7, fontweight="bold", xytext=(4, 4), textcoords="offset points")
        for g in top[t, :n_labels]:
            if owner[int(g)] == t:
                ax.annotate(str(genes[g]), gxy[pos[int(g)]], fontsize=5.5, color="0.25", xytext=(2, -6),
                            textcoords="offset points")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title + f" (stars: topics; dots: top {top_n} genes)", fontsize=9)
    return save_figure(fig, path)


def topic_label_heatmap(
    theta: np.ndarray,
    labels,
    topic_names: Sequence[str],
    *,
    scale: str = "topic",
    path: "str | os.PathLike | None" = None,
    title: str | None = None,
) -> "Figure":
    """Mean topic proportion of each label: topics (rows) by labels (columns).

    Parameters
    ----------
    theta
        Cells x topics proportions.
    labels
        One label per cell (missing labels are left out).
    topic_names
        The topic names.
    scale
        ``"topic"`` (default): each row divided by its maximum, so every topic shows where it
        is used most; ``"none"``: raw means.
    path
        Save the figure here.
    title
        Axes title (default "topic use by label").

    Returns
    -------
    matplotlib.figure.Figure
    """
    if scale not in ("topic", "none"):
        raise InputError(f"scale must be 'topic' or 'none', got {scale!r}.")
    theta = np.asarray(theta, dtype=float)
    lab = pd.Series(np.asarray(labels, dtype=object))
    if len(lab) != theta.shape[0]:
        raise InputError(f"{len(lab)} labels for {theta.shape[0]} cells.")
    keep = lab.notna().to_numpy()
    df = pd.DataFrame(theta[keep], columns=list(topic_names))
    mean = df.groupby(lab[keep].astype(str).to_numpy()).mean().T  # topics x labels
    vals = mean.to_numpy()
    if scale == "topic":
        vals = vals / np.maximum(vals.max(1, keepdims=True), 1e-12)
    fig = new_figure(1.6 + 0.4 * vals.shape[1], 1.2 + 0.16 * vals.shape[0])
    ax = fig.add_subplot()
    im = ax.imshow(vals, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(vals.shape[1]), [str(c) for c in mean.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(vals.shape[0]), [str(t) for t in mean.index], fontsize=max(3, min(7, 400 / vals.shape[0])))
    fig.colorbar(im, ax=ax, shrink=0.6, label="mean theta" + (" / row max" if scale == "topic" else ""))
    ax.set_title(title or "topic use by label", fontsize=9)
    return save_figure(fig, path)
