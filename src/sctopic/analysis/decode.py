"""Decoding expected expression from cell-topic proportions with a model's decoder."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def decode_expression(
    model,
    theta: np.ndarray,
    batches: Sequence | None = None,
    *,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Expected expression proportions decoded from cell-topic proportions.

    ``p_i = softmax(decoder_logits(theta_i) + lambda_b(i))`` over the model's genes:
    ``softmax(theta alpha rho + lambda)`` for SCETM, ``softmax(BN(theta beta) + lambda)`` for
    SCE2TM, with the decoder in evaluation mode; the same as
    ``model.get_normalized_expression(topics=theta, batches=batches)``.

    Parameters
    ----------
    model
        A trained :class:`~sctopic.SCETM` or :class:`~sctopic.SCE2TM`.
    theta
        ``(n, K)`` topic proportions (rows sum to 1).
    batches
        Batch label of each cell (values of the model's ``batch_key``) for models with batch
        intercepts. Cells whose batch the model does not know, and all cells when ``None``,
        get the mean intercept over batches (with a warning for unknown labels).
    chunk_size
        Cells decoded at once.

    Returns
    -------
    numpy.ndarray
        ``(n, V)`` float64 proportions over ``model.genes`` (rows sum to 1).
    """
    return model.get_normalized_expression(topics=theta, batches=batches, batch_size=chunk_size)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_normalised(p: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``log1p(p * target_sum)`` of expression proportions (scanpy's normalize_total + log1p)."""
    return np.log1p(np.asarray(p, dtype=np.float64) * target_sum)
