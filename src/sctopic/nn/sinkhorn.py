"""Entropic optimal transport (Sinkhorn) and the Embedding Clustering Regularization (ECR).

ECR (Wu et al., ECRTM 2023; scE2TM) transports genes (mass 1/V each) onto topics (mass 1/K
each) with cost ``C_km = ||t_k - g_m||^2`` and entropic regularisation ``epsilon``; the loss is
``sum(pi * C)``. Two properties matter for a fast, safe implementation:

* **No underflow.** ``exp(-C/eps)`` underflows to 0 in float32 once costs exceed ~87*eps (about
  4.4 for eps=0.05), which happens as embedding norms grow; a row of zeros then gives 0/0. We
  iterate on dual potentials in the log domain (stabilised scaling: the potentials are absorbed
  into the kernel, so the scaling vectors stay near 1).
* **Cheap.** The embeddings move little between optimisation steps, so the duals of the previous
  step are an excellent warm start: a handful of matrix-vector products usually suffices. The
  solve runs without autograd. For the backward pass, the default differentiates the loss
  ``<P*(C), C>`` through the optimal plan by implicit differentiation (a K x K linear solve; the
  exact limit of back-propagating through the iterations, as the reference does). The envelope
  theorem gives a cheaper alternative (``grad="envelope"``: the plan as a constant, which is the
  gradient of the *entropic* OT value), but that ignores how the plan's entropy responds to the
  embeddings, and on pbmc3k it produced clearly less distinct topics. ``grad="unrolled"`` keeps
  the reference behaviour for comparison.

On a GPU every host read of a device value (a convergence check) stalls the queue of kernels.
The adaptive solver therefore checks less often there (:func:`default_check_every`), and
:func:`sinkhorn_fixed` runs a fixed number of iterations with no host read and no
data-dependent Python branch at all, so that a whole training step can be captured as a CUDA
graph (``cuda_graphs=True``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from sctopic.nn.precision import full_precision, to_full


#: Exponents are clamped to this range: exp(-80) is still a normal float32, and avoiding
#: underflow to denormals/zero keeps the vectorised exp on its fast path (10x faster on CPU).
_EXP_MIN, _EXP_MAX = -80.0, 50.0


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log-sum-exp along ``dim`` with clamped exponents (see :data:`_EXP_MIN`)."""
    m = x.amax(dim=dim, keepdim=True)
    s = torch.exp((x - m).clamp_(min=_EXP_MIN)).sum(dim=dim).log()
    return s + m.squeeze(dim)


def _log_updates(C: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, f: torch.Tensor,
                 g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair of exact log-domain Sinkhorn updates (f given g, then g given f)."""
    f = eps * log_a - eps * _lse((g[None, :] - C) / eps, dim=1)
    g = eps * log_b - eps * _lse((f[:, None] - C) / eps, dim=0)
    return f, g


def _kernel(C: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """Stabilised kernel ``exp((f + g - C)/eps)`` (the plan for scalings u = v = 1)."""
    return torch.exp(((f[:, None] + g[None, :] - C) / eps).clamp_(_EXP_MIN, _EXP_MAX))


#: Iterations between the adaptive solver's convergence checks. Each check is one host read;
#: on a CPU it costs nothing, on a GPU it drains the queue of kernels, so checks are rarer
#: there (a converged solve then runs a few iterations more, which cost microseconds).
CHECK_EVERY = {"cpu": 5}
CHECK_EVERY_ACCELERATOR = 10


def default_check_every(device: torch.device) -> int:
    """Iterations between convergence checks of :func:`sinkhorn_stabilized` on ``device``."""
    return CHECK_EVERY.get(torch.device(device).type, CHECK_EVERY_ACCELERATOR)


@torch.no_grad()
def sinkhorn_stabilized(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float = 0.05,
    f: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 1000,
    check_every: int = 5,
    absorb_at: float = 1e4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float]:
    """Entropic OT plan between ``a`` (rows) and ``b`` (columns) for cost ``C``.

    Log-stabilised Sinkhorn (Schmitzer 2019): the dual potentials ``f, g`` are kept in the log
    domain and absorbed into the kernel ``exp((f + g - C)/eps)``; the scaling vectors are
    absorbed and reset to 1 whenever they leave ``[1/absorb_at, absorb_at]``. A cold start
    begins with one exact log-domain update, so every row and column of the kernel has an
    entry of order one whatever the scale of ``C``.

    Parameters
    ----------
    C
        ``(K, V)`` cost matrix.
    a, b
        Marginals (positive, each summing to 1).
    eps
        Entropic regularisation (the kernel is ``exp(-C/eps)``).
    f, g
        Warm-start dual potentials (``None`` for a cold start).
    tol
        Stop when the L1 error of the row marginal is below ``tol`` (columns are exact).
    max_iter
        Maximum number of scaling iterations.
    check_every
        Check convergence every this many iterations.
    absorb_at
        Absorb the scalings into the potentials when they exceed this factor.

    Returns
    -------
    plan, f, g, n_iter, err
        The ``(K, V)`` plan, the dual potentials, iterations used and final row-marginal error.
    """
    log_a, log_b = torch.log(a), torch.log(b)
    # Shifting each column of C by a constant changes only g, not the plan. Solving on
    # C - min_k C keeps all magnitudes small, so float32 keeps its precision when embedding
    # norms (and with them all costs) grow.
    shift = C.amin(dim=0)
    C = C - shift[None, :]
    it = 0
    if f is None or g is None:
        f, g = _log_updates(C, log_a, log_b, torch.zeros_like(a), torch.zeros_like(b), eps)
        it = 1
    else:
        g = g - shift
    while True:
        Kt = _kernel(C, f, g, eps)
        u = torch.ones_like(a)
        v = torch.ones_like(b)
        absorb = bad = False
        while True:
            if it % check_every == 0 or it >= max_iter:
                # One host synchronisation per check (on a GPU each one stalls the queue):
                # the marginal error and the scalings' range travel together. Between checks
                # the scalings may leave [1/absorb_at, absorb_at]; that is only a loss of
                # stabilisation, and a non-finite value is caught here and recovered below.
                err_t = (u * (Kt @ v) - a).abs().sum()
                ext_t = torch.stack([u.max(), v.max(), 1.0 / u.min(), 1.0 / v.min()]).max()
                err, ext = torch.stack([err_t, ext_t]).tolist()
                if not (math.isfinite(ext) and math.isfinite(err)):
                    bad = True
                    break
                if ext > absorb_at:
                    absorb = True
                    break
                if err < tol or it >= max_iter:
                    break
            u = a / (Kt @ v)
            v = b / (Kt.T @ u)
            it += 1
        if bad:
            # A scaling over- or underflowed (rare with clamped kernels): drop this round's
            # scalings and recover from the last potentials with an exact log-domain update.
            f, g = _log_updates(C, log_a, log_b, f, g, eps)
            it += 1
            continue
        f = f + eps * torch.log(u)
        g = g + eps * torch.log(v)
        if not absorb or it >= max_iter:
            break
    plan = _kernel(C, f, g, eps)
    err = float((plan.sum(1) - a).abs().sum())
    return plan, f, g + shift, it, err


@torch.no_grad()
def sinkhorn_fixed(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float = 0.05,
    f: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
    warm: torch.Tensor | None = None,
    n_iter: int = 50,
    absorb_every: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropic OT plan after exactly ``n_iter`` iterations, without reading the device.

    The same stabilised iteration as :func:`sinkhorn_stabilized`, on a fixed schedule: one
    exact log-domain update (from the warm-start potentials, or from zero), then scaling
    iterations whose scalings are absorbed into the potentials every ``absorb_every``
    iterations. There is no convergence test, no host read (``.item()``, ``float()``,
    ``bool()``) and no Python branch on a value, so the solve can be captured in a CUDA graph
    and costs the same every step. Numerical safety without the adaptive solver's checks: the
    kernel's exponents are clamped (:data:`_EXP_MIN`), the log-domain start makes every row and
    column of the kernel of order one, and a scaling that over- or underflowed between
    absorptions is dropped (taken as 1) rather than absorbed, so the potentials stay finite.

    Parameters
    ----------
    C
        ``(K, V)`` cost matrix.
    a, b
        Marginals (positive, each summing to 1).
    eps
        Entropic regularisation.
    f, g
        Warm-start dual potentials (``None``: start from zero, as a cold start).
    warm
        Boolean 0-d tensor: when given, ``f`` and ``g`` are used only where it is true (read
        on the device with :func:`torch.where`, never on the host).
    n_iter
        Iterations, counted as :func:`sinkhorn_stabilized` counts a cold start: the
        log-domain update is the first.
    absorb_every
        Scaling iterations between absorptions into the potentials.

    Returns
    -------
    plan, f, g, err
        The ``(K, V)`` plan, the dual potentials and the plan's row-marginal L1 error as a
        0-d tensor on the device (reading it is the caller's choice, and a host sync).
    """
    if n_iter < 1 or absorb_every < 1:
        raise ValueError(f"n_iter and absorb_every must be >= 1, got {n_iter} and {absorb_every}")
    log_a, log_b = torch.log(a), torch.log(b)
    shift = C.amin(dim=0)  # as in sinkhorn_stabilized: small magnitudes keep float32 precise
    C = C - shift[None, :]
    f0, g0 = torch.zeros_like(a), torch.zeros_like(b)
    if f is not None and g is not None:
        f1, g1 = f, g - shift
        if warm is not None:
            f1, g1 = torch.where(warm, f1, f0), torch.where(warm, g1, g0)
        f0, g0 = f1, g1
    f, g = _log_updates(C, log_a, log_b, f0, g0, eps)
    done = 1
    while done < n_iter:  # a Python count: the same schedule every call
        Kt = _kernel(C, f, g, eps)
        v = torch.ones_like(b)
        steps = min(absorb_every, n_iter - done)
        for _ in range(steps):
            u = a / (Kt @ v)
            v = b / (Kt.T @ u)
        f = f + eps * _finite_log(u)
        g = g + eps * _finite_log(v)
        done += steps
    plan = _kernel(C, f, g, eps)
    err = (plan.sum(1) - a).abs().sum()
    return plan, f, g + shift, err


def _finite_log(x: torch.Tensor) -> torch.Tensor:
    """``log(x)`` with non-finite results (a scaling that over- or underflowed) set to 0."""
    return torch.log(x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def sinkhorn_unrolled(
    C: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float = 0.05,
    tol: float = 5e-3,
    max_iter: int = 1000,
    check_every: int = 50,
) -> tuple[torch.Tensor, int]:
    """Sinkhorn with gradients through the iterations, as the reference ECR does.

    Cold start and the reference's stopping rule (column-marginal L1 error < ``tol`` checked
    every 50 iterations, at most 1000 iterations), but computed in the log domain so that it
    cannot underflow. Autograd differentiates through every iteration.
    """
    log_a, log_b = torch.log(a), torch.log(b)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    it = 0
    while it < max_iter:
        f, g = _log_updates(C, log_a, log_b, f, g, eps)
        it += 1
        if (it - 1) % check_every == 0:  # iterations 1, 1 + check_every, ... (as the reference)
            with torch.no_grad():
                # Error of the row marginal after the column update.
                if float((_kernel(C, f, g, eps).sum(1) - a).abs().sum()) < tol:
                    break
    plan = _kernel(C, f, g, eps)
    return plan, it


ECR_GRADS = ("envelope", "implicit", "unrolled")


class TransportCost(torch.autograd.Function):
    """``<P*(C), C>`` with the exact gradient through the optimal plan, by implicit differentiation.

    Differentiating the optimality conditions of the entropic problem (row and column sums of
    ``P = exp((f + g - C)/eps)`` equal ``a`` and ``b``) gives, for ``L = <P, C>``::

        dL/dC = P + P * (alpha_i + beta_j - C_ij) / eps

    where ``(alpha, beta)`` solves ``[[diag(a), P], [P^T, diag(b)]] [alpha; beta] = [s1; s2]``
    with ``s1 = (P*C) 1`` and ``s2 = (P*C)^T 1``. Eliminating ``beta`` leaves a K x K system
    (K = topics, small), so the cost is one K x V x K product: the gradient that unrolling the
    Sinkhorn iterations converges to, without storing or replaying them.

    ``solve_dtype`` (the last argument of :meth:`apply`) is ``"float64"`` (default, see
    :meth:`backward`) or ``"float32"`` (:func:`_implicit_alphas_float32`, for GPUs).
    """

    @staticmethod
    def forward(ctx, C: torch.Tensor, plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                solve_dtype: str = "float64"):
        ctx.save_for_backward(C, plan, a, b)
        ctx.eps = eps
        ctx.solve_dtype = solve_dtype
        return (plan * C).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        C, P, a, b = ctx.saved_tensors
        eps = ctx.eps
        if ctx.solve_dtype == "float32":
            alpha, beta = _implicit_alphas_float32(C, P, a, b)
            return _plan_gradient(C, P, alpha, beta, eps, grad_out), None, None, None, None, None
        # The K x K system is ill-conditioned (S = diag(a) - P diag(1/b) P^T nearly cancels),
        # so S and the right-hand side are accumulated in float64. Elementwise products of
        # the float32 inputs lose nothing in float32, and the final gradient's terms are of
        # order 1, so those K x V passes stay in the input's precision (half the traffic).
        dtype = torch.float64
        a64, b64 = a.to(dtype), b.to(dtype)
        PC = P * C
        s1, s2 = PC.sum(1, dtype=dtype), PC.sum(0, dtype=dtype)
        # Q = P diag(b)^-1/2 in float64: P diag(1/b) P^T = Q Q^T, and the other products with
        # P diag(1/b) or P^T / b rescale vectors instead of another K x V array (4.2 vs 4.6 ms
        # for this backward at K = 100, V = 5000). copy=True: P may already be float64.
        r = torch.rsqrt(b64)
        Q = P.to(dtype, copy=True).mul_(r)
        S = torch.diag(a64) - Q @ Q.T  # Schur complement; null vector: ones
        rhs = s1 - Q @ (r * s2)
        # S is symmetric with null vector 1 (rhs is orthogonal to it up to the solver's
        # tolerance). Adding 1 1^T makes it regular and pins 1^T alpha = 0: the minimum-norm
        # solution, by an LU solve (LAPACK's least-squares driver gave run-to-run differences).
        alpha = _solve(S + S.diagonal().mean(), rhs)
        beta = s2 / b64 - r * (Q.T @ alpha)
        return _plan_gradient(C, P, alpha, beta, eps, grad_out), None, None, None, None, None


def _solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``A^-1 rhs`` by LU, without the error check of :func:`torch.linalg.solve`: on a GPU it
    reads the factorisation's status on the host (a sync, and not allowed in a CUDA graph).
    ``A`` here is regular by construction (a singular one would give a non-finite gradient,
    and with it a non-finite loss, which training reports). The same LAPACK call on the CPU."""
    return torch.linalg.solve_ex(A, rhs)[0]


def _plan_gradient(C: torch.Tensor, P: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, eps: float,
                   grad_out: torch.Tensor) -> torch.Tensor:
    """``dL/dC = P * (eps + alpha_i + beta_j - C_ij) / eps``, in place on one K x V buffer."""
    grad = torch.sub(beta.to(C.dtype)[None, :], C)
    return grad.add_((alpha + eps).to(C.dtype)[:, None]).mul_(P).mul_(grad_out / eps)


def _implicit_alphas_float32(C: torch.Tensor, P: torch.Tensor, a: torch.Tensor,
                             b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The multipliers ``(alpha, beta)`` of :class:`TransportCost`'s backward, in float32.

    Measured on plans of the real solver (K = 100, V = 1287 and 5000, unit-norm to 4x-norm
    random embeddings): what loses float32's precision is not the K x K system (its non-zero
    eigenvalues stay within a factor ~10 of each other; forming ``S`` and solving it in
    float32 costs < 1e-6 relative) but the right-hand side ``s1 - P diag(1/b) s2``, a
    difference of two nearly equal sums (2e-4 relative error in float32). Written as
    ``rhs_i = sum_j P_ij (C_ij - Cbar_j)``, with ``Cbar_j = s2_j / b_j`` the plan-weighted mean
    cost of gene j, the difference is taken element by element before summing and the
    gradient's relative error to the float64 path is 1e-6 (unit norms) to 3e-5 (4x norms),
    the size of the float64 path's own error from its float32 inputs. One step of iterative
    refinement changed nothing measurable, so there is none. (Float32 products must be true
    float32: with TF32 matmuls, ``torch.backends.cuda.matmul.allow_tf32``, ``S`` would lose
    three digits.)
    """
    dt = torch.float32
    P, C, a, b = P.to(dt), C.to(dt), a.to(dt), b.to(dt)
    cbar = (P * C).sum(0) / b
    rhs = (P * (C - cbar[None, :])).sum(1)
    r = torch.rsqrt(b)
    Q = P * r
    S = torch.diag(a) - Q @ Q.T
    alpha = _solve(S + S.diagonal().mean(), rhs)
    beta = cbar - r * (Q.T @ alpha)
    return alpha, beta


SOLVE_DTYPES = ("float64", "float32")


class ECR(nn.Module):
    """Embedding Clustering Regularization: ``sum(pi* * C)`` with ``pi*`` the entropic OT plan.

    Parameters
    ----------
    n_topics, n_genes
        Sizes K and V (uniform marginals 1/K over topics and 1/V over genes).
    eps
        Entropic regularisation (0.05: kernel ``exp(-20 C)`` as in the paper).
    grad
        ``"envelope"``: the plan is computed without autograd, warm-started from the
        previous call, and treated as a constant (gradient = the plan). ``"implicit"``
        (default): the same warm-started solve, and the exact gradient of ``<P*(C), C>`` through the plan by
        implicit differentiation (what unrolling converges to; one extra K x V x K product).
        ``"unrolled"``: cold start, gradients through the iterations (the reference
        behaviour; slow).
    tol, max_iter
        Convergence settings of the adaptive solver.
    n_iter
        ``None`` (default): solve to ``tol`` (:func:`sinkhorn_stabilized`). An integer: exactly
        that many iterations with no host read (:func:`sinkhorn_fixed`), what a CUDA graph can
        capture; :attr:`last_error` then holds the plan's row-marginal error as a device tensor,
        to check that ``n_iter`` suffices.
    check_every
        Iterations between the adaptive solver's convergence checks (``None``: by device,
        :func:`default_check_every`).
    solve_dtype
        Precision of the K x K solve of the implicit gradient: ``"float64"`` (default) or
        ``"float32"`` (for GPUs; see :func:`_implicit_alphas_float32`).

    The three settings after ``max_iter`` change how the loss is computed, not what it is, and
    may be set on the instance between runs.
    """

    def __init__(self, n_topics: int, n_genes: int, eps: float = 0.05, grad: str = "implicit",
                 tol: float = 1e-3, max_iter: int = 1000, n_iter: int | None = None,
                 check_every: int | None = None, solve_dtype: str = "float64"):
        super().__init__()
        if grad not in ECR_GRADS:
            raise ValueError(f"ecr_grad must be one of {ECR_GRADS}, got {grad!r}")
        self.eps, self.grad, self.tol, self.max_iter = float(eps), grad, float(tol), int(max_iter)
        self.n_iter, self.check_every, self.solve_dtype = n_iter, check_every, solve_dtype
        self.register_buffer("f", torch.zeros(n_topics))
        self.register_buffer("g", torch.zeros(n_genes))
        self.register_buffer("warm", torch.zeros((), dtype=torch.bool))
        self.last_iterations = 0
        self.last_error: float | torch.Tensor = 0.0

    @property
    def graph_safe(self) -> bool:
        """Whether a call reads nothing on the host (fixed iterations, not unrolled)."""
        return self.n_iter is not None and self.grad != "unrolled"

    def forward(self, C: torch.Tensor) -> torch.Tensor:
        """ECR loss for the ``(K, V)`` cost matrix ``C`` (unweighted).

        Always in full precision: under bf16 autocast the solver's matrix-vector products
        (``Kt @ v``) would otherwise run in bfloat16, too coarse for its tolerance.
        """
        if self.solve_dtype not in SOLVE_DTYPES:
            raise ValueError(f"solve_dtype must be one of {SOLVE_DTYPES}, got {self.solve_dtype!r}")
        with full_precision(C):
            return self._loss(to_full(C))

    def _loss(self, C: torch.Tensor) -> torch.Tensor:
        K, V = C.shape
        a = torch.full((K,), 1.0 / K, dtype=C.dtype, device=C.device)
        b = torch.full((V,), 1.0 / V, dtype=C.dtype, device=C.device)
        if self.grad == "unrolled":
            plan, it = sinkhorn_unrolled(C, a, b, eps=self.eps, max_iter=self.max_iter)
            self.last_iterations = it
            return (plan * C).sum()
        if self.n_iter is not None:
            plan, f, g, err = sinkhorn_fixed(C.detach(), a, b, eps=self.eps, f=self.f, g=self.g, warm=self.warm,
                                             n_iter=int(self.n_iter))
            it = int(self.n_iter)
        else:
            warm = bool(self.warm)
            check = self.check_every or default_check_every(C.device)
            plan, f, g, it, err = sinkhorn_stabilized(
                C.detach(), a, b, eps=self.eps, f=self.f if warm else None,
                g=self.g if warm else None, tol=self.tol, max_iter=self.max_iter, check_every=check,
            )
        if self.training:
            self.f.copy_(f)
            self.g.copy_(g)
            self.warm.fill_(True)
        self.last_iterations, self.last_error = it, err
        if self.grad == "implicit" and C.requires_grad:
            return TransportCost.apply(C, plan, a, b, self.eps, self.solve_dtype)
        return (plan * C).sum()
