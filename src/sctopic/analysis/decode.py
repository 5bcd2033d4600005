"""Decoding expected expression from cell-topic proportions with a model's decoder."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from sctopic.errors import InputError


def batch_codes(model, batches: Sequence | None) -> np.ndarray | None:
    """Indices of ``batches`` among the model's batch categories (-1: unknown or no batch).

    Returns ``None`` when the model has no batch intercepts.
    """
    cats = list(getattr(model, "batch_categories_", []) or [])
    if not cats:
        return None
    if batches is None:
        return None
    lookup = {c: i for i, c in enumerate(cats)}
    return np.array([lookup.get(str(b), -1) for b in batches], dtype=np.int64)


def decode_expression(
    model,
    theta: np.ndarray,
    batches: Sequence | None = None,
    *,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Expected expression proportions decoded from cell-topic proportions.

    ``p_i = softmax(decoder_logits(theta_i) + lambda_b(i))`` over the model's genes, i.e. the
    mean of the multinomial the model reconstructs counts from, divided by the library size:
    ``softmax(theta alpha rho + lambda)`` for SCETM, ``softmax(BN(theta beta) + lambda)`` for
    SCE2TM (batch norm with its running statistics, the decoder in evaluation mode, so each
    cell is decoded independently of the others).

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
    import torch

    model._check_trained()
    theta = np.asarray(theta, dtype=np.float32)
    if theta.ndim != 2 or theta.shape[1] != model.n_topics:
        raise InputError(f"theta has shape {theta.shape}; expected cells x {model.n_topics} topics.")
    module = model.module
    decoder = module.decoder
    dev = getattr(model, "device", torch.device("cpu"))
    intercept = getattr(decoder, "batch_intercept", None)
    codes = batch_codes(model, batches) if intercept is not None else None
    if codes is not None and len(codes) != theta.shape[0]:
        raise InputError(f"{len(codes)} batch labels for {theta.shape[0]} cells.")
    if codes is not None and (codes < 0).any():
        warnings.warn(
            f"{int((codes < 0).sum())} cells have a batch the model does not know; they are "
            "decoded with the mean batch intercept.", UserWarning, stacklevel=2,
        )
    was_training = module.training
    module.eval()
    out = []
    try:
        with torch.no_grad():
            beta = model._beta().to(dev)
            lam = None
            if intercept is not None:
                # Rows 0..B-1: the batches' intercepts; row B: their mean (unknown batch).
                lam = torch.cat([intercept, intercept.mean(0, keepdim=True)], 0)
            for start in range(0, theta.shape[0], chunk_size):
                th = torch.as_tensor(theta[start:start + chunk_size], device=dev)
                logits = decoder.logits(th, beta, None)
                if lam is not None:
                    if codes is None:
                        idx = torch.full((th.shape[0],), lam.shape[0] - 1, dtype=torch.long, device=dev)
                    else:
                        c = codes[start:start + chunk_size].copy()
                        c[c < 0] = lam.shape[0] - 1
                        idx = torch.as_tensor(c, device=dev)
                    logits = logits + lam.index_select(0, idx)
                out.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    finally:
        module.train(was_training)
    if not out:
        return np.zeros((0, len(model.genes)))
    return np.concatenate(out, 0)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_normalised(p: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``log1p(p * target_sum)`` of expression proportions (scanpy's normalize_total + log1p)."""
    return np.log1p(np.asarray(p, dtype=np.float64) * target_sum)
