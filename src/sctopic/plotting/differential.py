"""Plots of differential topic activity: volcano and topic-by-group heatmap."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.plotting.figure import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.figure import Figure


def _table_of(table, key: str | None, default: str) -> pd.DataFrame:
    """The differential table itself, or (AnnData form) the one stored in ``uns[key]``."""
    from sctopic.plotting.adata import is_anndata, uns_entry

    if is_anndata(table):
        table = uns_entry(table, key or default, "run sctopic.tl.differential_topics(adata, ...) first")
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"expected the DataFrame of differential_topics, got {type(table).__name__}.")
    return table


def volcano(
    table: "pd.DataFrame | AnnData",
    group: str | None = None,
    *,
    key: str | None = None,
    x: str = "cohens_d",
    p: str = "p_bh",
    alpha: float = 0.05,
    min_effect: float = 0.0,
    n_labels: int = 10,
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    title: str | None = None,
) -> "Figure | None":
    """Volcano plot of one group's differential topics: effect (``x``) against ``-log10(p)``.

    A dashed line marks ``p = alpha``; the significant topics are coloured and those with the
    largest effects are named (labels that would overlap are left out). Permutation p-values
    stop at ``1 / (permutations + 1)``: when several topics share that smallest p, a dotted line
    marks this floor, and effect size rather than p decides which are named.

    Parameters
    ----------
    table
        Output of :func:`sctopic.analysis.differential_topics`, or an AnnData holding it in
        ``uns[key]`` (:func:`sctopic.tl.differential_topics`).
    group
        The group to plot (needed when the table holds several).
    key
        AnnData form: the ``uns`` key (default ``"differential_topics"``).
    x
        Effect column: ``"cohens_d"`` (default), ``"diff"`` or ``"log2_ratio"``.
    p
        p-value column (``"p_bh"`` by default).
    alpha, min_effect
        Topics with ``p < alpha`` and ``|x| >= min_effect`` are coloured (up red, down blue).
    n_labels
        Name at most this many significant topics (largest ``|x|`` first).
    path, save
        Save the figure here (format from the suffix).
    show
        Display the figure (IPython) and return None.
    title
        Figure title (default: the group and its reference).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.labels import place_labels

    table = _table_of(table, key, "differential_topics")
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
    ax.scatter(xv[~sig], y[~sig], s=14, c="0.6", label=f"not significant ({int((~sig).sum())})")
    up, down = sig & (xv > 0), sig & (xv < 0)
    ax.scatter(xv[up], y[up], s=18, c="tab:red", label=f"up ({int(up.sum())})")
    ax.scatter(xv[down], y[down], s=18, c="tab:blue", label=f"down ({int(down.sum())})")
    ax.axhline(-np.log10(alpha), ls="--", lw=0.8, c="0.4")
    finite = np.isfinite(pv)
    floor = pv[finite].min() if finite.any() else np.nan
    n_floor = int(np.sum(np.isclose(pv, floor, rtol=1e-9, atol=0))) if np.isfinite(floor) else 0
    if n_floor >= 3:  # a pile at the smallest p: the permutation floor, not a real ordering
        ax.axhline(-np.log10(floor), ls=":", lw=0.8, c="0.3",
                   label=f"{n_floor} topics at the smallest p ({floor:.2g})")
    # Label the largest effects among the significant topics, alternating up and down so
    # both sides are named.
    up_i = [i for i in np.argsort(-xv, kind="stable") if up[i]]
    down_i = [i for i in np.argsort(xv, kind="stable") if down[i]]
    cand = [i for pair in zip(up_i, down_i) for i in pair] + up_i[len(down_i):] + down_i[len(up_i):]
    ax.set_xlabel(x)
    ax.set_ylabel(f"-log10 {p}")
    ax.margins(x=0.12)
    top = float(np.nanmax(y)) if np.isfinite(y).any() else 1.0
    ax.set_ylim(-0.05 * top, max(top * 1.3, -np.log10(alpha) * 1.3))  # head room for labels above the floor
    ref = sub["reference"].iloc[0] if "reference" in sub.columns else "rest"
    ax.set_title(title or f"{group} vs {ref}", fontsize=9)
    ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    # Last: labels are placed in display space, which every artist above may still change.
    place_labels(ax, xv[cand], y[cand], [str(sub["topic"].iloc[i]) for i in cand], max_labels=n_labels,
                 fontsize=7)
    return finish(fig, path=path, save=save, show=show)


def topic_heatmap(
    table: "pd.DataFrame | AnnData",
    *,
    key: str | None = None,
    value: str = "cohens_d",
    p: str = "p_bh",
    alpha: float = 0.05,
    topics: list[str] | None = None,
    max_topics: int | None = 40,
    order: str = "cluster",
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    title: str | None = None,
) -> "Figure | None":
    """Heatmap of an effect column, topics (rows) by groups (columns); dots mark ``p < alpha``.

    At large K only ``max_topics`` rows are drawn: each group's 2 strongest significant topics,
    then the largest significant effects anywhere (the title says how many are hidden). The
    colour scale is symmetric around 0 (red up, blue down).

    Parameters
    ----------
    table
        Output of :func:`sctopic.analysis.differential_topics` with one or more groups, or an
        AnnData holding it in ``uns[key]``.
    key
        AnnData form: the ``uns`` key (default ``"differential_topics"``).
    value
        Column to colour by (``"cohens_d"``, ``"diff"``, ``"log2_ratio"``, ``"mean_in"``...).
    p, alpha
        Significance column and threshold for the dots.
    topics
        Topics to show (default: chosen as above).
    max_topics
        Most topics drawn when ``topics`` is not given (None: all).
    order
        ``"cluster"`` (default): groups clustered, topics grouped under the group where their
        effect peaks; ``"none"``: the table's order.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.embedding import diagonal_order, select_rows

    table = _table_of(table, key, "differential_topics")
    if value not in table.columns:
        raise InputError(f"the table has no column {value!r}.")
    if order not in ("cluster", "none"):
        raise InputError(f"order must be 'cluster' or 'none', got {order!r}.")
    mat = table.pivot(index="topic", columns="group", values=value)
    order_t = list(dict.fromkeys(table["topic"]))
    order_g = list(dict.fromkeys(table["group"]))
    mat = mat.reindex(index=order_t, columns=order_g)
    pm = table.pivot(index="topic", columns="group", values=p).reindex(index=order_t, columns=order_g)
    n_all = len(mat)
    if topics is not None:
        missing = [t for t in topics if t not in mat.index]
        if missing:
            raise InputError(f"topics not in the table: {', '.join(map(str, missing[:10]))}.")
        mat, pm = mat.loc[topics], pm.loc[topics]
    else:
        v = mat.to_numpy(dtype=float)
        sig = pm.to_numpy(dtype=float) < alpha
        # Significant effects first; a tiny share of the raw effect breaks ties among the rest.
        score = np.where(sig, np.abs(v), 0.0) + 1e-6 * np.nan_to_num(np.abs(v))
        rows = select_rows(score, max_topics)
        mat, pm = mat.iloc[rows], pm.iloc[rows]
        if order == "cluster":
            r_ord, c_ord = diagonal_order(np.nan_to_num(mat.to_numpy(dtype=float)))
            mat, pm = mat.iloc[r_ord, c_ord], pm.iloc[r_ord, c_ord]
    vals = mat.to_numpy(dtype=float)
    lim = np.nanmax(np.abs(vals)) if np.isfinite(vals).any() else 1.0
    fig = new_figure(2.2 + 0.45 * vals.shape[1], 1.6 + 0.15 * vals.shape[0])
    ax = fig.add_subplot()
    im = ax.imshow(vals, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    rr, cc = np.nonzero(pm.to_numpy(dtype=float) < alpha)
    ax.scatter(cc, rr, s=4, c="k")
    ax.set_xticks(range(vals.shape[1]), [str(g) for g in mat.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(vals.shape[0]), [str(t) for t in mat.index], fontsize=7)
    fig.colorbar(im, ax=ax, label=value, shrink=0.6)
    n_hidden = n_all - len(mat)
    head = title or f"{value} (dots: {p} < {alpha})"
    if n_hidden:
        head += f"\n{len(mat)} of {n_all} topics shown\n({n_hidden} with weaker effects hidden)"
    ax.set_title(head, fontsize=8.5)
    fig.n_hidden_topics = n_hidden
    return finish(fig, path=path, save=save, show=show)
