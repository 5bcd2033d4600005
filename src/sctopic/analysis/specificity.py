"""Which topics mark which cell types: fold enrichment of topic use inside a label vs outside it."""
from __future__ import annotations

import numpy as np
import pandas as pd

from sctopic.analysis.inputs import obs_labels, topic_activity
from sctopic.errors import InputError


def topic_specificity(model_or_adata, groupby: str, *, min_cells: int = 10) -> pd.DataFrame:
    """Fold enrichment of each topic in each group: mean theta of the group's cells divided by
    the mean theta of all other cells.

    A topic with a fold enrichment of 3 in "B" is used three times as much by B cells as by the
    rest; the largest value of a column is that group's marker topic (see :func:`marker_topics`).
    Cells with a missing label are left out of both sides.

    Parameters
    ----------
    model_or_adata
        A trained model with data, a result AnnData, an ``.h5ad`` path or a fit directory
        (see :func:`sctopic.analysis.inputs.topic_activity`).
    groupby
        ``obs`` column with the groups (cell types).
    min_cells
        Groups with fewer cells are left out (their means are noise).

    Returns
    -------
    pandas.DataFrame
        Topics (rows, named) x groups (columns) of fold enrichments; ``inf`` where a topic is
        unused outside the group.
    """
    act = topic_activity(model_or_adata, "theta")
    labels = obs_labels(act.adata, groupby).to_numpy(dtype=object)
    known = np.array([v is not None for v in labels])
    if not isinstance(min_cells, (int, np.integer)) or min_cells < 1:
        raise InputError(f"min_cells must be an integer >= 1, got {min_cells!r}.")
    groups, counts = np.unique(labels[known].astype(str), return_counts=True)
    groups = groups[counts >= min_cells]
    if len(groups) < 2:
        raise InputError(f"topic_specificity needs at least 2 groups of >= {min_cells} cells in "
                         f"obs[{groupby!r}]; found {len(groups)}.")
    theta, lab = act.values[known], labels[known].astype(str)
    total, n = theta.sum(0), len(lab)
    out = {}
    for g in groups:
        inside = lab == g
        s_in = theta[inside].sum(0)
        mean_in = s_in / inside.sum()
        mean_out = (total - s_in) / (n - inside.sum())
        with np.errstate(divide="ignore", invalid="ignore"):  # x/0 -> inf, 0/0 -> nan, as documented
            out[g] = mean_in / mean_out
    return pd.DataFrame(out, index=pd.Index(act.topic_names, name="topic"))


def marker_topics(specificity: pd.DataFrame) -> pd.DataFrame:
    """Each group's most specific topic from :func:`topic_specificity`.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``topic`` (its most enriched topic) and ``fold`` (the enrichment),
        sorted by ``fold``.
    """
    if specificity.empty:
        raise InputError("the specificity table is empty.")
    best = specificity.idxmax(axis=0)
    fold = specificity.max(axis=0)
    return (pd.DataFrame({"topic": best, "fold": fold}).rename_axis("group")
            .sort_values("fold", ascending=False, kind="stable"))
