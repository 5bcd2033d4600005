"""The GPU path of issue 20, tested on the CPU where it can be: the fixed-iteration Sinkhorn
solver, the float32 solve of the implicit ECR gradient, and the graph-safe training step (the
code a CUDA graph captures, run without capture). Tests marked ``cuda`` need a GPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sctopic.nn.sinkhorn import (
    ECR,
    TransportCost,
    default_check_every,
    sinkhorn_fixed,
    sinkhorn_stabilized,
    sinkhorn_unrolled,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _embeddings_cost(K: int, V: int, L: int = 200, scale: float = 0.9, seed: int = 0,
                     dtype=torch.float32) -> torch.Tensor:
    """Squared distances between random topic and gene embeddings of norm ``scale``.

    0.9 is the norm of the embeddings of SCE2TMs trained on pbmc3k (40 epochs) and Kang
    (60 epochs); larger norms make the plans more concentrated (each gene on one topic)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.nn.functional.normalize(torch.randn(K, L, generator=g, dtype=torch.float64), dim=1) * scale
    x = torch.nn.functional.normalize(torch.randn(V, L, generator=g, dtype=torch.float64), dim=1) * scale
    return (torch.cdist(t, x) ** 2).to(dtype)


def _uniform(K: int, V: int, dtype=torch.float32):
    return torch.full((K,), 1.0 / K, dtype=dtype), torch.full((V,), 1.0 / V, dtype=dtype)


def _plain_log_sinkhorn(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Textbook log-domain Sinkhorn in float64 (an independent reference)."""
    C, a, b = C.double(), a.double(), b.double()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    for _ in range(iters):
        f = eps * torch.log(a) - eps * torch.logsumexp((g[None, :] - C) / eps, dim=1)
        g = eps * torch.log(b) - eps * torch.logsumexp((f[:, None] - C) / eps, dim=0)
    return torch.exp((f[:, None] + g[None, :] - C) / eps)


# --------------------------------------------------------------------------- Sinkhorn
@pytest.mark.parametrize("scale, shift", [(0.9, 0.0), (2.5, 0.0), (0.9, 300.0)])
def test_fixed_iterations_match_a_plain_float64_reference(scale, shift):
    # shift: costs of several hundred, where the plain float32 kernel exp(-C/eps) is all zeros
    C = _embeddings_cost(30, 400, scale=scale, seed=1) + shift
    a, b = _uniform(30, 400)
    ref = _plain_log_sinkhorn(C, a, b, 0.05, 3000)
    plan, f, g, err = sinkhorn_fixed(C, a, b, eps=0.05, n_iter=1500)
    assert torch.isfinite(plan).all() and plan.dtype == torch.float32
    assert float((plan.double() - ref).abs().sum()) < 1e-4
    assert err.ndim == 0 and float(err) < 1e-4
    # the same plan as the adaptive solver at a tight tolerance
    p2 = sinkhorn_stabilized(C, a, b, eps=0.05, tol=1e-6, max_iter=100000)[0]
    assert float((plan - p2).abs().sum()) < 1e-4


def test_fixed_iterations_warm_start_is_read_on_the_device():
    C = _embeddings_cost(20, 300, seed=2, dtype=torch.float64)
    a, b = _uniform(20, 300, torch.float64)
    _, f, g, _ = sinkhorn_fixed(C, a, b, n_iter=2000)
    C2 = C * 1.01 + 0.001
    cold = sinkhorn_fixed(C2, a, b, n_iter=30)[0]
    warm = sinkhorn_fixed(C2, a, b, f=f, g=g, warm=torch.tensor(True), n_iter=30)[0]
    off = sinkhorn_fixed(C2, a, b, f=f, g=g, warm=torch.tensor(False), n_iter=30)[0]
    converged = sinkhorn_fixed(C2, a, b, n_iter=3000)[0]
    # a warm flag that is false is a cold start, bit for bit
    assert torch.equal(off, cold)
    # 30 warm-started iterations get much closer than 30 cold ones
    assert float((warm - converged).abs().sum()) < 0.1 * float((cold - converged).abs().sum())
    # the first iteration of a cold start is the adaptive solver's log-domain start
    s1 = sinkhorn_stabilized(C2, a, b, tol=0.0, max_iter=1)[0]
    assert torch.allclose(sinkhorn_fixed(C2, a, b, n_iter=1)[0], s1, rtol=0, atol=1e-15)


def test_fixed_iterations_stay_finite_on_extreme_problems():
    # concentrated plans, a tiny epsilon and no absorption for 2000 iterations: the clamped
    # kernel and the log-domain start keep everything finite, without any check on the host
    C = _embeddings_cost(10, 200, scale=8.0, seed=3)
    a, b = _uniform(10, 200)
    plan, f, g, err = sinkhorn_fixed(C, a, b, eps=0.002, n_iter=2000, absorb_every=2000)
    assert torch.isfinite(plan).all() and torch.isfinite(f).all() and torch.isfinite(g).all()
    assert math.isfinite(float(err))
    # a scaling that did over- or underflow is dropped (taken as 1) at absorption
    from sctopic.nn.sinkhorn import _finite_log

    out = _finite_log(torch.tensor([2.0, float("inf"), 0.0, float("nan")], dtype=torch.float64))
    assert out.tolist() == [math.log(2.0), 0.0, 0.0, 0.0]


def test_check_interval_depends_on_the_device():
    assert default_check_every(torch.device("cpu")) == 5
    assert default_check_every(torch.device("cuda")) > 5
    # on the CPU the ECR default is the solver's own default (the numbers stay as they were)
    C = _embeddings_cost(12, 80, seed=4)
    e1, e2 = ECR(12, 80), ECR(12, 80, check_every=5)
    assert torch.equal(e1(C), e2(C)) and e1.last_iterations == e2.last_iterations


def test_ecr_fixed_mode_matches_the_adaptive_loss_and_keeps_its_warm_start():
    C = _embeddings_cost(12, 80, seed=5)
    adaptive = ECR(12, 80, tol=1e-7, max_iter=100000)
    fixed = ECR(12, 80, n_iter=3000)
    assert fixed.graph_safe and not adaptive.graph_safe
    assert not ECR(12, 80, grad="unrolled", n_iter=10).graph_safe
    la, lf = adaptive(C), fixed(C)
    assert abs(float(la) - float(lf)) < 1e-6 * abs(float(la))
    assert bool(fixed.warm) and fixed.last_iterations == 3000
    assert isinstance(fixed.last_error, torch.Tensor) and float(fixed.last_error) < 1e-5
    f = fixed.f.clone()
    fixed.eval()
    fixed(C * 1.1)  # evaluation does not move the warm start
    assert torch.equal(fixed.f, f)


# --------------------------------------------------------------------------- float32 solve
def _grads(C: torch.Tensor, P: torch.Tensor, a, b, eps: float = 0.05):
    out = {}
    for dt in ("float64", "float32"):
        C1 = C.clone().requires_grad_(True)
        (out[dt],) = torch.autograd.grad(TransportCost.apply(C1, P, a, b, eps, dt), C1)
    return out


@pytest.mark.parametrize("scale, tol", [(0.9, 1e-5), (2.5, 1e-4)])
def test_float32_solve_matches_float64_at_realistic_shapes(scale, tol):
    # K = 100 topics, V = 5000 genes (pbmc3k's HVGs), plans from the real solver at its
    # training tolerance; measured: 1.0e-6 (norm 0.9) and 1.4e-5 (norm 2.5)
    K, V = 100, 5000
    C = _embeddings_cost(K, V, scale=scale, seed=6)
    a, b = _uniform(K, V)
    P = sinkhorn_stabilized(C, a, b, tol=1e-3)[0]
    g = _grads(C, P, a, b)
    assert g["float32"].dtype == torch.float32
    rel = float((g["float32"].double() - g["float64"].double()).norm() / g["float64"].double().norm())
    assert rel < tol
    # ... far below the difference to the envelope gradient (the plan), the approximation
    # the implicit gradient exists to avoid
    env = float((P.double() - g["float64"].double()).norm() / g["float64"].double().norm())
    assert env > 100 * rel


def test_float32_solve_matches_unrolled_autograd_and_finite_differences():
    K, V = 6, 40
    C = _embeddings_cost(K, V, L=8, scale=1.2, seed=7, dtype=torch.float64)
    a, b = _uniform(K, V, torch.float64)
    C1 = C.clone().requires_grad_(True)
    plan_u, _ = sinkhorn_unrolled(C1, a, b, eps=0.05, tol=1e-12, max_iter=20000, check_every=1)
    (g_unrolled,) = torch.autograd.grad((plan_u * C1).sum(), C1)
    P = sinkhorn_stabilized(C, a, b, tol=1e-13, max_iter=100000)[0]
    g32 = _grads(C, P, a, b)["float32"]
    assert float((g32 - g_unrolled).norm() / g_unrolled.norm()) < 1e-5
    # central differences of the converged loss along random directions
    gen = torch.Generator().manual_seed(0)

    def loss(Cx):
        return float((sinkhorn_stabilized(Cx, a, b, tol=1e-14, max_iter=100000)[0] * Cx).sum())

    for _ in range(3):
        D = torch.randn(K, V, generator=gen, dtype=torch.float64)
        h = 1e-5
        fd = (loss(C + h * D) - loss(C - h * D)) / (2 * h)
        assert abs(fd - float((g32 * D).sum())) < 1e-5 * max(1.0, abs(fd))


def test_ecr_solve_dtype_option():
    C = _embeddings_cost(20, 300, seed=8).requires_grad_(True)
    (g64,) = torch.autograd.grad(ECR(20, 300)(C), C)
    (g32,) = torch.autograd.grad(ECR(20, 300, solve_dtype="float32")(C), C)
    assert float((g32 - g64).norm() / g64.norm()) < 1e-5
    with pytest.raises(ValueError, match="solve_dtype"):
        ECR(20, 300, solve_dtype="float16")(C)


def test_ecr_runs_in_full_precision_under_bf16_autocast():
    # autocast would run the solver's matrix-vector products in bfloat16 (it did before)
    C = _embeddings_cost(20, 300, seed=9)
    ref = ECR(20, 300)
    want = ref(C)
    ecr = ECR(20, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ecr(C)
    assert got.dtype == torch.float32
    assert torch.equal(got, want) and ecr.last_iterations == ref.last_iterations
