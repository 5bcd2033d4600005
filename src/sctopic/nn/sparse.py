"""Sparse autograd ops for the encoder's first layer: :func:`sparse_linear` and the weight
layout it wants (:func:`column_major_`). The CSR data-structure helpers are in
:mod:`sctopic.utils.sparse`.
"""
from __future__ import annotations

import torch

from sctopic.utils.sparse import csr_transpose


class _SparseLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` for a sparse CSR ``x`` that needs no gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # csr @ (contiguous V x H) is twice as fast as csr @ weight.T (a strided view), and
        # mm + add_ beats addmm's broadcast bias with a sparse operand (5.2 vs 8.7 ms).
        # A column-major weight (see :func:`column_major_`) needs no copy here.
        w_t = weight.t()
        ctx.column_major = w_t.is_contiguous()
        out = torch.mm(x, w_t if ctx.column_major else w_t.contiguous())
        if bias is not None:
            out.add_(bias)
        ctx.x = x
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.needs_input_grad[0]:
            raise RuntimeError("sparse_linear does not differentiate with respect to its sparse input")
        x = ctx.x
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            # x.T @ grad with x.T built once in CSR: the autograd path of torch.mm transposes
            # the batch by sorting its entries, which took most of the layer's backward.
            grad_w = torch.mm(csr_transpose(x), grad.contiguous()).t()
            if not ctx.column_major:  # match the parameter's layout (autograd would copy anyway)
                grad_w = grad_w.contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return None, grad_w, grad_b


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for a sparse CSR ``x`` (``(B, V)``), dense ``(B, H)`` out.

    Forward and weight gradient both cost O(non-zeros x H); ``x`` itself gets no gradient
    (it holds counts). Runs in the dtype of ``weight`` (call it outside autocast).

    Parameters
    ----------
    x
        ``(B, V)`` sparse CSR tensor.
    weight
        ``(H, V)`` weight, as in :class:`torch.nn.Linear`.
    bias
        ``(H,)`` bias or ``None``.
    """
    if x.layout != torch.sparse_csr:
        raise ValueError(f"sparse_linear needs a sparse CSR input, got layout {x.layout}")
    return _SparseLinear.apply(x, weight, bias)


def column_major_(linear: torch.nn.Linear) -> torch.nn.Linear:
    """Store ``linear.weight`` (``(out, in)``) column-major, in place; values unchanged.

    Why: :func:`sparse_linear` multiplies a CSR batch by ``weight.T`` and its weight gradient
    comes out as ``(x.T @ grad)``, both ``(in, out)`` row-major. With the weight stored that
    way neither needs a transposing copy (two 4 MB copies per step for 5000 genes x 200).
    Dense ``F.linear`` reads either layout without a copy. The weight's gradient and the
    optimiser's state follow the parameter's layout, and ``state_dict`` values load into it
    whatever layout they were saved in.
    """
    w = linear.weight
    linear.weight = torch.nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)
    return linear
