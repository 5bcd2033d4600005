"""Encoders: the cell-topic encoder (expression -> logistic-normal posterior) and the cluster head."""
from __future__ import annotations

import torch
from torch import nn

from sctopic.nn.precision import full_precision, to_full
from sctopic.nn.sparse import column_major_, sparse_linear


class TopicEncoder(nn.Module):
    """MLP from a cell's expression to the posterior of its topic logits.

    ``Linear -> BatchNorm -> Tanh -> Linear`` then dropout, and batch-normalised linear heads
    for the mean ``mu`` and log-variance of the logistic-normal posterior (scE2TM's encoder).

    Parameters
    ----------
    n_input
        Input width (genes, plus external dimensions when the external view is concatenated).
    n_topics
        Number of topics K.
    n_hidden
        Hidden width (200 in the paper).
    dropout
        Dropout after the MLP (0 in the paper).
    """

    def __init__(self, n_input: int, n_topics: int, n_hidden: int = 200, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            column_major_(nn.Linear(n_input, n_hidden)),  # sparse_linear's layout
            nn.BatchNorm1d(n_hidden),
            nn.Tanh(),
            nn.Linear(n_hidden, n_hidden),
        )
        self.dropout = nn.Dropout(dropout)
        self.mu = nn.Linear(n_hidden, n_topics)
        self.logvar = nn.Linear(n_hidden, n_topics)
        self.mu_bn = nn.BatchNorm1d(n_topics)
        self.logvar_bn = nn.BatchNorm1d(n_topics)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, logvar)``, each ``(B, K)``; ``x`` may be a sparse CSR tensor."""
        if x.layout == torch.sparse_csr:
            first = self.mlp[0]
            # Sparse x dense product: O(non-zeros x hidden), also in the weight gradient;
            # float32 (sparse kernels have no bf16 path, and they are memory-bound anyway).
            with full_precision(x):
                h0 = sparse_linear(x, first.weight, first.bias)
            h = self.mlp[1:](h0)
        else:
            h = self.mlp(x)
        h = self.dropout(h)
        # float32 out: under bf16 autocast only the products above ran in bf16.
        return to_full(self.mu_bn(self.mu(h))), to_full(self.logvar_bn(self.logvar(h)))


class ClusterHead(nn.Module):
    """Cluster head of the Cross-view Encoder: external embedding -> K cluster logits.

    ``Linear(d, h) -> BatchNorm -> Tanh -> Linear(h, K)`` with ``h = d`` as in the reference
    (capped at ``max_hidden`` so very wide embeddings stay cheap).
    """

    def __init__(self, n_input: int, n_clusters: int, max_hidden: int = 512):
        super().__init__()
        h = int(min(n_input, max_hidden)) if n_input >= 16 else 16
        self.net = nn.Sequential(
            nn.Linear(n_input, h),
            nn.BatchNorm1d(h),
            nn.Tanh(),
            nn.Linear(h, n_clusters),
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Cluster logits ``(B, K)`` (apply softmax for assignments), float32."""
        return to_full(self.net(v))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    """``mu + sigma * eps`` when sampling, else ``mu``."""
    if not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class NormalEncoder(nn.Module):
    """scETM's cell encoder: library-normalised expression -> Gaussian posterior of ``delta``.

    ``Linear -> ReLU -> BatchNorm -> Dropout`` then linear heads for the mean and the log
    standard deviation (clamped to [-10, 10] against overflow).

    Parameters
    ----------
    n_input
        Number of genes V.
    n_topics
        Number of topics K.
    n_hidden
        Hidden width (128 as in scETM).
    dropout
        Dropout after the hidden layer (0.1 as in scETM).
    """

    def __init__(self, n_input: int, n_topics: int, n_hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.first = column_major_(nn.Linear(n_input, n_hidden))  # sparse_linear's layout
        self.rest = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(n_hidden), nn.Dropout(dropout))
        self.mu = nn.Linear(n_hidden, n_topics)
        self.logsigma = nn.Linear(n_hidden, n_topics)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, logsigma)``, each ``(B, K)``; ``x`` may be a sparse CSR tensor."""
        if x.layout == torch.sparse_csr:
            with full_precision(x):  # O(non-zeros x hidden), float32 (see TopicEncoder)
                h = sparse_linear(x, self.first.weight, self.first.bias)
        else:
            h = self.first(x)
        h = self.rest(h)
        return to_full(self.mu(h)), to_full(self.logsigma(h)).clamp(-10.0, 10.0)


class BatchDiscriminator(nn.Module):
    """Adversary of scETM+adv: predicts a cell's batch from its topic logits ``delta``.

    ``Linear -> ReLU -> Dropout -> Linear`` (hidden 128, dropout 0.2).
    """

    def __init__(self, n_topics: int, n_batches: int, n_hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_topics, n_hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(n_hidden, n_batches))

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """Batch logits ``(B, n_batches)``, float32."""
        return to_full(self.net(delta))
