"""The GSEA running-sum enrichment score, computed from member positions only.

For a ranking of ``N`` genes and a set with members at sorted positions
``p_0 < ... < p_{s-1}`` with weights ``g_0..g_{s-1}`` (``|r|^weight``), the running sum
of Subramanian et al. (2005) is

    RS(i) = sum(g_m for p_m <= i) / sum(g) - #(non-members at positions <= i) / (N - s).

Between two members RS only decreases, so its maximum is reached right after a member
and its minimum right before one (or at the ends, where RS = 0). With ``C_m`` the
cumulative member weight and ``q_m = (p_m - m) / (N - s)`` the fraction of non-members
before member ``m``:

    max RS = max(0, max_m C_m / C_total - q_m)
    min RS = min(0, min_m C_{m-1} / C_total - q_m)

so a set costs O(s), not O(N). ES is whichever of the two deviates more from zero
(the negative one on an exact tie, as in gseapy).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _es_kernel(
    g: np.ndarray, q: np.ndarray, return_index: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Enrichment scores of many sets at once, members along axis 0.

    Members lie along the first axis so that the cumulative sum and the max/min are
    element-wise operations on long contiguous rows (fast in numpy), not per-row loops.

    Parameters
    ----------
    g
        ``(s, ...)`` member weights in ranking order. Overwritten (used as scratch).
    q
        ``(s, ...)`` fraction of non-members before each member, broadcastable to ``g``.
    return_index
        Also return the member index of the extreme deviation (for leading edges).

    Returns
    -------
    es
        ``g.shape[1:]`` enrichment scores.
    index
        Member index ``m`` of the peak (positive ES: the leading edge is members ``<= m``)
        or of the trough (negative ES: members ``>= m``); None unless asked.
    """
    c = _cumsum0(g)
    total = c[-1]
    zero = total <= 0
    if zero.any():
        # All members weigh 0: ES is scale-free, so use the limit of equal tiny weights.
        g[:, zero] = 1
        c[:, zero] = np.cumsum(g[:, zero], axis=0)
        total = c[-1]
    inv = 1.0 / total
    # Running sum right before each member (weight of earlier members only) into g ...
    g[0] = 0
    np.multiply(c[:-1], inv, out=g[1:])
    g -= q
    # ... and right after each member into c.
    c *= inv
    c -= q
    if return_index:
        i_top, i_bot = c.argmax(axis=0), g.argmin(axis=0)
        top = np.take_along_axis(c, i_top[None], 0)[0]
        bot = np.take_along_axis(g, i_bot[None], 0)[0]
    else:
        top, bot = c.max(axis=0), g.min(axis=0)
    top = np.maximum(top, 0)
    bot = np.minimum(bot, 0)
    pos = top > -bot
    es = np.where(pos, top, bot)
    if not return_index:
        return es, None
    return es, np.where(pos, i_top, i_bot)


def _cumsum0(g: np.ndarray) -> np.ndarray:
    """Cumulative sum along axis 0 as row-wise adds (numpy's cumsum over a leading axis
    walks each column with a stride, several times slower)."""
    c = np.empty_like(g)
    c[0] = g[0]
    for m in range(1, g.shape[0]):
        np.add(c[m - 1], g[m], out=c[m])
    return c


def ranked_weights(topic_gene: np.ndarray, weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rank each row in decreasing order and return ``(order, |value|^weight in that order)``.

    Ties keep the input gene order (stable sort), so results are deterministic.
    """
    order = np.argsort(-topic_gene, axis=1, kind="stable")
    ranked = np.abs(np.take_along_axis(topic_gene, order, axis=1))
    if weight != 1:
        ranked = ranked**weight
    return order, ranked


def enrichment_scores(
    topic_gene: np.ndarray, sets: Sequence[Sequence[int]], weight: float = 1.0
) -> np.ndarray:
    """Weighted running-sum enrichment scores of gene sets in each topic's ranking.

    Parameters
    ----------
    topic_gene
        ``(K, V)`` scores; each row is ranked in decreasing order (ties: input order).
    sets
        Gene sets as column indices into ``topic_gene`` (duplicates ignored); each must
        have between 1 and ``V - 1`` members.
    weight
        Exponent ``p`` of the hit weights ``|r|^p`` (1 = Subramanian 2005, 0 = classic KS).

    Returns
    -------
    numpy.ndarray
        ``(K, len(sets))`` enrichment scores.
    """
    w = np.atleast_2d(np.asarray(topic_gene, dtype=np.float64))
    n_topics, n_genes = w.shape
    order, ranked = ranked_weights(w, weight)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n_genes), w.shape), axis=1)
    out = np.empty((n_topics, len(sets)))
    rows = np.arange(n_topics)[None, :]
    for j, members in enumerate(sets):
        members = np.unique(np.asarray(members, dtype=np.int64))
        s = members.size
        if not 0 < s < n_genes:
            raise ValueError(f"set {j} has {s} members; need 1..{n_genes - 1}")
        pos = np.sort(rank[:, members], axis=1).T  # (s, K)
        q = (pos - np.arange(s)[:, None]) / (n_genes - s)
        out[:, j] = _es_kernel(ranked[rows, pos], q)[0]
    return out
