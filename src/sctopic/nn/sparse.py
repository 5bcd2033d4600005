"""Small helpers for torch sparse CSR minibatches (counts are 90-98% zeros)."""
from __future__ import annotations

import warnings

import torch


#: torch warns once per process that sparse CSR support is "beta"; it is noise for users here.
_BETA_WARNING = "Sparse (CSR tensor support is in beta|invariant checks)"


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size) -> torch.Tensor:
    """Build a sparse CSR tensor, without torch's once-per-process "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BETA_WARNING)
        return torch.sparse_csr_tensor(crow, col, val, size=tuple(size))


def dense_to_csr(x: torch.Tensor) -> torch.Tensor:
    """A dense tensor as sparse CSR, without torch's "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BETA_WARNING)
        return x.to_sparse_csr()


def csr_row_ids(x: torch.Tensor) -> torch.Tensor:
    """Row index of every stored entry of a sparse CSR tensor."""
    crow = x.crow_indices()
    return torch.repeat_interleave(torch.arange(x.shape[0], device=crow.device), crow[1:] - crow[:-1])


def csr_row_sums(x: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sums ``(B,)`` of a sparse CSR tensor, or of other ``values`` on its entries.

    A sparse matrix-vector product with ones: each row is summed by one thread, in order
    (deterministic), 0.06 ms for 177k entries in 512 rows against 0.53 ms for ``index_add_``,
    which serialises on the repeated row ids (2 cores).
    """
    vals = x.values() if values is None else values
    if vals.dtype not in (torch.float32, torch.float64):  # no sparse mv kernel for these
        out = torch.zeros(x.shape[0], dtype=vals.dtype, device=vals.device)
        return out.index_add_(0, csr_row_ids(x), vals)
    m = x if values is None else csr_tensor(x.crow_indices(), x.col_indices(), vals, x.shape)
    return torch.mv(m, torch.ones(x.shape[1], dtype=vals.dtype, device=vals.device))


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-row sums ``(B,)`` of a dense or sparse CSR tensor."""
    if x.layout == torch.sparse_csr:
        return csr_row_sums(x)
    return x.sum(dim=1)


def csr_head(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of a sparse CSR tensor (a cheap slice of its arrays)."""
    crow = x.crow_indices()[: n + 1]
    end = int(crow[-1])
    return csr_tensor(crow, x.col_indices()[:end], x.values()[:end], (n, x.shape[1]))



def csr_transpose(x: torch.Tensor) -> torch.Tensor:
    """The transpose of a 2-D sparse CSR tensor, itself in CSR layout.

    On the CPU this goes through scipy's O(non-zeros) counting transpose on views of the
    tensor's arrays: 1.0 ms for a 1024 x 5000 batch with 355k entries, against 7.5 ms for
    torch's sort-based ``x.t().to_sparse_csr()`` on 2 cores. Elsewhere torch's own is used.
    """
    if x.device.type != "cpu" or x.values().dtype not in (torch.float32, torch.float64):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_BETA_WARNING)
            return x.t().to_sparse_csr()
    import scipy.sparse as sp

    crow, col, val = (t.numpy() for t in (x.crow_indices(), x.col_indices(), x.values()))
    m = sp.csr_matrix((val, col, crow), shape=tuple(x.shape)).T.tocsr()
    ind = torch.from_numpy(m.indices)
    ptr = torch.from_numpy(m.indptr.astype(m.indices.dtype, copy=False))
    return csr_tensor(ptr, ind, torch.from_numpy(m.data), (x.shape[1], x.shape[0]))


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
