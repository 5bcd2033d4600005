"""Kaplan-Meier plot of a topic score split at its median."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from sctopic.plotting.figure import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def kaplan_meier(
    score,
    time: ArrayLike | None = None,
    event: ArrayLike | None = None,
    *,
    key: str | None = None,
    time_key: str = "time",
    event_key: str = "event",
    topic: str = "topic",
    time_unit: str = "",
    path: "str | os.PathLike | None" = None,
    save: "str | os.PathLike | None" = None,
    show: bool | None = None,
    ax=None,
) -> "Figure | None":
    """Kaplan-Meier curves of samples above and at-or-below the median score, with log-rank p.

    Parameters
    ----------
    score
        One score per sample (e.g. a column of :func:`sctopic.analysis.score_bulk`), or a bulk
        AnnData whose ``obs`` holds the score (``key``), the time and the event.
    time, event
        Follow-up time and event indicator (1: event).
    key
        AnnData form: ``obs`` column with the score (e.g. a topic's score written there).
    time_key, event_key
        AnnData form: ``obs`` columns with the follow-up time and the event.
    topic
        Name shown in the legend and title.
    time_unit
        Unit for the x axis label (e.g. ``"years"``).
    path, save
        Save the figure here (ignored when ``ax`` is given).
    show
        Display the figure (IPython) and return None.
    ax
        Draw into this axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (``ax.figure`` when ``ax`` is given); ``fig.logrank`` holds the test result.
    """
    from lifelines import KaplanMeierFitter

    from sctopic.analysis.survival import logrank_split
    from sctopic.plotting.adata import is_anndata

    if is_anndata(score):
        from sctopic.errors import InputError

        bulk = score
        for k, what in ((key, "key (the score column)"), (time_key, "time_key"), (event_key, "event_key")):
            if k is None or k not in bulk.obs.columns:
                raise InputError(f"kaplan_meier(adata, ...): {what} {k!r} is not an obs column.")
        score = bulk.obs[key].to_numpy(dtype=float)
        time = bulk.obs[time_key].to_numpy(dtype=float)
        event = bulk.obs[event_key].to_numpy(dtype=float)
        topic = key if topic == "topic" else topic
    if time is None or event is None:
        from sctopic.errors import InputError

        raise InputError("kaplan_meier(score, time, event): time and event are needed.")
    split = logrank_split(score, time, event)
    T = np.asarray(time, dtype=float).ravel()
    E = np.asarray(event, dtype=float).ravel()
    own = ax is None
    fig = new_figure(5.0, 4.0) if own else ax.figure
    if own:
        ax = fig.add_subplot()
    for mask, label, colour in ((split["high"], "high", "tab:red"),
                                (split["kept"] & ~split["high"], "low", "tab:blue")):
        km = KaplanMeierFitter().fit(T[mask], E[mask])
        sf = km.survival_function_.iloc[:, 0]
        ci = km.confidence_interval_survival_function_
        ax.step(sf.index, sf.to_numpy(), where="post", c=colour,
                label=f"{topic} {label} (n={int(mask.sum())}, {int(E[mask].sum())} events)")
        ax.fill_between(ci.index, ci.iloc[:, 0], ci.iloc[:, 1], step="post", color=colour, alpha=0.15, lw=0)
        censored = mask & (E == 0)
        if censored.any():
            ax.plot(T[censored], km.survival_function_at_times(T[censored]).to_numpy(), "|", c=colour, ms=4)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"time{f' ({time_unit})' if time_unit else ''}")
    ax.set_ylabel("survival probability")
    ax.set_title(f"{topic}: split at median, log-rank p = {split['p']:.3g}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.logrank = {k: v for k, v in split.items() if k not in ("high", "kept")}
    return finish(fig, path=path, save=save, show=show) if own else fig
