"""GSEA's own FDR (Subramanian et al. 2005): observed NES against NES pooled over all sets.

For a set with ``NES* >= 0`` in a topic,

    FDR = [share of null NES >= NES* among null NES >= 0, pooled over all sets]
          / [share of observed NES >= NES* among observed NES >= 0]

(mirrored for negative NES), capped at 1. This is the ``FDR q-val`` of GSEA and gseapy. Its
resolution comes from pooling ``sets x permutations`` null scores, so unlike BH on
permutation p-values it is not floored at ``m / (permutations + 1)``.

The pooled null is kept as a fixed-width histogram of null NES per topic (bins of 1/512
on [-16, 16)), weighted by how many sets use each size's null, so memory does not grow
with permutations or set sizes. An observed NES counts the whole bin it falls in, so the
FDR is very slightly conservative (by at most one bin of null mass).
"""
from __future__ import annotations

import numpy as np

_SCALE = 512  # bins per NES unit (a power of 2 puts 0 exactly on a bin edge)
_LO = -16.0
_NBINS = int(-2 * _LO * _SCALE)
_ZERO_BIN = int(-_LO * _SCALE)


def _bins(nes: np.ndarray) -> np.ndarray:
    idx = np.floor((nes - _LO) * _SCALE)
    return np.clip(idx, 0, _NBINS - 1).astype(np.int64)


class PooledNullNES:
    """Weighted histogram of null NES, one per topic."""

    def __init__(self, n_topics: int) -> None:
        self.n_topics = n_topics
        self.hist = np.zeros((n_topics, _NBINS))

    def add(self, null_es: np.ndarray, mean_pos: np.ndarray, mean_neg: np.ndarray, weight: float) -> None:
        """Add one (topic x permutations) null, normalised by its own same-signed means.

        ``weight`` is the number of sets that use this null (fractional in grid mode).
        """
        if weight <= 0:
            return
        null_es = null_es.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            nes = np.where(null_es >= 0, null_es / mean_pos[:, None], null_es / np.abs(mean_neg)[:, None])
        ok = np.isfinite(nes)
        rows = np.broadcast_to(np.arange(self.n_topics)[:, None], nes.shape)[ok]
        flat = rows * _NBINS + _bins(nes[ok])
        counts = np.bincount(flat, minlength=self.n_topics * _NBINS).reshape(self.n_topics, _NBINS)
        self.hist += weight * counts

    def fdr(self, obs_nes: np.ndarray) -> np.ndarray:
        """GSEA FDR of observed ``(K, S)`` NES (NaN stays NaN)."""
        out = np.full(obs_nes.shape, np.nan)
        ge = np.cumsum(self.hist[:, ::-1], axis=1)[:, ::-1]  # null mass in bins >= b
        le = np.cumsum(self.hist, axis=1)  # null mass in bins <= b
        for k in range(self.n_topics):
            obs = obs_nes[k]
            fin = np.isfinite(obs)
            pos, neg = fin & (obs >= 0), fin & (obs < 0)
            srt = np.sort(obs[fin])
            b = _bins(np.where(fin, obs, 0.0))
            if pos.any():
                null_share = ge[k, b[pos]] / max(ge[k, _ZERO_BIN], 1e-300)
                n_obs_pos = srt.size - np.searchsorted(srt, 0.0, side="left")
                obs_share = (srt.size - np.searchsorted(srt, obs[pos], side="left")) / n_obs_pos
                out[k, pos] = null_share / obs_share
            if neg.any():
                null_share = le[k, b[neg]] / max(le[k, _ZERO_BIN - 1], 1e-300)
                n_obs_neg = np.searchsorted(srt, 0.0, side="left")
                obs_share = np.searchsorted(srt, obs[neg], side="right") / n_obs_neg
                out[k, neg] = null_share / obs_share
        return np.minimum(out, 1.0)
