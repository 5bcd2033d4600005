"""Embedded-topic decoder: topic-gene matrix from gene and topic embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pairwise_sq_dist(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(K, V)`` squared Euclidean distances between rows of ``t`` (K x L) and ``g`` (V x L)."""
    d = (t * t).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2.0 * (t @ g.T)
    return d.clamp_min(0.0)


class EmbeddedTopicDecoder(nn.Module):
    """scE2TM decoder: ``beta = softmax_k(-||g_m - t_k||^2 / tau)``, ``p = softmax(BN(theta beta) + lambda_b)``.

    Gene and topic embeddings start as truncated-normal vectors (std 0.02) scaled to unit norm,
    as in the reference. The softmax is over topics (each gene's column of beta sums to 1).

    Parameters
    ----------
    n_genes, n_topics
        V and K.
    emb_dim
        Embedding width L (200).
    tau
        Temperature of the softmax (0.2).
    n_batches
        Number of batches for per-batch gene intercepts (0: none).
    """

    def __init__(self, n_genes: int, n_topics: int, emb_dim: int = 200, tau: float = 0.2,
                 n_batches: int = 0):
        super().__init__()
        self.tau = float(tau)
        self.gene_embedding = nn.Parameter(self._init(n_genes, emb_dim))
        self.topic_embedding = nn.Parameter(self._init(n_topics, emb_dim))
        self.bn = nn.BatchNorm1d(n_genes)
        self.batch_intercept = nn.Parameter(torch.zeros(n_batches, n_genes)) if n_batches > 0 else None

    @staticmethod
    def _init(n: int, d: int) -> torch.Tensor:
        w = torch.empty(n, d)
        nn.init.trunc_normal_(w, std=0.02)
        return F.normalize(w, dim=1)

    def cost(self) -> torch.Tensor:
        """``(K, V)`` squared distances between topic and gene embeddings."""
        return pairwise_sq_dist(self.topic_embedding, self.gene_embedding)

    def beta(self, cost: torch.Tensor | None = None) -> torch.Tensor:
        """``(K, V)`` topic-gene matrix; columns sum to 1."""
        if cost is None:
            cost = self.cost()
        return torch.softmax(-cost / self.tau, dim=0)

    def logits(self, theta: torch.Tensor, beta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised log expression ``BN(theta beta) + lambda_batch``, ``(B, V)``."""
        logits = self.bn(theta @ beta)
        if self.batch_intercept is not None and batch is not None:
            logits = logits + self.batch_intercept.index_select(0, batch)
        return logits

    def forward(self, theta: torch.Tensor, beta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Log expression proportions ``(B, V)`` for cell-topic proportions ``theta``."""
        return torch.log_softmax(self.logits(theta, beta, batch), dim=-1)
