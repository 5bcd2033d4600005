"""Plots of differential topic activity: volcano and topic-by-group heatmap."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.plotting.figure import new_figure, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def volcano(
    table: pd.DataFrame,
    group: str | None = None,
    *,
    x: str = "cohens_d",
    p: str = "p_bh",
    alpha: float = 0.05,
    min_effect: float = 0.0,
    n_labels: int = 10,
    path: "str | os.PathLike | None" = None,
    title: str | None = None,
) -> "Figure":
    """Volcano plot of one group's differential topics: effect (``x``) against ``-log10(p)``.

    A dashed line marks ``p = alpha``; the significant topics are coloured and the most
    significant are named.

    Parameters
    ----------
    table
        Output of :func:`sctopic.analysis.differential_topics`.
    group
        The group to plot (needed when the table holds several).
    x
        Effect column: ``"cohens_d"`` (default), ``"diff"`` or ``"log2_ratio"``.
    p
        p-value column (``"p_bh"`` by default).
    alpha, min_effect
        Topics with ``p < alpha`` and ``|x| >= min_effect`` are coloured (up red, down blue).
    n_labels
        Label the most significant topics (by p, then ``|x|``).
    path
        Save the figure here (format from the suffix).
    title
        Figure title (default: the group and its reference).

    Returns
    -------
    matplotlib.figure.Figure
    """
    for col in (x, p, "group", "topic"):
        if col not in table.columns:
            raise InputError(f"the table has no column {col!r}; pass the output of differential_topics.")
    groups = list(dict.fromkeys(table["group"]))
    if group is None:
        if len(groups) > 1:
            raise InputError(f"the table holds {len(groups)} groups; choose one with group=... ({', '.join(groups[:10])}).")
        group = groups[0]
    sub = table[table["group"] == str(group)]
    if sub.empty:
        raise InputError(f"group {group!r} is not in the table ({', '.join(groups[:10])}).")
    xv = sub[x].to_numpy(dtype=float)
    pv = np.clip(sub[p].to_numpy(dtype=float), 1e-300, 1.0)
    y = -np.log10(pv)
    sig = (pv < alpha) & (np.abs(xv) >= min_effect)
    fig = new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    ax.scatter(xv[~sig], y[~sig], s=14, c="0.6", label="not significant")
    ax.scatter(xv[sig & (xv > 0)], y[sig & (xv > 0)], s=18, c="tab:red", label="up")
    ax.scatter(xv[sig & (xv < 0)], y[sig & (xv < 0)], s=18, c="tab:blue", label="down")
    ax.axhline(-np.log10(alpha), ls="--", lw=0.8, c="0.4")
    order = np.lexsort((-np.abs(xv), pv))[:n_labels]
    for i in order:
        ax.annotate(str(sub["topic"].iloc[i]), (xv[i], y[i]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(f"-log10 {p}")
    ref = sub["reference"].iloc[0] if "reference" in sub.columns else "rest"
    ax.set_title(title or f"{group} vs {ref}")
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path)


def topic_heatmap(
    table: pd.DataFrame,
    *,
    value: str = "cohens_d",
    p: str = "p_bh",
    alpha: float = 0.05,
    topics: list[str] | None = None,
    path: "str | os.PathLike | None" = None,
    title: str | None = None,
) -> "Figure":
    """Heatmap of an effect column, topics (rows) by groups (columns); dots mark ``p < alpha``.

    Rows and columns keep the table's order of topics and groups; the colour scale is symmetric
    around 0 (red up, blue down).

    Parameters
    ----------
    table
        Output of :func:`sctopic.analysis.differential_topics` with one or more groups.
    value
        Column to colour by (``"cohens_d"``, ``"diff"``, ``"log2_ratio"``, ``"mean_in"``...).
    p, alpha
        Significance column and threshold for the dots.
    topics
        Topics to show (default: all).
    path
        Save the figure here.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if value not in table.columns:
        raise InputError(f"the table has no column {value!r}.")
    mat = table.pivot(index="topic", columns="group", values=value)
    order_t = list(dict.fromkeys(table["topic"]))
    order_g = list(dict.fromkeys(table["group"]))
    mat = mat.reindex(index=order_t, columns=order_g)
    pm = table.pivot(index="topic", columns="group", values=p).reindex(index=order_t, columns=order_g)
    if topics is not None:
        missing = [t for t in topics if t not in mat.index]
        if missing:
            raise InputError(f"topics not in the table: {', '.join(map(str, missing[:10]))}.")
        mat, pm = mat.loc[topics], pm.loc[topics]
    vals = mat.to_numpy(dtype=float)
    lim = np.nanmax(np.abs(vals)) if np.isfinite(vals).any() else 1.0
    fig = new_figure(1.2 + 0.45 * vals.shape[1], 1.2 + 0.18 * vals.shape[0])
    ax = fig.add_subplot()
    im = ax.imshow(vals, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    rr, cc = np.nonzero(pm.to_numpy(dtype=float) < alpha)
    ax.scatter(cc, rr, s=4, c="k")
    ax.set_xticks(range(vals.shape[1]), [str(g) for g in mat.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(vals.shape[0]), [str(t) for t in mat.index], fontsize=6)
    fig.colorbar(im, ax=ax, label=value, shrink=0.6)
    ax.set_title(title or f"{value} (dots: {p} < {alpha})", fontsize=9)
    return save_figure(fig, path)
