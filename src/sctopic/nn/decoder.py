"""Embedded-topic decoder: topic-gene matrix from gene and topic embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sctopic.nn.likelihood import linear_multinomial_nll, multinomial_nll
from sctopic.nn.precision import full_precision, to_full


def fold_batch_norm(bn: nn.BatchNorm1d, theta: torch.Tensor, beta: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, c)`` with ``theta @ W + c == bn(theta @ beta)``, updating ``bn``'s running
    statistics exactly as its own forward pass would.

    Batch norm of a product is affine in it: per gene ``j``, ``(s_j - m_j) * a_j + b_j`` with
    ``s = theta @ beta``. The batch moments of ``s`` follow from those of ``theta`` without
    forming ``s``: ``m = mean(theta) @ beta`` and ``var_j = beta_j' Cov(theta) beta_j`` (a
    K x K x V product instead of passes over the B x V matrix), and the scale folds into the
    topic-gene matrix. Autograd differentiates through the moments, so gradients are those of
    training-mode batch norm.

    Parameters
    ----------
    bn
        A :class:`torch.nn.BatchNorm1d` over the ``V`` columns (training or eval mode).
    theta
        ``(B, K)``, ``B >= 2`` in training mode.
    beta
        ``(K, V)``.
    """
    with full_precision(theta):
        batch_stats = bn.training or bn.running_mean is None
        if batch_stats:
            n = theta.shape[0]
            if n < 2:
                raise ValueError("batch norm in training mode needs at least 2 cells per minibatch")
            centre = theta.mean(0)
            dev = theta - centre
            cov = (dev.T @ dev) / n
            mean = centre @ beta
            var = ((cov @ beta) * beta).sum(0).clamp_min(0.0)  # biased, as batch norm uses
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                with torch.no_grad():
                    bn.num_batches_tracked.add_(1)
                    f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                    bn.running_mean.mul_(1.0 - f).add_(mean.detach(), alpha=f)
                    bn.running_var.mul_(1.0 - f).add_(var.detach() * (n / (n - 1)), alpha=f)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return beta * scale, shift


def with_intercepts(theta: torch.Tensor, weight: torch.Tensor, intercept: torch.Tensor | None,
                    batch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(theta | onehot(batch)) , (weight ; intercept)``: per-batch gene intercepts as extra
    rows of a product, so ``theta @ weight + intercept[batch]`` is one matmul."""
    if intercept is None or batch is None:
        return theta, weight
    onehot = F.one_hot(batch.long(), intercept.shape[0]).to(theta.dtype)
    return torch.cat([theta, onehot], 1), torch.cat([weight, intercept.to(weight.dtype)], 0)


def pairwise_sq_dist(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(K, V)`` squared Euclidean distances between rows of ``t`` (K x L) and ``g`` (V x L)."""
    # One addmm over the broadcast norms and an in-place clamp: two K x V passes, not five.
    return torch.addmm((t * t).sum(1, keepdim=True) + (g * g).sum(1), t, g.T, alpha=-2.0).clamp_min_(0.0)


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
        """``(K, V)`` squared distances between topic and gene embeddings (always float32:
        the expansion ``|t|^2 + |g|^2 - 2 t.g`` cancels badly in bfloat16)."""
        with full_precision(self.topic_embedding):
            return pairwise_sq_dist(self.topic_embedding, self.gene_embedding)

    def beta(self, cost: torch.Tensor | None = None) -> torch.Tensor:
        """``(K, V)`` topic-gene matrix; columns sum to 1."""
        if cost is None:
            cost = self.cost()
        return torch.softmax(cost * (-1.0 / self.tau), dim=0)

    def logits(self, theta: torch.Tensor, beta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised log expression ``BN(theta beta) + lambda_batch``, ``(B, V)``."""
        logits = to_full(self.bn(theta @ beta))
        if self.batch_intercept is not None and batch is not None:
            logits = logits + self.batch_intercept.index_select(0, batch)
        return logits

    def forward(self, theta: torch.Tensor, beta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Log expression proportions ``(B, V)`` for cell-topic proportions ``theta``."""
        return torch.log_softmax(self.logits(theta, beta, batch), dim=-1)

    def nll(self, x: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor,
            batch: torch.Tensor | None = None) -> torch.Tensor:
        """Per-cell multinomial NLL of counts ``x`` under :meth:`logits`, ``(B,)``.

        Batch norm is folded into the product (:func:`fold_batch_norm`) and the likelihood
        fused (:func:`~sctopic.nn.likelihood.linear_multinomial_nll`), which equals
        ``multinomial_nll(x, self.logits(theta, beta, batch))`` at a fraction of the memory
        traffic. ``SyncBatchNorm`` (multi-GPU training) takes the plain path.
        """
        if isinstance(self.bn, nn.SyncBatchNorm):
            return multinomial_nll(x, self.logits(theta, beta, batch))
        weight, shift = fold_batch_norm(self.bn, theta, beta)
        theta, weight = with_intercepts(theta, weight, self.batch_intercept, batch)
        return linear_multinomial_nll(x, theta, weight, shift)


class LinearTopicDecoder(nn.Module):
    """scETM decoder: ``p = softmax(theta alpha rho + lambda_batch)`` (tri-factorised, linear).

    ``alpha`` (K x L) are topic embeddings, ``rho`` (L x V) gene embeddings. For p-scETM, part
    (or all) of ``rho`` is a fixed pathway-by-gene matrix held as a buffer: it is saved with
    the model but never optimised.

    Parameters
    ----------
    n_genes, n_topics
        V and K.
    emb_dim
        Trainable gene-embedding width (400 in scETM; may be 0 when ``fixed_rho`` is given).
    fixed_rho
        ``(P, V)`` fixed rows of rho (pathways), or ``None``.
    n_batches
        Number of batches for per-batch gene intercepts lambda (0: none). They start at 0.
    """

    def __init__(self, n_genes: int, n_topics: int, emb_dim: int = 400,
                 fixed_rho: torch.Tensor | None = None, n_batches: int = 0):
        super().__init__()
        n_fixed = 0 if fixed_rho is None else int(fixed_rho.shape[0])
        if emb_dim + n_fixed < 1:
            raise ValueError("the decoder needs emb_dim > 0 or a fixed rho")
        if fixed_rho is not None and fixed_rho.shape[1] != n_genes:
            raise ValueError(f"fixed_rho has {fixed_rho.shape[1]} columns, expected {n_genes} genes")
        self.register_buffer("fixed_rho", None if fixed_rho is None else fixed_rho.float().clone())
        self.rho_trainable = nn.Parameter(torch.randn(emb_dim, n_genes)) if emb_dim > 0 else None
        alpha = torch.randn(n_topics, n_fixed + emb_dim)
        # scETM draws alpha from N(0, 1). Against thousands of z-scored pathway rows that gives
        # initial logits of size sqrt(P) (about 60 for GO-BP), which saturates the softmax and
        # leaves theta near uniform; scaling the pathway columns by 1/sqrt(P) starts them at O(1).
        if n_fixed:
            alpha[:, :n_fixed] /= n_fixed ** 0.5
        self.alpha = nn.Parameter(alpha)
        self.batch_intercept = nn.Parameter(torch.zeros(n_batches, n_genes)) if n_batches > 0 else None

    def rho(self) -> torch.Tensor:
        """``(L + P, V)`` gene embeddings: fixed rows first, then trainable ones."""
        parts = [p for p in (self.fixed_rho, self.rho_trainable) if p is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def beta(self) -> torch.Tensor:
        """``(K, V)`` topic-gene logits ``alpha rho`` (unnormalised, as scETM reports them)."""
        return self.alpha @ self.rho()

    def logits(self, theta: torch.Tensor, beta: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised log expression ``theta beta + lambda_batch``, ``(B, V)``."""
        logits = to_full(theta @ beta)
        if self.batch_intercept is not None and batch is not None:
            logits = logits + self.batch_intercept.index_select(0, batch)
        return logits

    def nll(self, x: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor,
            batch: torch.Tensor | None = None) -> torch.Tensor:
        """Per-cell multinomial NLL of counts ``x`` under :meth:`logits`, ``(B,)``, fused
        (see :func:`~sctopic.nn.likelihood.linear_multinomial_nll`)."""
        theta, weight = with_intercepts(theta, beta, self.batch_intercept, batch)
        return linear_multinomial_nll(x, theta, weight)
