"""Multinomial reconstruction likelihoods of count minibatches.

:func:`multinomial_nll` takes logits a caller has built; :func:`linear_multinomial_nll` builds
them itself from ``theta @ weight + bias`` and keeps only what its backward pass needs. The
``(B, V)`` logits are the largest tensors of a training step (512 x 5000 floats); through
plain autograd they are written and read by a matmul, a logsumexp (max, subtract, exp, sum),
a gather and their backward (a zero fill, a scatter, an exp, a multiply and an add), each a
fresh 10 MB array whose first touch costs page faults. The fused form does it in place;
with batch norm folded in (:func:`sctopic.nn.decoder.fold_batch_norm`) the reconstruction
term of a pbmc3k step (512 x 5000 genes, K = 100, 2 cores) ran 1.3-1.6x faster than through
autograd (``benchmarks/results/step_parts_pbmc3k.md``).
"""
from __future__ import annotations

import torch

from sctopic.nn.precision import autocast_dtype
from sctopic.utils.sparse import csr_row_ids, csr_row_sums, row_sums


def multinomial_nll(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``-sum_g x_g log softmax(logits)_g`` per cell, for dense or sparse CSR counts ``x``.

    Written as ``n_i * logsumexp(logits_i) - sum_g x_g logits_g`` so that the second term
    touches only the non-zero counts.
    """
    lse = torch.logsumexp(logits, dim=1)
    if x.layout == torch.sparse_csr:
        rows = csr_row_ids(x)
        picked = logits[rows, x.col_indices()] * x.values()
        return row_sums(x) * lse - csr_row_sums(x, picked)
    return x.sum(dim=1) * lse - (x * logits).sum(dim=1)


class _LinearMultinomialNLL(torch.autograd.Function):
    """Per-cell ``n_i logsumexp(l_i) - x_i . l_i`` with ``l = theta @ weight + bias``.

    Forward keeps ``exp(l - max)`` (computed in place in the logits' buffer) and the row sums;
    backward turns that buffer into ``dL/dl = g (n softmax(l) - x)`` in place and multiplies
    it out. So the step allocates one ``(B, V)`` array instead of about eight.
    """

    @staticmethod
    def forward(ctx, x, theta, weight, bias, mm_dtype):
        with torch.autocast(device_type=theta.device.type, enabled=False):
            a, w = theta.to(mm_dtype), weight.to(mm_dtype)
            logits = torch.mm(a, w)
            if logits.dtype != theta.dtype:
                logits = logits.to(theta.dtype)
            if bias is not None:
                logits.add_(bias)
            B, V = logits.shape
            if x.layout == torch.sparse_csr:
                rows, vals = csr_row_ids(x), x.values().to(logits.dtype)
                flat = rows * V + x.col_indices()
                dot = csr_row_sums(x, logits.view(-1).index_select(0, flat) * vals)
                n = csr_row_sums(x, vals)
                ctx.sparse = (rows, flat, vals)
            else:
                xd = x.to(logits.dtype)
                dot = torch.linalg.vecdot(xd, logits, dim=1)
                n = xd.sum(1)
                ctx.sparse = None
                ctx.dense_x = xd
            top = logits.amax(dim=1, keepdim=True)
            e = logits.sub_(top).exp_()
            s = e.sum(dim=1)
            loss = n * (top.squeeze(1) + s.log()) - dot
        ctx.save_for_backward(a, w)
        ctx.e, ctx.s, ctx.n = e, s, n
        ctx.theta_dtype, ctx.weight_dtype = theta.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad):
        if ctx.needs_input_grad[0]:
            raise RuntimeError("linear_multinomial_nll does not differentiate with respect to the counts")
        if ctx.e is None:
            raise RuntimeError("linear_multinomial_nll's backward reuses its buffer in place and can "
                               "run once per forward pass (do not use retain_graph through it).")
        a, w = ctx.saved_tensors
        p, ctx.e = ctx.e, None
        g = grad.to(p.dtype)
        p.mul_((g * ctx.n / ctx.s)[:, None])  # n_i softmax(l_i) g_i
        if ctx.sparse is not None:
            rows, flat, vals = ctx.sparse
            p.view(-1).index_add_(0, flat, -(vals * g.index_select(0, rows)))
        else:
            p.addcmul_(ctx.dense_x, g[:, None], value=-1.0)
        grad_bias = p.sum(0) if ctx.needs_input_grad[3] else None
        pl = p.to(a.dtype)
        grad_theta = (pl @ w.T).to(ctx.theta_dtype) if ctx.needs_input_grad[1] else None
        grad_weight = (a.T @ pl).to(ctx.weight_dtype) if ctx.needs_input_grad[2] else None
        return None, grad_theta, grad_weight, grad_bias, None


def linear_multinomial_nll(x: torch.Tensor, theta: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``-sum_g x_g log softmax(theta @ weight + bias)_g`` per cell, without autograd's
    copies of the ``(B, V)`` logits.

    Equal to ``multinomial_nll(x, theta @ weight + bias)`` (checked in the tests), with one
    ``(B, V)`` buffer instead of about eight. Under autocast the two matmuls (forward and backward) run in
    autocast's dtype, as autograd would run them; the softmax and the loss stay in
    ``theta``'s dtype. Its backward may run once per forward.

    Parameters
    ----------
    x
        ``(B, V)`` counts, dense or sparse CSR; no gradient flows to them.
    theta
        ``(B, K)`` cell-topic proportions (or any left factor).
    weight
        ``(K, V)`` right factor.
    bias
        ``(V,)`` per-gene offset, or ``None``.

    Returns
    -------
    ``(B,)`` negative log-likelihood of each cell, up to the multinomial coefficient.
    """
    if theta.dim() != 2 or weight.dim() != 2 or theta.shape[1] != weight.shape[0]:
        raise ValueError(f"theta {tuple(theta.shape)} and weight {tuple(weight.shape)} do not chain")
    if tuple(x.shape) != (theta.shape[0], weight.shape[1]):
        raise ValueError(f"counts {tuple(x.shape)} do not match logits {(theta.shape[0], weight.shape[1])}")
    low = autocast_dtype(theta.device)
    # autocast lowers float32 matmuls only; float64 (the tests' references) stays as it is
    mm_dtype = low if low is not None and theta.dtype == torch.float32 else theta.dtype
    return _LinearMultinomialNLL.apply(x, theta, weight, bias, mm_dtype)
