"""The API every topic model's torch module implements (scvi-tools' module split).

* ``inference(x, v=None) -> dict``: the posterior of a minibatch of cells, with at least
  ``mu`` (posterior-mean topic logits, delta), ``z`` (a sample in training mode, ``mu`` in
  evaluation mode) and ``theta = softmax(z)``;
* ``generative(theta, batch=None) -> dict``: ``logits`` (unnormalised log expression) and
  ``expression`` (``softmax(logits)``, proportions over genes) decoded from cell-topic
  proportions;
* ``loss(x, inference_outputs, ...) -> dict``: named loss terms and their weighted sum
  ``"loss"``, what the training plan minimises; ``forward(**batch)`` is ``inference`` followed
  by ``loss`` (the entry point of DistributedDataParallel);
* ``reconstruction_nll(x, batch=None, v=None) -> (B,)``: each cell's reconstruction term
  alone, as ``loss`` computes it (what early stopping measures on held-out cells);
* ``topic_gene()``, ``gene_embedding()``, ``topic_embedding()``: the learnt matrices.

Pure torch: no AnnData, no training loop.
"""
from __future__ import annotations

import torch
from torch import nn


def batch_offsets(intercept: torch.Tensor | None, batch: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``(n, V)`` per-batch gene intercepts of ``n`` decoded cells, or None without intercepts.

    Codes outside ``0..B-1`` (e.g. -1 for a batch the model does not know), and all cells
    when ``batch`` is None, get the mean intercept over the batches.
    """
    if intercept is None:
        return None
    # Rows 0..B-1: the batches' intercepts; row B: their mean (unknown batch).
    table = torch.cat([intercept, intercept.mean(0, keepdim=True)], 0)
    unknown = table.shape[0] - 1
    if batch is None:
        idx = torch.full((n,), unknown, dtype=torch.long, device=table.device)
    else:
        idx = batch.to(device=table.device, dtype=torch.long)
        idx = torch.where((idx < 0) | (idx >= unknown), torch.full_like(idx, unknown), idx)
    return table.index_select(0, idx)


class TopicModule(nn.Module):
    """Shared surface of the topic modules; subclasses define ``encoder``/``decoder`` use,
    :meth:`inference` and :meth:`loss`."""

    decoder: nn.Module

    def inference(self, x: torch.Tensor, v: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def reconstruction_nll(self, x: torch.Tensor, batch: torch.Tensor | None = None,
                           v: torch.Tensor | None = None) -> torch.Tensor:
        """Each cell's reconstruction term, ``(B,)``: the multinomial NLL of its counts given
        its own theta, the per-cell value whose mean :meth:`loss` reports as
        ``"reconstruction"``.

        In evaluation mode (as early stopping calls it) theta is the softmax of the posterior
        mean and batch norm uses its running statistics, so each cell scores independently of
        the others and no random number is drawn.

        Parameters
        ----------
        x
            ``(B, V)`` counts, dense or sparse CSR.
        batch
            ``(B,)`` batch codes for decoders with intercepts.
        v
            Per-cell encoder input besides the counts (the external view of SCE2TM's
            ``external_concat``), or None.
        """
        posterior = self.inference(x, v)
        return self.decoder.nll(x, posterior["theta"], self.decoder.beta(), batch)

    @torch.no_grad()
    def infer(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Topic logits delta (posterior means) of cells ``x``; theta is their softmax."""
        return self.inference(x, v)["mu"]

    def generative(self, theta: torch.Tensor, batch: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Expression decoded from ``(n, K)`` cell-topic proportions ``theta``.

        Parameters
        ----------
        theta
            Cell-topic proportions (rows sum to 1).
        batch
            ``(n,)`` batch codes for models with per-batch intercepts (see
            :func:`batch_offsets`: unknown codes and ``None`` get the mean intercept).

        Returns
        -------
        dict
            ``logits`` ``(n, V)`` and ``expression = softmax(logits)``. In evaluation mode
            batch norm uses its running statistics, so each cell decodes independently.
        """
        logits = self.decoder.logits(theta, self.decoder.beta(), None)
        offsets = batch_offsets(self.decoder.batch_intercept, batch, theta.shape[0])
        if offsets is not None:
            logits = logits + offsets
        return {"logits": logits, "expression": torch.softmax(logits, dim=-1)}

    @torch.no_grad()
    def topic_gene(self) -> torch.Tensor:
        """``(K, V)`` topic-gene matrix."""
        return self.decoder.beta()

    def gene_embedding(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def topic_embedding(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


__all__ = ["TopicModule", "batch_offsets"]
