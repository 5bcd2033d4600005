"""Fused likelihood, folded batch norm and the sparse first layer against plain autograd."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sctopic.nn.decoder import EmbeddedTopicDecoder, LinearTopicDecoder, fold_batch_norm
from sctopic.nn.likelihood import linear_multinomial_nll, multinomial_nll
from sctopic.nn.sparse import column_major_, sparse_linear
from sctopic.utils.sparse import csr_transpose, dense_to_csr

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _counts(B, V, seed, dtype=torch.float64, empty_row=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(B, V, generator=g, dtype=dtype) * 0.6)  # mostly zeros
    if empty_row:
        x[1] = 0.0  # a cell with no counts contributes 0 and must not break anything
    return x


def _leaves(B, K, V, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.softmax(torch.randn(B, K, generator=g, dtype=dtype) * 2, 1)
    w = torch.randn(K, V, generator=g, dtype=dtype) * scale
    b = torch.randn(V, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (theta, w, b)]


def _grads(loss, leaves):
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("scale", [1.0, 300.0])  # 300: logits far beyond exp's range
def test_linear_multinomial_nll_equals_plain_autograd(layout, scale):
    B, K, V = 9, 5, 23
    x = _counts(B, V, 0)
    xin = dense_to_csr(x) if layout == "csr" else x
    theta, w, b = _leaves(B, K, V, 1, scale=scale)
    ref = multinomial_nll(x, theta @ w + b)
    assert torch.isfinite(ref).all()
    weights = torch.linspace(0.5, 2.0, B, dtype=torch.float64)  # a non-uniform upstream gradient
    ref_g = _grads((ref * weights).sum(), [theta, w, b])
    out = linear_multinomial_nll(xin, theta, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-9)
    for got, want in zip(_grads((out * weights).sum(), [theta, w, b]), ref_g):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert float(out[1].detach()) == 0.0  # empty cell


def test_linear_multinomial_nll_without_bias_and_a_hand_computed_cell():
    x = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64).repeat(2, 1)
    theta = torch.tensor([[0.25, 0.75], [1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    out = linear_multinomial_nll(x, theta, w)
    l0 = theta[0] @ w
    p = torch.exp(l0) / torch.exp(l0).sum()
    assert float(out[0]) == pytest.approx(-(2 * np.log(float(p[0])) + np.log(float(p[2]))), rel=1e-12)


def test_linear_multinomial_nll_backward_twice_is_refused():
    x = _counts(4, 6, 2)
    theta, w, b = _leaves(4, 3, 6, 3)
    out = linear_multinomial_nll(x, theta, w, b).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once per forward"):
        out.backward()


def test_linear_multinomial_nll_shape_errors():
    x = _counts(4, 6, 2)
    theta, w, b = _leaves(4, 3, 6, 3)
    with pytest.raises(ValueError, match="do not chain"):
        linear_multinomial_nll(x, theta, w.T)
    with pytest.raises(ValueError, match="do not match"):
        linear_multinomial_nll(x[:3], theta, w)


def test_linear_multinomial_nll_under_bf16_autocast_is_close_and_float32():
    B, K, V = 64, 10, 300
    x = _counts(B, V, 4, dtype=torch.float32)
    theta, w, b = (t.detach().float().requires_grad_() for t in _leaves(B, K, V, 5))
    ref = multinomial_nll(x, theta @ w + b)
    ref_g = _grads(ref.sum(), [theta, w, b])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_multinomial_nll(x, theta, w, b)
    assert out.dtype == torch.float32
    got = _grads(out.sum(), [theta, w, b])
    assert all(g.dtype == torch.float32 for g in got)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=0.5)
    for gg, rg in zip(got, ref_g):
        assert float((gg - rg).norm() / rg.norm()) < 2e-2
    # The product really ran in bfloat16 (it differs from the float32 result).
    assert not torch.equal(out, ref)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fold_batch_norm_equals_batch_norm_of_the_product(momentum):
    B, K, V = 12, 4, 17
    theta, beta, _ = _leaves(B, K, V, 6)
    bn = nn.BatchNorm1d(V, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
    ref_bn = nn.BatchNorm1d(V, momentum=momentum).double()
    ref_bn.load_state_dict(bn.state_dict())
    for _ in range(2):  # twice: the running averages compound
        w, c = fold_batch_norm(bn, theta, beta)
        got = theta @ w + c
        want = ref_bn(theta @ beta)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(ref_bn, name), rtol=1e-10, atol=1e-12)
    u = torch.randn(B, V, dtype=torch.float64)
    leaves = [theta, beta, bn.weight, bn.bias]
    ref_leaves = [theta, beta, ref_bn.weight, ref_bn.bias]
    for g1, g2 in zip(_grads((got * u).sum(), leaves), _grads((want * u).sum(), ref_leaves)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)
    bn.eval(), ref_bn.eval()
    w, c = fold_batch_norm(bn, theta, beta)
    torch.testing.assert_close(theta @ w + c, ref_bn(theta @ beta), rtol=1e-10, atol=1e-10)


def test_fold_batch_norm_refuses_a_single_cell_in_training():
    bn = nn.BatchNorm1d(5).double()
    theta, beta, _ = _leaves(1, 3, 5, 7)
    with pytest.raises(ValueError, match="at least 2 cells"):
        fold_batch_norm(bn, theta, beta)


@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("kind", ["embedded", "linear"])
def test_decoder_nll_equals_logits_then_multinomial(layout, kind):
    B, K, V, nb = 10, 4, 15, 3
    torch.manual_seed(8)
    dec = (EmbeddedTopicDecoder(V, K, emb_dim=6, n_batches=nb) if kind == "embedded"
           else LinearTopicDecoder(V, K, emb_dim=6, n_batches=nb)).double()
    with torch.no_grad():
        dec.batch_intercept.normal_()
    twin = copy.deepcopy(dec)
    theta = torch.softmax(torch.randn(B, K, dtype=torch.float64), 1).requires_grad_()
    batch = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    x = _counts(B, V, 9)
    xin = dense_to_csr(x) if layout == "csr" else x
    got = dec.nll(xin, theta, dec.beta(), batch)
    want = multinomial_nll(x, twin.logits(theta, twin.beta(), batch))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    p1 = [theta] + list(dec.parameters())
    p2 = [theta] + list(twin.parameters())
    for g1, g2 in zip(_grads(got.sum(), p1), _grads(want.sum(), p2)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)
    if kind == "embedded":
        torch.testing.assert_close(dec.bn.running_var, twin.bn.running_var, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_csr_transpose_and_sparse_linear(index_dtype):
    x = _counts(30, 40, 10, dtype=torch.float32)
    x[:, 7] = 0.0  # an empty column becomes an empty row of the transpose
    xs = dense_to_csr(x)
    if index_dtype == torch.int32:
        xs = torch.sparse_csr_tensor(xs.crow_indices().int(), xs.col_indices().int(), xs.values(), xs.shape)
    t = csr_transpose(xs)
    assert t.layout == torch.sparse_csr and tuple(t.shape) == (40, 30)
    torch.testing.assert_close(t.to_dense(), x.T)
    torch.testing.assert_close(csr_transpose(t).to_dense(), x)

    g = torch.Generator().manual_seed(11)
    w = torch.randn(8, 40, generator=g).requires_grad_()
    b = torch.randn(8, generator=g).requires_grad_()
    u = torch.randn(30, 8, generator=g)
    out = sparse_linear(xs, w, b)
    ref = x @ w.T + b
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(_grads((out * u).sum(), [w, b]), _grads((ref * u).sum(), [w, b])):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-4)
    assert sparse_linear(xs, w).shape == (30, 8)
    with pytest.raises(ValueError, match="sparse CSR input"):
        sparse_linear(x, w, b)


def test_column_major_weight_keeps_values_and_takes_gradients_in_its_layout():
    torch.manual_seed(5)
    lin = torch.nn.Linear(40, 8)
    before = lin.weight.detach().clone()
    column_major_(lin)
    w = lin.weight
    assert w.shape == (8, 40) and w.stride() == (1, 8) and w.requires_grad
    torch.testing.assert_close(w.detach(), before, rtol=0, atol=0)
    x = _counts(30, 40, 10, dtype=torch.float32)
    u = torch.randn(30, 8)
    # sparse: the gradient arrives already column-major (no transposing copy) and equals
    # plain autograd on the dense product with a row-major copy of the weight
    (sparse_linear(dense_to_csr(x), w, lin.bias) * u).sum().backward()
    assert w.grad.stride() == (1, 8)
    ref_w = before.clone().requires_grad_()
    ((x @ ref_w.T + lin.bias.detach()) * u).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-5, atol=1e-4)
    # dense forward reads the layout as it is
    torch.testing.assert_close(lin(x), x @ before.T + lin.bias, rtol=1e-5, atol=1e-4)
    # a row-major state_dict (an older checkpoint) loads into it, the layout stays
    old = torch.nn.Linear(40, 8)
    lin.load_state_dict(old.state_dict())
    assert lin.weight.stride() == (1, 8)
    torch.testing.assert_close(lin.weight.detach(), old.weight.detach(), rtol=0, atol=0)
