"""Plots of an in-silico topic perturbation (:func:`sctopic.analysis.perturb_topics`)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from sctopic.errors import InputError
from sctopic.plotting.figure import finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from anndata import AnnData

    from sctopic.analysis.perturb import PerturbationResult

COLOURS = {"control": "0.65", "target": "tab:red", "perturbed": "tab:blue"}


def _result_of(result, key: str | None):
    """The PerturbationResult itself, or (AnnData form) the one stored in ``uns[key]``."""
    from sctopic.plotting.adata import is_anndata, uns_entry

    if is_anndata(result):
        result = uns_entry(result, key or "perturbation",
                           "store the result of sctopic.analysis.perturb_topics there (adata.uns['perturbation'] = res)")
    if not (hasattr(result, "genes") and hasattr(result, "summary")):
        raise InputError(f"expected a PerturbationResult, got {type(result).__name__}.")
    return result


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


def perturbation_umap(result: "PerturbationResult | AnnData", *, key: str | None = None, seed: int = 0,
                      path: "str | os.PathLike | None" = None, save: "str | os.PathLike | None" = None,
                      show: bool | None = None, coords=None) -> "Figure | None":
    """UMAP of control, target and in-silico perturbed cells.

    Parameters
    ----------
    result
        A :class:`~sctopic.analysis.perturb.PerturbationResult`, or an AnnData holding one in
        ``uns[key]``.
    key
        AnnData form: the ``uns`` key (default ``"perturbation"``).
    seed
        UMAP seed.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.
    coords
        Precomputed :func:`perturbation_umap_coords` (to reuse one UMAP in several figures).

    Returns
    -------
    matplotlib.figure.Figure
    """
    result = _result_of(result, key)
    coords = coords or perturbation_umap_coords(result, seed=seed)
    fig = new_figure(5.0, 4.5)
    ax = fig.add_subplot()
    umap_panel(ax, coords, perturbation_labels(result))
    ax.set_title("reconstructions: real and perturbed cells", fontsize=9)
    return finish(fig, path=path, save=save, show=show)


def axis_limit(values: np.ndarray, quantile: float = 0.995, pad: float = 1.15, floor: float = 1.0,
               absent: float = 15.0) -> float:
    """Half-width of a fold-change axis: the ``quantile`` of ``|values|`` with some padding,
    leaving out ``|values| > absent``.

    Genes detected in one group only get log2 fold changes near +-30 from scanpy's 1e-9
    pseudocount (a 30,000-fold change, ``absent = 15``, arises no other way); a few of them would
    squash every other gene into the middle of the axis, so the axis stops at the bulk of the
    genes and the rest are drawn at its edge.
    """
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v <= absent)]
    if not v.size:
        return floor
    return float(max(np.quantile(v, quantile) * pad, floor))


def lfc_panel(ax, result, n_labels: int, clip: bool = True) -> int:
    """Draw observed against predicted log2 fold changes on ``ax``, naming the ``n_labels`` genes
    with the highest observed Wilcoxon scores (the panel of :func:`lfc_scatter`).

    With ``clip``, each axis stops at :func:`axis_limit` and genes beyond it are drawn as
    triangles on the edge. Returns the number of genes so clipped."""
    from sctopic.plotting.labels import place_labels

    g = result.genes
    x = g["observed_lfc"].to_numpy(float)
    y = g["predicted_lfc"].to_numpy(float)
    n_out = 0
    out = np.zeros(len(x), dtype=bool)
    if clip:
        lx, ly = axis_limit(x), axis_limit(y)
        out = (np.abs(x) > lx) | (np.abs(y) > ly)
        n_out = int(out.sum())
        x, y = np.clip(x, -lx, lx), np.clip(y, -ly, ly)

        def span(v):  # the data's own range (0 included), within the clip, with a little margin
            lo, hi = min(float(np.nanmin(v)), 0.0), max(float(np.nanmax(v)), 0.0)
            pad = 0.05 * (hi - lo or 1.0)
            return lo - pad, hi + pad

        ax.set_xlim(*span(x))
        ax.set_ylim(*span(y))
    ot, pt = g["observed_top"].to_numpy(bool), g["predicted_top"].to_numpy(bool)
    groups = ((~ot & ~pt, 4, "0.7", "other genes"), (ot & ~pt, 8, "tab:orange", "observed top only"),
              (pt & ~ot, 8, "tab:purple", "predicted top only"), (ot & pt, 10, "tab:red", "both"))
    for m, s, c, lab in groups:
        ax.scatter(x[m & ~out], y[m & ~out], s=s, c=c, label=lab, rasterized=bool((m & ~out).sum() > 2000))
        if (m & out).any():
            ax.scatter(x[m & out], y[m & out], s=s + 6, c=c, marker="^", edgecolors="k", linewidths=0.3)
    if n_out:
        ax.scatter([], [], marker="^", c="w", edgecolors="k", linewidths=0.5,
                   label=f"{n_out} genes beyond the axes (drawn at the edge)")
    score = g["observed_score"].to_numpy(float)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[: max(3 * n_labels, n_labels)]
    ax.axhline(0, lw=0.5, c="0.5")
    ax.axvline(0, lw=0.5, c="0.5")
    s = result.summary
    ax.set_xlabel("observed log2 fold change (target vs control)")
    ax.set_ylabel("predicted log2 fold change (perturbed vs control)")
    ax.set_title(f"Spearman {s['spearman_lfc']:.2f}; top-{s['top_n']} overlap {s['overlap']}", fontsize=9)
    ax.legend(fontsize=6, frameon=False, loc="upper left")
    place_labels(ax, x[order], y[order], [str(g.index[i]) for i in order], max_labels=n_labels, fontsize=6)
    return n_out


def lfc_scatter(result: "PerturbationResult | AnnData", *, key: str | None = None, n_labels: int = 12,
                clip: bool = True, path: "str | os.PathLike | None" = None,
                save: "str | os.PathLike | None" = None, show: bool | None = None) -> "Figure | None":
    """Observed against predicted log2 fold changes, top genes highlighted.

    Parameters
    ----------
    result
        A :class:`~sctopic.analysis.perturb.PerturbationResult`, or an AnnData holding one in
        ``uns[key]``.
    key
        AnnData form: the ``uns`` key (default ``"perturbation"``).
    n_labels
        Name at most this many of the genes with the highest observed Wilcoxon scores (labels
        that would overlap are left out).
    clip
        Stop the axes at the bulk of the genes (:func:`axis_limit`): genes expressed in one group
        only, whose fold changes come from a tiny pseudocount, are drawn at the edge.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.

    Returns
    -------
    matplotlib.figure.Figure
    """
    result = _result_of(result, key)
    fig = new_figure(5.0, 4.5)
    lfc_panel(fig.add_subplot(), result, n_labels, clip=clip)
    return finish(fig, path=path, save=save, show=show)


def _null_panel(ax, result, column: str, observed: float, xlabel: str) -> None:
    vals = result.null[column].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    if len(vals):
        ax.hist(vals, bins=min(20, max(5, len(vals) // 5)), color="0.7")
    ax.axvline(observed, c="tab:red", lw=1.5, label="chosen topics")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("random-topic draws")
    ax.legend(fontsize=7, frameon=False)


def perturbation_summary(result: "PerturbationResult | AnnData", *, key: str | None = None, seed: int = 0,
                         path: "str | os.PathLike | None" = None, save: "str | os.PathLike | None" = None,
                         show: bool | None = None, title: str | None = None, coords=None) -> "Figure | None":
    """Four panels: UMAP of real and perturbed cells, observed vs predicted fold changes (axes
    clipped as in :func:`lfc_scatter`), and the random-topic null of the overlap and of the
    rank correlation.

    Parameters
    ----------
    result
        A :class:`~sctopic.analysis.perturb.PerturbationResult`, or an AnnData holding one in
        ``uns[key]``.
    key
        AnnData form: the ``uns`` key (default ``"perturbation"``).
    seed
        UMAP seed.
    path, save
        Save the figure here.
    show
        Display the figure (IPython) and return None.
    title
        Figure title.
    coords
        Precomputed :func:`perturbation_umap_coords`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    result = _result_of(result, key)
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
    return finish(fig, path=path, save=save, show=show)
