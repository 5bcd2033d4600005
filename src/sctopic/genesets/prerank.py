"""Preranked GSEA of topics: each topic's genes ranked by beta, permutation null per set size.

Observed scores follow Subramanian et al. (2005) with weight exponent 1 (see
:mod:`sctopic.genesets.escore`). The null is the gene-label permutation null: a random
set of size ``s`` is ``s`` positions drawn without replacement from the ranking, so its
ES distribution depends on the topic and on ``s`` only. One null sample of
``permutations`` random sets is therefore drawn per (topic, set size) and shared by all
sets of that size, and the same drawn positions serve every topic (they are drawn once
and then looked up in each topic's weights). Position draws are nested across sizes (the
random set of size ``s`` is the first ``s`` draws of a random ordering); each size's null
is still an exact uniform sample, only the samples of different sizes are dependent.

Costs: observed ES O(K * total set size); null O(K * permutations * sum of distinct set
sizes), all vectorised in numpy (float32 by default for the null).

Positive weights. Topic-gene weights (beta) are usually all positive, so genes at the
bottom of a ranking carry almost no weight. A set at the top gives a large positive ES;
a set concentrated at the bottom still gives a negative ES (the running sum falls with
every non-member before its first member), meaning "genes least used by the topic".
Both signs are reported and tested against the same-signed null; for topic
interpretation the positive side (NES > 0) is usually what matters.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.genesets._inputs import LibraryLike, check_topic_gene, match_library
from sctopic.genesets.escore import _es_kernel, ranked_weights
from sctopic.genesets.nes_fdr import PooledNullNES
from sctopic.genesets.stats import bh_fdr


def gsea(
    topic_gene: np.ndarray,
    genes: Sequence[str],
    library: LibraryLike,
    permutations: int = 1000,
    seed: int | None = 0,
    min_size: int = 5,
    max_size: int = 500,
    leading_edge: bool = False,
    weight: float = 1.0,
    size_grid: float | None = None,
    n_jobs: int = 1,
    null_dtype: type = np.float32,
    chunk_elements: int = 1 << 21,
) -> pd.DataFrame:
    """Preranked gene-set enrichment analysis of every topic against every gene set.

    Parameters
    ----------
    topic_gene
        ``(K, V)`` topic-gene weights (beta); each topic's genes are ranked by decreasing
        weight (ties: input order) and weighted by ``|beta|^weight``.
    genes
        The ``V`` gene names. All of them form the ranking (not only library genes).
    library
        :class:`GeneSetLibrary`, :class:`MatchedLibrary`, bundled name or GMT path.
    permutations
        Random sets per (topic, set size) in the null; 0 computes ES only.
    seed
        Seed of the position draws (same seed, same results; independent of ``n_jobs``).
    min_size, max_size
        Keep sets with this many genes in the dataset.
    leading_edge
        Add a ``leading_edge`` column: members up to the peak (ES > 0) or from the trough
        on (ES < 0), in rank order.
    weight
        Exponent of the hit weights (1 = Subramanian 2005; 0 = unweighted KS).
    size_grid
        None (exact): a null for every distinct set size. A ratio > 1 (e.g. 1.1) gives the
        faster approximate mode: nulls only at sizes on a geometric grid with that ratio
        (all integers where the spacing is below 1), and for sizes in between p-values and
        NES normalisers are interpolated linearly in log size between the two
        neighbouring grid sizes.
    n_jobs
        Threads for the null computation (numpy releases the GIL).
    null_dtype
        Floating type of the null computation (float32 is about twice as fast as float64;
        ES differ by ~1e-6, which only matters for exact ties).
    chunk_elements
        Work-array size per step (topics x permutations x set size), for memory.

    Returns
    -------
    pandas.DataFrame
        One row per (topic, set): ``topic, set, description, method ("gsea"), statistic
        (NES), es, p, fdr, set_size`` (+ ``leading_edge``), sorted by topic then p.
        ``p`` is the nominal p-value ``(b + 1) / (n + 1)``, with ``n`` the null scores of
        the same sign as ES and ``b`` those at least as extreme; ``NES = ES / |mean of the
        same-signed null|``; ``fdr`` is Benjamini-Hochberg over the sets of each topic;
        ``fdr_nes`` is GSEA's own FDR (NES against the NES null pooled over all sets of
        the topic, as gseapy's ``FDR q-val``; see :mod:`sctopic.genesets.nes_fdr`).

    Notes
    -----
    With all-positive betas the bottom of each ranking has near-zero weights, so the
    test is asymmetric: positive ES (sets among the topic's top genes) is the signal of
    interest, while negative ES only says a set sits among the topic's least-used genes.
    When the weights are very skewed, random sets rarely score below zero; if the null
    of a (topic, size) has no score of the observed sign, NES is NaN and ``p`` is 1
    (conservative). With ``n`` permutations the smallest p is ``1 / (n + 1)``, so BH
    over ``m`` sets can only reach FDR below ``alpha`` when enough sets reach that floor
    (e.g. 1,000 permutations and 3,845 GO sets: at least 385 sets at the floor for
    FDR <= 0.01); raise ``permutations`` for strict thresholds, or use ``fdr_nes``, whose
    pooled null does not have this floor.
    """
    w, genes = check_topic_gene(topic_gene, genes)
    lib = match_library(library, genes, min_size, max_size)
    n_topics, n_genes = w.shape
    if permutations < 0:
        raise InputError("permutations must be >= 0")
    if size_grid is not None and not size_grid > 1:
        raise InputError("size_grid must be a ratio > 1 (or None for exact nulls)")
    sizes = lib.sizes
    usable = sizes < n_genes  # a set holding every ranked gene has no running sum
    set_idx = np.flatnonzero(usable)
    if set_idx.size == 0:
        raise InputError("every gene set contains all ranked genes; nothing to test")

    order, ranked = ranked_weights(w, weight)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n_genes), w.shape), axis=1)

    es = np.full((n_topics, len(sizes)), np.nan)
    lead = np.full((n_topics, len(sizes)), "", dtype=object) if leading_edge else None
    _observed(es, lead, set_idx, lib, rank, order, ranked, chunk_elements)

    nes = np.full(es.shape, np.nan)
    p = np.full(es.shape, np.nan)
    fdr_nes = np.full(es.shape, np.nan)
    if permutations > 0:
        _permutation_stats(
            es, nes, p, fdr_nes, sizes, set_idx, ranked, permutations, seed, size_grid,
            n_jobs, null_dtype, chunk_elements,
        )
    fdr = bh_fdr(p, axis=1)

    n_sets = len(sizes)
    df = pd.DataFrame(
        {
            "topic": np.repeat(np.arange(n_topics), n_sets),
            "set": np.tile(np.asarray(lib.set_names, dtype=object), n_topics),
            "description": np.tile(np.asarray(lib.descriptions, dtype=object), n_topics),
            "method": "gsea",
            "statistic": nes.ravel(),
            "es": es.ravel(),
            "p": p.ravel(),
            "fdr": fdr.ravel(),
            "fdr_nes": fdr_nes.ravel(),
            "set_size": np.tile(sizes, n_topics),
        }
    )
    if lead is not None:
        df["leading_edge"] = lead.ravel()
    df = df[np.tile(usable, n_topics)]
    df = df.sort_values(["topic", "p"], kind="stable").reset_index(drop=True)
    df.attrs.update(
        permutations=int(permutations), seed=seed, report=str(lib.report), library=lib.library,
        size_grid=size_grid,
    )
    return df


def _member_matrix(lib, idx: np.ndarray, s: int) -> np.ndarray:
    """``(len(idx), s)`` dataset-gene indices of sets ``idx``, which all have size ``s``."""
    inc = lib.incidence
    return inc.indices[inc.indptr[idx][:, None] + np.arange(s)]


def _observed(es, lead, set_idx, lib, rank, order, ranked, chunk_elements) -> None:
    """Fill ``es`` (and ``lead``) for the usable sets, grouped by size for rectangular arrays."""
    n_topics, n_genes = ranked.shape
    sizes = lib.sizes
    rows = np.arange(n_topics)[None, :, None]
    for s in np.unique(sizes[set_idx]):
        group = set_idx[sizes[set_idx] == s]
        step = max(1, chunk_elements // (n_topics * s))
        for start in range(0, group.size, step):
            idx = group[start : start + step]
            members = _member_matrix(lib, idx, s)
            # (s, K, B): sorted positions of each set's members in each topic's ranking.
            pos = np.sort(rank[:, members], axis=-1).transpose(2, 0, 1)
            q = (pos - np.arange(s)[:, None, None]) / (n_genes - s)
            score, ext = _es_kernel(ranked[rows, pos], q, return_index=lead is not None)
            es[:, idx] = score
            if lead is not None:
                _fill_leading_edge(lead, idx, pos, score, ext, order, lib.genes)


def _fill_leading_edge(lead, idx, pos, score, ext, order, names) -> None:
    for k in range(pos.shape[1]):
        ranked_names = names[order[k]]
        for b, j in enumerate(idx):
            m = ext[k, b]
            sel = pos[: m + 1, k, b] if score[k, b] > 0 else pos[m:, k, b]
            lead[k, j] = ",".join(ranked_names[sel])


def size_grid_points(sizes: np.ndarray, ratio: float | None) -> np.ndarray:
    """Set sizes at which nulls are computed: all distinct sizes, or a geometric grid."""
    distinct = np.unique(sizes)
    if ratio is None:
        return distinct
    lo, hi = int(distinct[0]), int(distinct[-1])
    grid = [lo]
    while grid[-1] < hi:
        grid.append(min(hi, max(grid[-1] + 1, int(round(grid[-1] * ratio)))))
    return np.asarray(grid)


def _permutation_stats(
    es, nes, p, fdr_nes, sizes, set_idx, ranked, permutations, seed, size_grid, n_jobs, null_dtype,
    chunk_elements,
) -> None:
    """Fill ``nes``, ``p`` and ``fdr_nes`` from per-(topic, size) permutation nulls."""
    n_topics, n_genes = ranked.shape
    grid = size_grid_points(sizes[set_idx], size_grid)
    rng = np.random.default_rng(seed)
    # One random ordering prefix per permutation; the null set of size s is its first s draws.
    draws = np.empty((permutations, grid[-1]), dtype=np.int64)
    for i in range(permutations):
        draws[i] = rng.choice(n_genes, size=grid[-1], replace=False)
    # ES is scale-free per topic: scale each topic's weights to max 1 so that float32
    # neither underflows nor overflows.
    top = ranked.max(axis=1)
    scaled = ranked / np.where(top > 0, top, 1.0)[:, None]
    ranked_t = np.ascontiguousarray(scaled.T, dtype=null_dtype)

    # Where each usable set sits on the grid: between grid[j] and grid[j+1] with weight lam
    # on the upper point (lam = 0 when its size is a grid point, always so in exact mode).
    s_sets = sizes[set_idx]
    j_lo = np.searchsorted(grid, s_sets, side="right") - 1
    j_hi = np.minimum(j_lo + 1, len(grid) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(
            j_hi > j_lo,
            (np.log(s_sets) - np.log(grid[j_lo])) / (np.log(grid[j_hi]) - np.log(grid[j_lo])),
            0.0,
        )
    p_acc = np.zeros((n_topics, set_idx.size))
    pos_norm = np.zeros_like(p_acc)
    neg_norm = np.zeros_like(p_acc)
    # How many sets use each grid point's null (fractional in grid mode), for the pooled FDR.
    uses = np.zeros(len(grid))
    np.add.at(uses, j_lo, 1.0 - lam)
    np.add.at(uses, j_hi, lam)
    pooled = PooledNullNES(n_topics)

    pool = ThreadPoolExecutor(n_jobs) if n_jobs > 1 else None
    try:
        for j, s in enumerate(grid):
            positions = np.ascontiguousarray(np.sort(draws[:, :s], axis=1).T)
            null = _null_scores(ranked_t, positions, pool, chunk_elements)
            summary = _null_summary(null)
            pooled.add(null, summary[3], summary[4], uses[j])
            # Sets using this grid point: as lower point (weight 1 - lam) or upper (lam).
            for which, wts in ((j_lo == j, 1.0 - lam), (j_hi == j, lam)):
                sel = np.flatnonzero(which & (wts > 0))
                if sel.size == 0:
                    continue
                wt = wts[sel]
                p_acc[:, sel] += wt * _pvalues(summary, es[:, set_idx[sel]])
                pos_norm[:, sel] += wt * summary[3][:, None]
                neg_norm[:, sel] += wt * summary[4][:, None]
    finally:
        if pool is not None:
            pool.shutdown()

    obs = es[:, set_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        nes[:, set_idx] = np.where(obs >= 0, obs / pos_norm, obs / np.abs(neg_norm))
    p[:, set_idx] = p_acc
    fdr_nes[:, set_idx] = pooled.fdr(nes[:, set_idx])


def _null_scores(ranked_t: np.ndarray, positions: np.ndarray, pool, chunk_elements) -> np.ndarray:
    """``(K, permutations)`` ES of random sets at sorted ``positions`` (s, n) in every topic.

    ``ranked_t`` is ``(N, K)``: each lookup copies one contiguous row of all topics.
    """
    n_genes, n_topics = ranked_t.shape
    s, n_perm = positions.shape
    q = ((positions - np.arange(s)[:, None]) / (n_genes - s)).astype(ranked_t.dtype)[:, :, None]
    out = np.empty((n_perm, n_topics), dtype=ranked_t.dtype)
    step = max(1, chunk_elements // (n_topics * s))

    def work(start: int) -> None:
        cols = slice(start, start + step)
        out[cols] = _es_kernel(ranked_t[positions[:, cols]], q[:, cols])[0]

    starts = range(0, n_perm, step)
    if pool is None:
        for start in starts:
            work(start)
    else:
        list(pool.map(work, starts))
    return out.T


def _null_summary(null: np.ndarray):
    """Sorted null (float64) and, per topic, counts and means of its >= 0 and < 0 parts."""
    n_topics, n_perm = null.shape
    srt = np.sort(null, axis=1).astype(np.float64)
    n_neg = np.array([np.searchsorted(row, 0.0, side="left") for row in srt])
    n_pos = n_perm - n_neg
    csum = np.concatenate([np.zeros((n_topics, 1)), np.cumsum(srt, axis=1)], axis=1)
    sum_neg = csum[np.arange(n_topics), n_neg]
    sum_pos = csum[:, -1] - sum_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pos = sum_pos / n_pos
        mean_neg = sum_neg / n_neg
    return srt, n_pos, n_neg, mean_pos, mean_neg


def _pvalues(summary, obs: np.ndarray) -> np.ndarray:
    """Nominal p-values ``(b + 1) / (n + 1)`` of ``obs`` (K, B) against the same-signed null."""
    srt, n_pos, n_neg, _, _ = summary
    n_perm = srt.shape[1]
    p = np.empty(obs.shape)
    for k in range(obs.shape[0]):
        ge = n_perm - np.searchsorted(srt[k], obs[k], side="left")  # null >= obs
        le = np.searchsorted(srt[k], obs[k], side="right")  # null <= obs
        p[k] = np.where(obs[k] >= 0, (ge + 1) / (n_pos[k] + 1), (le + 1) / (n_neg[k] + 1))
    return p


def _compare_to_null(null: np.ndarray, obs: np.ndarray):
    """Nominal p-values of ``obs`` (K, B) against same-signed ``null`` (K, n), and null means.

    Returns ``p`` (K, B), the mean non-negative null score and the mean negative null
    score per topic (NaN where the null has no score of that sign).
    """
    summary = _null_summary(null)
    return _pvalues(summary, obs), summary[3], summary[4]
