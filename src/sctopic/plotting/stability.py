"""Curves for choosing the number of topics K (see :func:`sctopic.analysis.topic_stability`)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.plotting.figure import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

PANELS = (
    ("stability", "stability (matched cosine)"),
    ("td", "topic diversity (TD)"),
    ("tc", "topic coherence (TC)"),
    ("ari", "ARI (oracle resolution)"),
)


def stability_curves(
    result,
    *,
    key: str | None = None,
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    title: str | None = None,
) -> "Figure | None":
    """Stability, TD, TC and ARI against K (mean +/- sd over seeds or seed pairs).

    Panels whose metric was not computed (all NaN) are left out. A dashed line marks the
    suggested K, and the per-run values are drawn as small dots.

    Parameters
    ----------
    result
        A :class:`sctopic.analysis.StabilityResult`, or its per-K ``table`` DataFrame, or an
        AnnData holding either in ``uns[key]``.
    key
        AnnData form: the ``uns`` key (default ``"topic_stability"``).
    path, save
        Save the figure here (format from the suffix).
    show
        Display the figure (IPython) and return None.
    title
        Figure title (default: the suggestion).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from sctopic.plotting.adata import is_anndata, uns_entry

    if is_anndata(result):
        result = uns_entry(result, key or "topic_stability",
                           "store the result of sctopic.analysis.topic_stability there")
    table = result.table if hasattr(result, "table") else result
    if not isinstance(table, pd.DataFrame) or "k" not in table.columns or "stability_mean" not in table.columns:
        raise InputError("pass a StabilityResult or its per-K table (columns k, stability_mean, ...).")
    runs = getattr(result, "runs", None)
    pairs = getattr(result, "pairs", None)
    suggested = getattr(result, "suggested_k", None)
    t = table.sort_values("k")
    ks = t["k"].to_numpy(dtype=float)
    panels = [(m, lab) for m, lab in PANELS if np.isfinite(t[f"{m}_mean"].to_numpy(dtype=float)).any()]
    fig = new_figure(3.2 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (m, lab) in zip(axes, panels):
        mean = t[f"{m}_mean"].to_numpy(dtype=float)
        sd = np.nan_to_num(t[f"{m}_sd"].to_numpy(dtype=float))
        if m == "stability" and pairs is not None and len(pairs):
            ax.scatter(pairs["k"], pairs["mean_similarity"], s=8, c="0.6", zorder=1)
        elif runs is not None and m in getattr(runs, "columns", []) and len(runs):
            ax.scatter(runs["k"], runs[m], s=8, c="0.6", zorder=1)
        ax.errorbar(ks, mean, yerr=sd, marker="o", capsize=3, c="tab:blue", zorder=2)
        if suggested is not None:
            ax.axvline(suggested, ls="--", lw=0.8, c="tab:red")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(int(k)) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("number of topics K")
        ax.set_title(lab, fontsize=9)
    if title is None and suggested is not None:
        title = f"suggested K = {suggested}"
    if title:
        fig.suptitle(title, fontsize=10)
    return finish(fig, path=path, save=save, show=show)
