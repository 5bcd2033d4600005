"""Differential topic activity between groups of cells (cell types, conditions)."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from sctopic.analysis.inputs import obs_labels, topic_activity
from sctopic.errors import InputError
from sctopic.genesets.stats import bh_fdr

METHODS = ("permutation", "mannwhitney")

#: Upper bound on the entries of one block of permuted label vectors (memory ~ 8x this).
_BLOCK_ENTRIES = 4_000_000

COLUMNS = ["group", "reference", "topic", "n_in", "n_out", "mean_in", "mean_out", "diff",
           "log2_ratio", "cohens_d", "statistic", "p", "p_bh", "p_bonferroni"]


def permutation_labels(rng: np.random.Generator, n: int, n_in: int, n_permutations: int) -> np.ndarray:
    """Random relabellings: ``(n_permutations, n)`` booleans, each row with ``n_in`` True.

    Each row is a uniformly random subset of size ``n_in`` (the positions whose rank in a
    row of uniform draws is below ``n_in``). Drawing rows in several blocks from the same
    generator gives the same rows as drawing them at once.
    """
    ranks = np.argsort(rng.random((n_permutations, n)), axis=1, kind="stable")
    # ranks[r] is a random permutation; cell ranks[r, j] gets "in" when j < n_in.
    out = np.zeros((n_permutations, n), dtype=bool)
    np.put_along_axis(out, ranks[:, :n_in], True, axis=1)
    return out


def permutation_pvalues(values: np.ndarray, in_mask: np.ndarray, perms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided permutation p-values of the difference of means, all topics at once.

    Parameters
    ----------
    values
        ``(n, K)`` activities of the cells being compared.
    in_mask
        ``(n,)`` True for the cells of the group.
    perms
        ``(P, n)`` permuted group memberships (see :func:`permutation_labels`).

    Returns
    -------
    diff, p
        Observed ``mean_in - mean_out`` per topic and ``p = (1 + #{|diff_perm| >= |diff|}) /
        (1 + P)``. The permuted group sums are one matrix product ``perms @ values``.
    """
    diff, extreme = _extreme_counts(values, in_mask, perms)
    return diff, (1.0 + extreme) / (1.0 + perms.shape[0])


def _extreme_counts(values, in_mask, perms) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    in_mask = np.asarray(in_mask, dtype=bool)
    n_in = int(in_mask.sum())
    n_out = values.shape[0] - n_in
    total = values.sum(0)
    sum_in = values[in_mask].sum(0)
    diff = sum_in / n_in - (total - sum_in) / n_out
    perm_in = np.asarray(perms, dtype=np.float64) @ values
    perm_diff = perm_in / n_in - (total[None, :] - perm_in) / n_out
    # A relative tolerance so that permutations equal to the observation up to rounding count.
    tol = 1e-12 * np.maximum(np.abs(values).max(0), 1e-300)
    extreme = (np.abs(perm_diff) >= np.abs(diff)[None, :] - tol).sum(0)
    return diff, extreme


def _permutation_test(values, in_mask, n_permutations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of permutations from one generator (memory bounded whatever the cell count)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    n_in = int(np.sum(in_mask))
    block = max(1, min(n_permutations, _BLOCK_ENTRIES // max(n, 1)))
    diff, extreme, done = None, 0, 0
    while done < n_permutations:
        b = min(block, n_permutations - done)
        diff, e = _extreme_counts(values, in_mask, permutation_labels(rng, n, n_in, b))
        extreme = extreme + e
        done += b
    return diff, (1.0 + extreme) / (1.0 + n_permutations)


def _effect_sizes(x_in: np.ndarray, x_out: np.ndarray, nonnegative: bool) -> dict[str, np.ndarray]:
    m_in, m_out = x_in.mean(0), x_out.mean(0)
    n1, n2 = x_in.shape[0], x_out.shape[0]
    v1 = x_in.var(0, ddof=1) if n1 > 1 else np.zeros_like(m_in)
    v2 = x_out.var(0, ddof=1) if n2 > 1 else np.zeros_like(m_out)
    pooled = np.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / max(n1 + n2 - 2, 1))
    diff = m_in - m_out
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1.0), np.where(diff == 0, 0.0, np.nan))
        eps = 1e-9
        log2 = np.log2((m_in + eps) / (m_out + eps)) if nonnegative else np.full_like(m_in, np.nan)
    return {"mean_in": m_in, "mean_out": m_out, "diff": diff, "log2_ratio": log2, "cohens_d": d}


def differential_topics(
    model_or_adata,
    groupby: str,
    *,
    groups: Sequence[str] | str | None = None,
    reference: str = "rest",
    method: str = "permutation",
    n_permutations: int = 1000,
    seed: int = 0,
    use: str = "theta",
) -> pd.DataFrame:
    """Topics whose activity differs between a group of cells and a reference.

    For each group (a label of ``adata.obs[groupby]``), the cells with that label ("in") are
    compared with the reference cells ("out": every other labelled cell, or the cells of one
    reference label), topic by topic.

    Parameters
    ----------
    model_or_adata
        A trained model with data attached, or an AnnData / ``.h5ad`` / ``sctopic fit``
        directory holding ``obsm['X_<model>']`` and ``uns['sctopic']['model']``.
    groupby
        ``adata.obs`` column with the labels. Cells with a missing label are left out.
    groups
        Labels to test (default: every label, except ``reference`` when it is a label).
    reference
        ``"rest"`` (default) or one label of ``groupby`` to compare against.
    method
        ``"permutation"`` (default): two-sided permutation test of the difference of means;
        labels are permuted among the compared cells ``n_permutations`` times, all topics at
        once (the permuted group sums are a matrix product), ``p = (1 + #{|diff_perm| >=
        |diff|}) / (1 + n_permutations)`` (never 0). ``"mannwhitney"``: two-sided
        Mann-Whitney U test (:func:`scipy.stats.mannwhitneyu`, vectorised over topics).
    n_permutations
        Permutations per group (1000).
    seed
        Seed of the permutations; each group uses its own generator seeded with ``seed``, so
        a group's p-values do not depend on which other groups are tested.
    use
        ``"theta"`` (topic proportions, default) or ``"logits"`` (topic logits delta).

    Returns
    -------
    pandas.DataFrame
        One row per (group, topic), in the order of ``groups`` then topics, with columns
        ``group``, ``reference``, ``topic``, ``n_in``, ``n_out``, ``mean_in``, ``mean_out``,
        ``diff`` (mean_in - mean_out), ``log2_ratio`` (``log2((mean_in + 1e-9) / (mean_out +
        1e-9))``; NaN for logits, which can be negative), ``cohens_d`` (diff over the pooled
        standard deviation), ``statistic`` (the difference of means for the permutation test,
        U of the group for Mann-Whitney), ``p``, ``p_bh`` (Benjamini-Hochberg) and
        ``p_bonferroni``. Corrections are over the topics of each group (one family per
        comparison).

    Raises
    ------
    InputError
        The column is missing, holds fewer than two labels, a requested group or the
        reference has fewer than 2 cells, or the data hold no topics.
    """
    act = topic_activity(model_or_adata, use=use)
    labels = obs_labels(act.adata, groupby)
    col = act.adata.obs[groupby]
    order = [str(c) for c in col.cat.categories] if isinstance(col.dtype, pd.CategoricalDtype) else None
    out = differential_activity(
        act.values, labels.to_numpy(dtype=object), topic_names=act.topic_names, groups=groups,
        reference=reference, method=method, n_permutations=n_permutations, seed=seed,
        label_order=order, what=f"adata.obs[{groupby!r}]",
    )
    out.attrs.update(use=use, groupby=groupby, model=act.model)
    return out


def differential_activity(
    values: np.ndarray,
    labels: Sequence,
    *,
    topic_names: Sequence[str] | None = None,
    groups: Sequence[str] | str | None = None,
    reference: str = "rest",
    method: str = "permutation",
    n_permutations: int = 1000,
    seed: int = 0,
    label_order: Sequence[str] | None = None,
    what: str = "labels",
) -> pd.DataFrame:
    """:func:`differential_topics` on a plain ``(cells, topics)`` matrix and a label vector.

    Parameters
    ----------
    values
        Cells x topics activities.
    labels
        One label per cell (``None``/NaN: left out).
    topic_names
        Column names (default ``topic_0..``).
    groups, reference, method, n_permutations, seed
        As in :func:`differential_topics`.
    label_order
        Order of the groups in the output (default: sorted labels).
    what
        How the labels are named in error messages.

    Returns
    -------
    pandas.DataFrame
        As :func:`differential_topics`.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    if method == "permutation" and int(n_permutations) < 1:
        raise InputError(f"n_permutations must be >= 1, got {n_permutations}.")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 1:
        raise InputError(f"expected a cells x topics matrix, got shape {values.shape}.")
    lab = np.array([None if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)
                    for v in labels], dtype=object)
    if lab.shape[0] != values.shape[0]:
        raise InputError(f"{len(lab)} labels for {values.shape[0]} cells.")
    K = values.shape[1]
    names = list(topic_names) if topic_names is not None else [f"topic_{k}" for k in range(K)]
    labelled = np.array([v is not None for v in lab])
    if not labelled.any():
        raise InputError(f"{what} has no labels (all values are missing).")
    if (~labelled).any():
        warnings.warn(f"{int((~labelled).sum())} cells with a missing label in {what} are left out.",
                      UserWarning, stacklevel=3)
    present = set(lab[labelled])
    if label_order is not None:
        levels = [str(c) for c in label_order if str(c) in present]
        levels += sorted(present - set(levels))
    else:
        levels = sorted(present)
    if len(levels) < 2:
        raise InputError(
            f"{what} holds a single label ({levels[0]!r}); differential topics need at least two groups."
        )
    counts = {g: int((lab == g).sum()) for g in levels}
    if reference != "rest":
        reference = str(reference)
        if reference not in counts:
            raise InputError(f"reference {reference!r} is not a label of {what} (labels: {', '.join(levels[:20])}).")
        if counts[reference] < 2:
            raise InputError(f"the reference group {reference!r} has {counts[reference]} cell; at least 2 are needed.")
    if groups is None:
        todo = [g for g in levels if g != reference]
        small = [g for g in todo if counts[g] < 2]
        if small:
            warnings.warn(f"groups with fewer than 2 cells are skipped: {', '.join(small)}.", UserWarning, stacklevel=3)
            todo = [g for g in todo if counts[g] >= 2]
        if not todo:
            raise InputError(f"no group of {what} has at least 2 cells.")
    else:
        todo = [str(groups)] if isinstance(groups, str) else [str(g) for g in groups]
        unknown = [g for g in todo if g not in counts]
        if unknown:
            raise InputError(f"groups not found in {what}: {', '.join(unknown)} (labels: {', '.join(levels[:20])}).")
        if reference in todo:
            raise InputError(f"{reference!r} is both a group and the reference.")
        small = [f"{g} ({counts[g]})" for g in todo if counts[g] < 2]
        if small:
            raise InputError(f"groups with fewer than 2 cells cannot be tested: {', '.join(small)}.")

    nonneg = bool((values >= 0).all())
    frames = []
    for g in todo:
        in_all = lab == g
        out_all = (lab == reference) if reference != "rest" else (labelled & ~in_all)
        n_out = int(out_all.sum())
        if n_out < 2:
            raise InputError(f"the cells outside {g!r} number {n_out}; at least 2 are needed to compare.")
        keep = in_all | out_all
        x = values[keep]
        in_mask = in_all[keep]
        eff = _effect_sizes(x[in_mask], x[~in_mask], nonneg)
        if method == "permutation":
            stat, p = _permutation_test(x, in_mask, int(n_permutations), seed)
        else:
            from scipy.stats import mannwhitneyu

            res = mannwhitneyu(x[in_mask], x[~in_mask], axis=0, alternative="two-sided")
            stat, p = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
        frames.append(pd.DataFrame({
            "group": g, "reference": reference, "topic": names,
            "n_in": int(in_mask.sum()), "n_out": n_out, **eff, "statistic": stat, "p": p,
            "p_bh": bh_fdr(p), "p_bonferroni": np.minimum(1.0, p * K),
        }))
    out = pd.concat(frames, ignore_index=True)[COLUMNS]
    out.attrs.update(method=method, n_permutations=int(n_permutations) if method == "permutation" else None)
    return out
