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


# --------------------------------------------------------------------------- training step
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import sctopic  # noqa: E402
from sctopic.errors import InputError  # noqa: E402
from sctopic.train import static_step as static_mod  # noqa: E402
from sctopic.train.trainer import Trainer, make_optimizer  # noqa: E402

#: aten ops that read a device value on the host (a synchronisation on a GPU, refused inside
#: a CUDA graph): every .item() / float() / bool() / int() of a tensor goes through
#: _local_scalar_dense; the others size their output from the data or check a status
HOST_READ_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim",
                 "unique_consecutive", "_linalg_check_errors", "equal", "is_nonzero", "bincount",
                 "histc", "allclose", "argwhere"}


class HostReads(TorchDispatchMode):
    """Records every aten op of :data:`HOST_READ_OPS` run while active (forward, backward and
    the optimiser alike: on the CPU autograd runs them on the calling thread)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READ_OPS or (name == "repeat_interleave" and not (kwargs or {}).get("output_size")):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _sce2tm(adata, preset="paper", **kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sctopic.SCE2TM(adata.copy(), seed=0, n_topics=20, preset=preset, **kw)


def _fit(adata, preset="paper", epochs=3, **train):
    m = _sce2tm(adata, preset)
    m.train(max_epochs=epochs, batch_size=128, progress=False, device="cpu", **train)
    return m


def _close(h1: dict, h2: dict, rtol: float, keys=None) -> None:
    for k in keys or [k for k in h1 if k not in ("epoch_seconds", "lr", "sinkhorn_iterations", "sinkhorn_error")]:
        np.testing.assert_allclose(h1[k], h2[k], rtol=rtol, err_msg=k)


def _nested_host_reads(prof) -> list[str]:
    """``.item()`` calls made inside C++ kernels (the dispatch mode sees only the ops called
    from Python), from the profiler's event tree. CPU-only checks are left out: LAPACK's
    ``lu_solve`` kernel checks its pivots' range on the host on the CPU only (on CUDA the
    solve reads nothing back)."""
    out = []
    for e in prof.events():
        if e.name != "aten::_local_scalar_dense":
            continue
        chain, p = [], e.cpu_parent
        while p is not None:
            chain.append(p.name)
            p = p.cpu_parent
        if "aten::linalg_lu_solve" not in chain:
            out.append(" < ".join(chain[:4]))
    return out


def test_graph_safe_step_reads_nothing_on_the_host(pbmc_small, monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    seen: list[HostReads] = []
    nested: list[str] = []
    body = static_mod.StaticStep.body

    def watched(self, n_cells, kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as prof, HostReads() as mode:
            keys = body(self, n_cells, kwargs)
        seen.append(mode)
        nested.extend(_nested_host_reads(prof))
        return keys

    monkeypatch.setattr(static_mod.StaticStep, "body", watched)
    with pytest.warns(UserWarning, match="needs a CUDA device"):
        m = _fit(pbmc_small, epochs=2, cuda_graphs=True)  # the paper's preset: ECR from the first step
    assert m.module.ecr.n_iter == 50 and "ecr" in m.history_
    assert len(seen) == 12  # 700 cells in minibatches of 128, twice
    assert [op for mode in seen for op in mode.ops] == []
    assert nested == []
    # the detector does see the host reads of the plain solver (its convergence checks)
    ecr = ECR(20, 100)
    with HostReads() as mode:
        ecr(_embeddings_cost(20, 100, seed=10).requires_grad_(True)).backward()
    assert any("_local_scalar_dense" in op for op in mode.ops)


def test_graph_safe_training_tracks_the_plain_step(pbmc_small):
    # same fixed Sinkhorn count: the graph-safe step differs from the plain one only in how
    # weights enter (device tensors) and where the losses are summed (on the device)
    plain = _fit(pbmc_small, sinkhorn_iterations=300)
    with pytest.warns(UserWarning, match="same graph-safe step runs without capture"):
        safe = _fit(pbmc_small, sinkhorn_iterations=300, cuda_graphs=True)
    _close(plain.history_, safe.history_, rtol=1e-5)
    assert safe.train_settings_["cuda_graphs"] is False and safe.train_settings_["sinkhorn_iterations"] == 300
    for (k, p1), p2 in zip(plain.module.state_dict().items(), safe.module.state_dict().values()):
        if p1.is_floating_point():
            np.testing.assert_allclose(p1.numpy(), p2.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
    # ... and with enough iterations it follows the default adaptive solver (tolerance 1e-3)
    adaptive = _fit(pbmc_small)
    _close(adaptive.history_, safe.history_, rtol=2e-4)
    assert max(safe.history_["sinkhorn_error"]) < 1e-5
    assert "sinkhorn_error" not in adaptive.history_


class FakeCapture(static_mod.CUDAGraphStep):
    """CUDAGraphStep whose 'capture' records the step as a Python callable without running it
    and whose 'replay' runs it, on the CPU: the bookkeeping of static inputs, signatures,
    warm-up and weights is that of the real class."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        FakeCapture.instances.append(self)

    def _on_side_stream(self, fn):
        fn()

    def _capture(self, fn):
        return fn


def test_capture_bookkeeping_replays_the_same_steps(pbmc_small, monkeypatch):
    # the default preset over 8 epochs: ECR weight 0 for five epochs (the ramp starts at 0),
    # then 50, 100, 100 (a device tensor filled in place); 6 minibatches an epoch (5 x 128 + 60)
    with pytest.warns(UserWarning):
        ref = _fit(pbmc_small, preset="default", epochs=8, cuda_graphs=True)
    monkeypatch.setattr("sctopic.train.trainer.StaticStep", FakeCapture)
    FakeCapture.instances.clear()
    with pytest.warns(UserWarning):
        got = _fit(pbmc_small, preset="default", epochs=8, cuda_graphs=True)
    (runner,) = FakeCapture.instances
    # one graph per signature (ECR off/on x full/last minibatch), captured once it has been
    # seen more than `warmup` (2) times; replayed with each new minibatch copied in
    seen = {(k[0][1], next(x[1] for x in k if x[0] == "ecr_weight")): (g.seen, g.replay is not None)
            for k, g in runner.graphs.items()}
    assert seen == {(128, "zero"): (25, True), (60, "zero"): (5, True), (128, "weight"): (15, True),
                    (60, "weight"): (3, True)}
    assert runner.captures == 4 and runner._weight_values["ecr_weight"] == 100.0
    assert all(math.isnan(x) for x in ref.history_["ecr"][:5]) and all(map(math.isfinite, ref.history_["ecr"][5:]))
    for k in ref.history_:
        if k != "epoch_seconds":
            np.testing.assert_array_equal(ref.history_[k], got.history_[k], err_msg=k)
    for p1, p2 in zip(ref.module.state_dict().values(), got.module.state_dict().values()):
        assert torch.equal(p1, p2)
    # and both follow the plain step, whose weights are Python numbers
    plain = _fit(pbmc_small, preset="default", epochs=8, sinkhorn_iterations=50)
    _close(plain.history_, got.history_, rtol=1e-5)


def test_graph_options_are_checked(pbmc_small):
    m = _sce2tm(pbmc_small)
    with pytest.raises(InputError, match="dense minibatches"):
        m.train(max_epochs=1, storage="csr", cuda_graphs=True, progress=False, device="cpu")
    with pytest.raises(InputError, match="sinkhorn_iterations must be a positive integer"):
        m.train(max_epochs=1, sinkhorn_iterations=0, progress=False, device="cpu")
    with pytest.raises(InputError, match="ecr_solve_dtype"):
        m.train(max_epochs=1, ecr_solve_dtype="half", progress=False, device="cpu")
    with pytest.raises(InputError, match="onecycle"):
        m.train(max_epochs=1, optimizer="adam", lr_schedule="onecycle", cuda_graphs=True, progress=False,
                device="cpu")
    unrolled = _sce2tm(pbmc_small, ecr_grad="unrolled")
    with pytest.raises(InputError, match="never reads a device value"):
        unrolled.train(max_epochs=1, cuda_graphs=True, progress=False, device="cpu")
    with pytest.raises(InputError, match="needs a CUDA device"):
        Trainer(torch.nn.Linear(3, 2), cuda_graphs=True)


def test_optimizer_options_leave_the_cpu_as_it_was():
    for name in ("rmsprop", "adam", "adamw"):
        opt = make_optimizer(name, torch.nn.Linear(3, 2).parameters(), 1e-3, torch.device("cpu"),
                             fused=True, capturable=True)
        assert opt.defaults.get("fused") in (None, False) and opt.defaults["foreach"] is None
        assert not opt.defaults["capturable"] and opt.defaults["lr"] == 1e-3


def test_cli_cuda_graphs_on_cpu(tmp_path, pbmc_small):
    import json

    from sctopic.cli import main

    data = tmp_path / "small.h5ad"
    pbmc_small.write_h5ad(data)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="needs a CUDA device"):
        rc = main(["-q", "fit", str(data), "--out", str(out), "--max-epochs", "1", "--n-topics", "10",
                   "--device", "cpu", "--cuda-graphs", "--sinkhorn-iterations", "20",
                   "--ecr-solve-dtype", "float32"])
    assert rc == 0
    settings = json.loads((out / "train.json").read_text())["settings"]
    assert settings["cuda_graphs"] is False and settings["sinkhorn_iterations"] == 20
    assert settings["ecr_solve_dtype"] == "float32"
    assert main(["fit", str(data), "--out", str(tmp_path / "x"), "--model", "scetm",
                 "--sinkhorn-iterations", "5"]) == 2


# --------------------------------------------------------------------------- CUDA only
@cuda
def test_cuda_fixed_sinkhorn_and_float32_solve_match_the_cpu():
    C = _embeddings_cost(100, 1287, seed=11)
    a, b = _uniform(100, 1287)
    p_cpu = sinkhorn_fixed(C, a, b, n_iter=50)[0]
    p_gpu = sinkhorn_fixed(C.cuda(), a.cuda(), b.cuda(), n_iter=50)[0].cpu()
    assert float((p_cpu - p_gpu).abs().sum()) < 1e-5
    g = {dt: _grads(C.cuda(), p_gpu.cuda(), a.cuda(), b.cuda())[dt].cpu() for dt in ("float64", "float32")}
    assert float((g["float32"].double() - g["float64"].double()).norm() / g["float64"].double().norm()) < 1e-5


@cuda
def test_cuda_optimizers_are_fused_and_capturable():
    dev = torch.device("cuda")
    lin = torch.nn.Linear(3, 2).to(dev)
    assert make_optimizer("adam", lin.parameters(), 1e-3, dev).defaults["fused"] is True
    assert make_optimizer("rmsprop", lin.parameters(), 1e-3, dev).defaults["foreach"] is True
    opt = make_optimizer("adamw", lin.parameters(), 1e-3, dev, capturable=True)
    assert opt.defaults["capturable"] and torch.is_tensor(opt.param_groups[0]["lr"])


def _toy_runs(step_cls, steps=12):
    """A deterministic module (no noise) trained by ``step_cls`` on CUDA with a cosine schedule."""
    torch.manual_seed(0)
    dev = torch.device("cuda")

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Tanh(),
                                           torch.nn.Linear(32, 4))

        def forward(self, x, y, w=1.0):
            loss = ((self.lin(x) - y) ** 2).mean()
            return {"mse": loss, "loss": w * loss}

    mod = Toy().to(dev)
    opt = make_optimizer("adam", mod.parameters(), 1e-2, dev, capturable=step_cls is not static_mod.StaticStep)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    runner = step_cls(mod, opt, dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    means = []
    for i in range(steps):
        n = 32 if i % 4 else 20  # two signatures
        x = torch.randn(n, 16, device=dev, generator=gen)
        runner(n, {"x": x, "y": x[:, :4].sin(), "w": 1.0 + 0.1 * (i // 4)})
        sched.step()
        if i % 4 == 3:
            sums, cells = runner.epoch_sums()
            means.append(sums["loss"] / cells)
    return means, [p.detach().cpu() for p in mod.parameters()], runner


@cuda
def test_cuda_graph_step_matches_the_uncaptured_step():
    ref, p_ref, _ = _toy_runs(static_mod.StaticStep)
    got, p_got, runner = _toy_runs(static_mod.CUDAGraphStep)
    assert runner.captures >= 1
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    for a, b in zip(p_ref, p_got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
def test_cuda_graph_safe_step_never_synchronises(pbmc_small):
    m = _sce2tm(pbmc_small)
    m.train(max_epochs=3, batch_size=128, progress=False, device="cuda", cuda_graphs=True)
    assert m.train_settings_["cuda_graphs"] is True and all(map(math.isfinite, m.history_["loss"]))
    # one step of the uncaptured graph-safe step under CUDA's sync detector
    from sctopic.train.trainer import make_optimizer as mk

    mod = m.module.to("cuda").train()
    opt = mk("rmsprop", mod.parameters(), 1e-3, torch.device("cuda"))
    step = static_mod.StaticStep(mod, opt, torch.device("cuda"))
    x = torch.as_tensor(m._X[:256].toarray(), device="cuda", dtype=torch.float32)
    v = torch.as_tensor(m.external_.matrix[:128], device="cuda", dtype=torch.float32)
    kw = {"x": x, "v": v, "v_nb": v.flip(0), "ecr_weight": 100.0, "cve_weight": 1.0}
    step(128, kw)  # warm-up: lazy initialisations may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(128, kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sums, cells = step.epoch_sums()
    assert cells == 256 and math.isfinite(sums["loss"])
