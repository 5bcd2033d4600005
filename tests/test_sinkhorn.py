"""Sinkhorn / ECR against POT and a float64 plain implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sctopic.nn.sinkhorn import ECR, sinkhorn_stabilized, sinkhorn_unrolled

ot = pytest.importorskip("ot")


def _problem(K=12, V=80, L=6, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(K, L, generator=g, dtype=dtype) * scale
    x = torch.randn(V, L, generator=g, dtype=dtype) * scale
    C = torch.cdist(t, x) ** 2
    a = torch.full((K,), 1.0 / K, dtype=dtype)
    b = torch.full((V,), 1.0 / V, dtype=dtype)
    return C, a, b


def _pot_log(C, a, b, eps, stop=1e-12):
    return ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), reg=eps, method="sinkhorn_log",
                       stopThr=stop, numItermax=20000)


def test_plan_and_cost_match_pot():
    C, a, b = _problem()
    plan, f, g, it, err = sinkhorn_stabilized(C, a, b, eps=0.05, tol=1e-10, max_iter=100000)
    ref = _pot_log(C, a, b, 0.05)
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-9)
    assert abs(float((plan * C).sum()) - float((ref * C.numpy()).sum())) < 1e-7
    # Marginals.
    np.testing.assert_allclose(plan.sum(1).numpy(), a.numpy(), atol=1e-9)
    np.testing.assert_allclose(plan.sum(0).numpy(), b.numpy(), atol=1e-12)


def test_no_underflow_where_naive_kernel_fails():
    # Adding a constant to the cost leaves the plan unchanged, but with costs above ~37 the
    # naive kernel exp(-C/0.05) is exactly 0 in float64 and the plain algorithm divides 0/0.
    C0, a, b = _problem(seed=1)
    C = C0 + 60.0
    assert float(torch.exp(-C / 0.05).max()) == 0.0
    with np.errstate(all="ignore"), pytest.warns(UserWarning):
        naive = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), reg=0.05, method="sinkhorn", numItermax=50)
    assert not np.isfinite(naive).all() or np.abs(naive.sum(1) - a.numpy()).sum() > 1e-3
    plan, *_ = sinkhorn_stabilized(C, a, b, eps=0.05, tol=1e-10, max_iter=100000)
    assert torch.isfinite(plan).all()
    ref = _pot_log(C0, a, b, 0.05)
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-9)


def test_float32_large_costs_stay_finite():
    # Growing embedding norms: costs of several hundred (float32 kernel underflows at ~4.4).
    C0, a, b = _problem(K=12, V=100, seed=2, dtype=torch.float32)
    C = C0 + 300.0
    assert float(torch.exp(-C / 0.05).max()) == 0.0
    plan, f, g, it, err = sinkhorn_stabilized(C, a, b, eps=0.05, tol=1e-4)
    assert torch.isfinite(plan).all() and err < 1e-4
    ref = _pot_log(C0.double(), a.double(), b.double(), 0.05, stop=1e-8)
    assert np.abs(plan.double().numpy() - ref).sum() < 1e-3


def test_warm_start_converges_to_the_same_plan_faster():
    C, a, b = _problem(K=30, V=400, seed=3)
    p0, f, g, it0, _ = sinkhorn_stabilized(C, a, b, eps=0.05, tol=1e-8, max_iter=100000)
    C2 = C * 1.01 + 0.001
    cold, _, _, it_cold, _ = sinkhorn_stabilized(C2, a, b, eps=0.05, tol=1e-8, max_iter=100000)
    warm, _, _, it_warm, _ = sinkhorn_stabilized(C2, a, b, eps=0.05, f=f, g=g, tol=1e-8, max_iter=100000)
    np.testing.assert_allclose(warm.numpy(), cold.numpy(), atol=1e-8)
    assert it_warm < it_cold


def test_envelope_gradient_is_the_plan_and_matches_unrolled_value():
    C, a, b = _problem(K=8, V=50, seed=4)
    C = C.clone().requires_grad_(True)
    ecr = ECR(8, 50, eps=0.05, grad="envelope", tol=1e-10, max_iter=100000).double()
    loss = ecr(C)
    (grad,) = torch.autograd.grad(loss, C)
    plan = torch.as_tensor(_pot_log(C.detach(), a, b, 0.05))
    np.testing.assert_allclose(grad.numpy(), plan.numpy(), atol=1e-8)
    # The unrolled variant (reference behaviour) gives the same loss value at convergence.
    plan_u, _ = sinkhorn_unrolled(C, a, b, eps=0.05, tol=1e-9, max_iter=5000, check_every=1)
    assert abs(float((plan_u * C).sum()) - float(loss)) < 1e-6
    # ... and its gradient flows through the iterations (it differs from the envelope one).
    (grad_u,) = torch.autograd.grad((plan_u * C).sum(), C)
    assert torch.isfinite(grad_u).all()
    assert float((grad_u - grad).abs().max()) > 1e-6


def test_ecr_warm_state_updates_only_in_training():
    C, a, b = _problem(K=8, V=50, seed=5, dtype=torch.float32)
    ecr = ECR(8, 50)
    ecr.eval()
    ecr(C)
    assert not bool(ecr.warm)
    ecr.train()
    ecr(C)
    assert bool(ecr.warm)
    first = ecr.last_iterations
    ecr(C)
    assert ecr.last_iterations <= first


def test_implicit_gradient_equals_unrolled_limit():
    # The implicit-differentiation gradient of <P*(C), C> equals autograd through a fully
    # converged unrolled solve (float64), and differs from the envelope gradient (the plan).
    C, a, b = _problem(K=6, V=40, seed=6)
    C1 = C.clone().requires_grad_(True)
    plan_u, _ = sinkhorn_unrolled(C1, a, b, eps=0.05, tol=1e-12, max_iter=20000, check_every=1)
    (g_unrolled,) = torch.autograd.grad((plan_u * C1).sum(), C1)
    C2 = C.clone().requires_grad_(True)
    ecr = ECR(6, 40, eps=0.05, grad="implicit", tol=1e-12, max_iter=100000).double()
    (g_implicit,) = torch.autograd.grad(ecr(C2), C2)
    np.testing.assert_allclose(g_implicit.numpy(), g_unrolled.numpy(), atol=1e-7, rtol=1e-5)
    assert float((g_implicit - ecr_plan(C, a, b)).abs().max()) > 1e-4


def test_implicit_gradient_in_float32_matches_float64():
    # The backward solves the ill-conditioned K x K system in float64 and makes its K x V
    # passes in the input's precision; from float32 inputs (the training dtype) it must agree
    # with an all-float64 solve.
    g = torch.Generator().manual_seed(3)
    t = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=1)
    x = torch.nn.functional.normalize(torch.randn(1500, 16, generator=g), dim=1)
    C = torch.cdist(t, x) ** 2
    C32, C64 = C.clone().requires_grad_(True), C.double().requires_grad_(True)
    (g32,) = torch.autograd.grad(ECR(60, 1500, tol=1e-5)(C32), C32)
    (g64,) = torch.autograd.grad(ECR(60, 1500, tol=1e-5).double()(C64), C64)
    assert g32.dtype == torch.float32
    assert float((g32.double() - g64).norm() / g64.norm()) < 1e-4
    # ... and differ from the envelope gradient (the plan) by far more than that.
    assert float((g64 - ecr_plan(C.double(), torch.full((60,), 1 / 60, dtype=torch.float64),
                                 torch.full((1500,), 1 / 1500, dtype=torch.float64))).norm() / g64.norm()) > 1e-2


def ecr_plan(C, a, b):
    return torch.as_tensor(_pot_log(C, a, b, 0.05))


def test_implicit_gradient_with_unequal_marginals_equals_unrolled_limit():
    # ECR uses uniform masses; the backward is written for any (a, b), and its rescaling by
    # b^-1/2 only shows with unequal ones.
    from sctopic.nn.sinkhorn import TransportCost

    C, _, _ = _problem(K=5, V=30, seed=8)
    g = torch.Generator().manual_seed(9)
    a = torch.rand(5, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(30, generator=g, dtype=torch.float64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    C1 = C.clone().requires_grad_(True)
    plan_u, _ = sinkhorn_unrolled(C1, a, b, eps=0.05, tol=1e-12, max_iter=20000, check_every=1)
    (g_unrolled,) = torch.autograd.grad((plan_u * C1).sum(), C1)
    plan = sinkhorn_stabilized(C, a, b, eps=0.05, tol=1e-13, max_iter=100000)[0]
    C2 = C.clone().requires_grad_(True)
    (g_implicit,) = torch.autograd.grad(TransportCost.apply(C2, plan, a, b, 0.05), C2)
    np.testing.assert_allclose(g_implicit.numpy(), g_unrolled.numpy(), atol=1e-7, rtol=1e-5)


def test_unrolled_checks_convergence_at_every_interval_including_one():
    # check_every=1 used to never check (it % 1 == 1 is never true) and always ran max_iter.
    C, a, b = _problem(K=6, V=40, seed=6)
    for every in (1, 7, 50):
        plan, it = sinkhorn_unrolled(C, a, b, eps=0.05, tol=1e-9, max_iter=20000, check_every=every)
        assert it < 20000 and (it - 1) % every == 0
        assert float((plan.sum(1) - a).abs().sum()) < 1e-9
