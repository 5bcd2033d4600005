"""Plots of an in-silico topic perturbation (:func:`sctopic.analysis.perturb_topics`)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from sctopic.errors import InputError
from sctopic.plotting.figure import new_figure, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from sctopic.analysis.perturb import PerturbationResult

COLOURS = {"control": "0.65", "target": "tab:red", "perturbed": "tab:blue"}


def perturbation_umap_coords(result: "PerturbationResult", seed: int = 0,
                             n_neighbors: int = 15) -> dict[str, np.ndarray]:
    """2-d UMAP of the real control, real target and perturbed control cells.

    The UMAP is fitted on all three sets together, in the PCA space of reconstructions that
    the movement statistics use (``result.embedding``).
    """
    import umap

    emb = getattr(result, "embedding", None) or {}
    if not all(k in emb for k in COLOURS):
        raise InputError("the result holds no embedding; run perturb_topics first.")
    parts = [np.asarray(emb[k]) for k in COLOURS]
    X = np.vstack(parts)
    reducer = umap.UMAP(n_neighbors=n_neighbors, random_state=seed, n_jobs=1)
    Y = reducer.fit_transform(X)
    out, start = {}, 0
    for k, part in zip(COLOURS, parts):
        out[k] = Y[start:start + len(part)]
        start += len(part)
    return out


def umap_panel(ax, coords: dict[str, np.ndarray], labels: dict[str, str]) -> None:
    """Draw the control, target and perturbed cells of :func:`perturbation_umap_coords` on ``ax``
    (legend entries from ``labels``, e.g. :func:`perturbation_labels`)."""
    for k, c in COLOURS.items():
        ax.scatter(coords[k][:, 0], coords[k][:, 1], s=3, c=c, alpha=0.6, label=labels.get(k, k), rasterized=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.legend(fontsize=7, markerscale=3, frameon=False)


def perturbation_labels(result) -> dict[str, str]:
    """Legend labels of the three cell sets of a perturbation result, named by its groups."""
    s = result.summary
    return {"control": f"{s.get('control', 'control')} (real)", "target": f"{s.get('target', 'target')} (real)",
            "perturbed": f"{s.get('control', 'control')} + topics shifted"}


def perturbation_umap(result: "PerturbationResult", *, seed: int = 0,
                      path: "str | os.PathLike | None" = None, coords=None) -> "Figure":
    """UMAP of control, target and in-silico perturbed cells.

    Parameters
    ----------
    result
        A :class:`~sctopic.analysis.perturb.PerturbationResult`.
    seed
        UMAP seed.
    path
        Save the figure here.
    coords
        Precomputed :func:`perturbation_umap_coords` (to reuse one UMAP in several figures).

    Returns
    -------
    matplotlib.figure.Figure
    """
    coords = coords or perturbation_umap_coords(result, seed=seed)
    fig = new_figure(5.0, 4.5)
    ax = fig.add_subplot()
    umap_panel(ax, coords, perturbation_labels(result))
    ax.set_title("reconstructions: real and perturbed cells", fontsize=9)
    return save_figure(fig, path)


def lfc_panel(ax, result, n_labels: int) -> None:
    """Draw observed against predicted log2 fold changes on ``ax``, naming the ``n_labels`` genes
    with the highest observed Wilcoxon scores (the panel of :func:`lfc_scatter`)."""
    g = result.genes
    x = g["observed_lfc"].to_numpy(float)
    y = g["predicted_lfc"].to_numpy(float)
    ot, pt = g["observed_top"].to_numpy(bool), g["predicted_top"].to_numpy(bool)
    ax.scatter(x[~ot & ~pt], y[~ot & ~pt], s=4, c="0.7", label="other genes", rasterized=True)
    ax.scatter(x[ot & ~pt], y[ot & ~pt], s=8, c="tab:orange", label="observed top only")
    ax.scatter(x[pt & ~ot], y[pt & ~ot], s=8, c="tab:purple", label="predicted top only")
    ax.scatter(x[ot & pt], y[ot & pt], s=10, c="tab:red", label="both")
    score = g["observed_score"].to_numpy(float)
    for i in np.argsort(-np.nan_to_num(score, nan=-np.inf))[:n_labels]:
        ax.annotate(str(g.index[i]), (x[i], y[i]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0, lw=0.5, c="0.5")
    ax.axvline(0, lw=0.5, c="0.5")
    s = result.summary
    ax.set_xlabel("observed log2 fold change (target vs control)")
    ax.set_ylabel("predicted log2 fold change (perturbed vs control)")
    ax.set_title(f"Spearman {s['spearman_lfc']:.2f}; top-{s['top_n']} overlap {s['overlap']}", fontsize=9)
    ax.legend(fontsize=6, frameon=False)


def lfc_scatter(result: "PerturbationResult", *, n_labels: int = 12,
                path: "str | os.PathLike | None" = None) -> "Figure":
    """Observed against predicted log2 fold changes, top genes highlighted.

    Parameters
    ----------
    result
        A :class:`~sctopic.analysis.perturb.PerturbationResult`.
    n_labels
        Name the genes with the highest observed Wilcoxon scores.
    path
        Save the figure here.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(5.0, 4.5)
    lfc_panel(fig.add_subplot(), result, n_labels)
    return save_figure(fig, path)


def _null_panel(ax, result, column: str, observed: float, xlabel: str) -> None:
    vals = result.null[column].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    if len(vals):
        ax.hist(vals, bins=min(20, max(5, len(vals) // 5)), color="0.7")
    ax.axvline(observed, c="tab:red", lw=1.5, label="chosen topics")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("random-topic draws")
    ax.legend(fontsize=7, frameon=False)


def perturbation_summary(result: "PerturbationResult", *, seed: int = 0,
                         path: "str | os.PathLike | None" = None, title: str | None = None, coords=None) -> "Figure":
    """Four panels: UMAP of real and perturbed cells, observed vs predicted fold changes, and
    the random-topic null of the overlap and of the rank correlation.

    Returns
    -------
    matplotlib.figure.Figure
    """
    coords = coords or perturbation_umap_coords(result, seed=seed)
    s = result.summary
    fig = new_figure(10.0, 8.5)
    axes = fig.subplots(2, 2)
    umap_panel(axes[0, 0], coords, perturbation_labels(result))
    axes[0, 0].set_title(f"distance to target {s['distance_to_target_before']:.1f} -> "
                         f"{s['distance_to_target_after']:.1f}", fontsize=9)
    lfc_panel(axes[0, 1], result, 10)
    _null_panel(axes[1, 0], result, "overlap", s["overlap"], f"top-{s['top_n']} overlap")
    axes[1, 0].set_title(f"empirical p {s['empirical_p_overlap']:.3g}", fontsize=9)
    _null_panel(axes[1, 1], result, "spearman", s["spearman_lfc"], "Spearman of fold changes")
    axes[1, 1].set_title(f"empirical p {s['empirical_p_spearman']:.3g}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
