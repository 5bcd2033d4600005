"""FLOPs of one sctopic SCE2TM training step, this machine's matmul rate, and the floor time per step.

Runs in the project environment::

    .venv/bin/python benchmarks/bench_flops.py                 # pbmc3k, 5000 genes, K=100, B=512
    .venv/bin/python benchmarks/bench_flops.py --dataset kang8

What is counted (one optimisation step = forward + backward + optimiser update on a
512-cell minibatch, the cross-view step with a sampled neighbour batch on both views):

1. ``torch.utils.flop_counter.FlopCounterMode`` around forward + backward: the matmul family
   (mm, addmm, bmm, ...), 2 FLOPs per multiply-add.  It does NOT count matrix-vector products
   (``aten.mv``) or elementwise / reduction ops.
2. The Sinkhorn solve of ECR, counted ANALYTICALLY from the iteration count the step used
   (``module.ecr.last_iterations``): per scaling iteration two (K x V) matrix-vector products
   (4KV) + (K + V) divisions + the scaling-range check (~2(K + V)); a marginal check every
   ``check_every`` = 5 iterations (2KV + 3K); building the stabilised kernel
   exp((f + g - C)/eps) (~5KV) at the start, at each absorption, and for the final plan.
   FlopCounterMode misses all of it (matrix-vector and elementwise).
3. Everything else elementwise (softmax, batch norm, log, KL, losses, the optimiser update),
   approximated as 1 FLOP per output element of every non-matmul, non-view, non-copy aten op
   seen by a dispatch-mode counter, with the ECR call excluded (it is item 2).  This is an
   estimate; such ops are memory-bound on a CPU and are reported separately from the
   compute floor.

The matmul rate is measured with ``torch.mm`` on the very shapes and memory layouts the step
used (recorded by the dispatch counter), each timed in isolation, with the same thread count
as the benchmark (2), plus a square 2048^3 product as the machine's best case.  The floor
time per step is matmul FLOPs / achieved rate on those shapes (= the sum of the isolated
matmul times) + Sinkhorn FLOPs / the matrix-vector rate measured on the (K x V) kernel;
it is compared with the measured time of a full step (median of ``--repeats`` steps).

Writes ``benchmarks/results/flops.json`` and ``flops.md`` (``flops_<dataset>`` for other
datasets).  Uses ``model.training_step_flops()`` if the model offers it (recorded alongside);
otherwise drives one step through ``model.module`` directly.
"""
from __future__ import annotations

import inspect
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from harness import load_input, make_parser, pin_threads, time_fn, write_report


def parse_args(argv=None):
    p = make_parser(__doc__, dataset="pbmc3k", choices=("pbmc3k", "kang8"), seed=0, threads=2, n_topics=100,
                    work_dir=True, results_dir=True)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--layout", choices=["auto", "dense", "csr"], default="auto",
                   help="count matrix layout of the minibatch: what training uses (auto: the "
                        "model's RowStore choice), dense, or sparse CSR")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- counting
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "matmul"}
# ops that move or alias memory without arithmetic
NO_ARITH_OPS = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "select", "slice",
    "unsqueeze", "squeeze", "detach", "alias", "as_strided", "split", "split_with_sizes", "chunk",
    "unbind", "narrow", "index_select", "gather", "cat", "stack", "clone", "copy_", "_to_copy",
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
    "full_like", "fill_", "zero_", "new_empty", "new_zeros", "new_ones", "new_full",
    "new_empty_strided", "lift_fresh", "scalar_tensor", "_local_scalar_dense", "set_", "resize_",
    "index", "embedding", "contiguous", "lift_fresh_copy", "masked_fill", "masked_fill_",
    "repeat", "repeat_interleave", "arange", "randn", "randn_like", "normal_", "uniform_",
    "bernoulli_", "random_", "_reshape_alias", "diagonal", "roll", "flip", "where", "nonzero",
    "is_nonzero", "equal", "sort", "topk", "argmax", "argmin",
}


def _is_sparse(t) -> bool:
    import torch

    return isinstance(t, torch.Tensor) and t.layout != torch.strided


def _matmul_flops(name: str, args) -> tuple[int, tuple]:
    """FLOPs and a (shapes, strides) key for matmul-family ops (2 per multiply-add).

    A sparse operand counts its stored entries only: 2 * nnz * (other dimension)."""
    if name in ("mm", "addmm"):
        a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
        if _is_sparse(a) or _is_sparse(b):
            sp_, dn = (a, b) if _is_sparse(a) else (b, a)
            other = dn.shape[1] if sp_ is a else dn.shape[0]
            nnz = int(sp_._nnz())
            return 2 * nnz * other, ("spmm", tuple(a.shape), nnz, tuple(b.shape), _is_sparse(a))
    if name == "mm":
        a, b = args[0], args[1]
    elif name == "addmm":
        a, b = args[1], args[2]
    elif name in ("bmm",):
        a, b = args[0], args[1]
    elif name == "baddbmm":
        a, b = args[1], args[2]
    elif name == "mv":
        a, b = args[0], args[1]
        if _is_sparse(a):  # CSR row sums (sctopic.nn.sparse.csr_row_sums)
            return 2 * int(a._nnz()), ("spmv", tuple(a.shape), int(a._nnz()))
        return 2 * a.shape[0] * a.shape[1], ("mv", tuple(a.shape), tuple(a.stride()), tuple(b.shape))
    elif name == "addmv":
        a, b = args[1], args[2]
        return 2 * a.shape[0] * a.shape[1], ("mv", tuple(a.shape), tuple(a.stride()), tuple(b.shape))
    elif name == "dot":
        return 2 * args[0].numel(), ("dot", tuple(args[0].shape))
    else:
        return 0, (name,)
    if name in ("bmm", "baddbmm"):
        bsz, m, k = a.shape
        n = b.shape[-1]
        return 2 * bsz * m * k * n, ("bmm", tuple(a.shape), tuple(a.stride()), tuple(b.shape), tuple(b.stride()))
    m, k = a.shape
    n = b.shape[1]
    return 2 * m * k * n, ("mm", tuple(a.shape), tuple(a.stride()), tuple(b.shape), tuple(b.stride()))


def make_counter():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class OpCounter(TorchDispatchMode):
        """Matmul shapes/FLOPs and an elementwise estimate (1 FLOP per output element)."""

        def __init__(self):
            super().__init__()
            self.matmuls: dict[tuple, list] = defaultdict(lambda: [0, 0])  # key -> [calls, flops]
            self.elementwise: dict[str, int] = defaultdict(int)
            self.excluded = False  # True while inside the ECR call (counted analytically)
            self.excluded_matmul_flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            if name in MATMUL_OPS:
                fl, key = _matmul_flops(name, args)
                if self.excluded:
                    self.excluded_matmul_flops += fl
                else:
                    rec = self.matmuls[key]
                    rec[0] += 1
                    rec[1] += fl
            elif name not in NO_ARITH_OPS and not self.excluded:
                n = sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
                self.elementwise[name] += n
            return out

    return OpCounter()


def sinkhorn_flops(K: int, V: int, iters: int, check_every: int = 5, kernels: int = 1) -> dict:
    """Analytic FLOPs of sctopic's stabilised Sinkhorn (see the module docstring)."""
    per_iter = 4 * K * V + (K + V) + 2 * (K + V)
    checks = iters // check_every + 1  # the check at iteration 0 always runs
    per_check = 2 * K * V + 3 * K
    per_kernel = 5 * K * V
    final = 5 * K * V + 2 * K * V + K  # final plan + its marginal error
    loss = 2 * K * V  # (plan * C).sum()
    total = iters * per_iter + checks * per_check + kernels * per_kernel + final + loss
    return {"iterations": iters, "flops": int(total), "per_iteration": per_iter,
            "matvec_flops": int(iters * 4 * K * V + checks * 2 * K * V),
            "kernels_built": kernels,
            "formula": "iters*(4KV + 3(K+V)) + (floor(iters/5)+1)*(2KV + 3K) + kernels*5KV "
                       "+ final plan 5KV + its error 2KV + K + loss 2KV (kernels = 1 + absorptions, "
                       "taken as 1)"}


# ----------------------------------------------------------------------------- timing
def matmul_rates(matmuls: dict, repeats: int = 10, device="cpu") -> list[dict]:
    import torch

    dev = torch.device(device)

    rows = []
    for key, (calls, flops) in sorted(matmuls.items(), key=lambda kv: -kv[1][1]):
        kind = key[0]
        if kind == "mm":
            _, sa, st_a, sb, st_b = key
            a = torch.empty_strided(sa, st_a, device=dev).normal_()
            b = torch.empty_strided(sb, st_b, device=dev).normal_()
            fn = lambda a=a, b=b: torch.mm(a, b)  # noqa: E731
        elif kind == "bmm":
            _, sa, st_a, sb, st_b = key
            a = torch.empty_strided(sa, st_a, device=dev).normal_()
            b = torch.empty_strided(sb, st_b, device=dev).normal_()
            fn = lambda a=a, b=b: torch.bmm(a, b)  # noqa: E731
        elif kind == "spmm":
            _, sa, nnz, sb, left = key
            sp_shape = sa if left else sb
            gen = torch.Generator().manual_seed(0)
            flat = torch.randperm(sp_shape[0] * sp_shape[1], generator=gen)[:nnz].sort().values
            rows_, cols_ = flat // sp_shape[1], flat % sp_shape[1]
            spm = torch.sparse_coo_tensor(torch.stack([rows_, cols_]), torch.rand(nnz),
                                          sp_shape).coalesce().to_sparse_csr().to(dev)
            dn = torch.randn(sb if left else sa, device=dev)
            fn = (lambda a=spm, b=dn: a @ b) if left else (lambda a=dn, b=spm: a @ b)  # noqa: E731
            per_call = flops / calls
            t = time_fn(fn, repeats, device=dev)
            rows.append({"op": "spmm (sparse x dense)" if left else "mm (dense x sparse)",
                         "shapes": [list(sa), list(sb)], "nnz": nnz, "calls": calls,
                         "flops": int(flops), "seconds_per_call": t,
                         "gflops_per_s": per_call / t / 1e9})
            continue
        elif kind == "spmv":
            _, sa, nnz = key
            gen = torch.Generator().manual_seed(0)
            flat = torch.randperm(sa[0] * sa[1], generator=gen)[:nnz].sort().values
            spm = torch.sparse_coo_tensor(torch.stack([flat // sa[1], flat % sa[1]]), torch.rand(nnz),
                                          sa).coalesce().to_sparse_csr().to(dev)
            ones = torch.ones(sa[1], device=dev)
            t = time_fn(lambda a=spm, b=ones: torch.mv(a, b), repeats, device=dev)
            rows.append({"op": "spmv (sparse x vector)", "shapes": [list(sa), [sa[1]]], "nnz": nnz,
                         "calls": calls, "flops": int(flops), "seconds_per_call": t,
                         "gflops_per_s": flops / calls / t / 1e9})
            continue
        elif kind == "mv":
            _, sa, st_a, sb = key
            a = torch.empty_strided(sa, st_a, device=dev).normal_()
            b = torch.randn(sb, device=dev)
            fn = lambda a=a, b=b: torch.mv(a, b)  # noqa: E731
        else:
            continue
        per_call = flops / calls
        t = time_fn(fn, repeats, device=dev)
        rows.append({"op": kind, "shapes": [list(key[1]), list(key[3])],
                     "strides": [list(key[2])] + ([list(key[4])] if len(key) > 4 else []),
                     "calls": calls, "flops": int(flops), "seconds_per_call": t,
                     "gflops_per_s": per_call / t / 1e9})
    return rows


def square_rate(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time_fn(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / t / 1e9


def matvec_rate(K: int, V: int, repeats: int = 50, device="cpu") -> float:
    import torch

    Kt, v, u = (torch.rand(K, V, device=device), torch.rand(V, device=device),
                torch.rand(K, device=device))
    t = time_fn(lambda: (Kt @ v, Kt.T @ u), repeats, device=device)
    return 4 * K * V / t / 1e9


# ----------------------------------------------------------------------------- the step
def load_model(args):
    """The lead's model on the benchmark's prepared data (pbmc3k: 5000 HVGs)."""
    import anndata as ad
    import pandas as pd

    import bench_vs_reference as B
    import sctopic

    work = Path(args.work_dir) / f"{args.dataset}_s{args.seed}"
    npz, prep = B.prepare(args.dataset, args.seed, work)
    z = load_input(npz)
    X = z["X"]
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=z["cells"]), var=pd.DataFrame(index=z["genes"]))
    adata.obsm["X_svd512"] = z["embedding"]
    model = sctopic.SCE2TM(adata, n_topics=args.n_topics, external_key="X_svd512", n_top_genes=None)
    return model, X, adata.obsm["X_svd512"], prep


def model_counts(model, adata):
    """The counts ``model`` trains on: ``adata`` over ``model.genes``, float32 CSR."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata[:, model.genes].X, dtype=np.float32)
    X.sort_indices()
    return X


def resolve_layout(layout: str, X) -> str:
    if layout != "auto":
        return layout
    try:
        from sctopic.data.loader import DENSE_BYTES_MAX

        return "dense" if X.shape[0] * X.shape[1] * 4 <= DENSE_BYTES_MAX else "csr"
    except ImportError:  # pragma: no cover
        return "dense"


def make_step(model, X, emb, batch_size: int, seed: int, layout: str = "dense", device="cpu"):
    """A closure running one full optimisation step through ``model.module``.

    The batch is built as training builds it: the anchors and one sampled neighbour of each
    (here: random cells; the cost is the same) stacked in one count matrix ``x`` (2B rows),
    their external views ``v`` and ``v_nb``.  Falls back to the ``x`` / ``x_nb`` form for a
    module that does not take the stacked one."""
    import torch

    mod = model.module
    mod.train()
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    idx = rng.choice(n, size=min(batch_size, n), replace=False)
    nb = rng.choice(n, size=idx.size, replace=True)  # neighbour stand-ins (cost is the same)

    def counts(rows):
        t = torch.as_tensor(X[rows].toarray(), device=device)
        return t.to_sparse_csr() if layout == "csr" else t

    v = torch.as_tensor(emb[idx], device=device)
    v_nb = torch.as_tensor(emb[nb], device=device)
    params = inspect.signature(mod.forward).parameters
    extra = {"ecr_weight": float(model.init_params["ecr_weight"])} if "ecr_weight" in params else {}
    stacked = {"x": counts(np.concatenate([idx, nb])), "v": v, "v_nb": v_nb, **extra}
    separate = {"x": counts(idx), "x_nb": counts(nb), "v": v, "v_nb": v_nb, **extra}
    separate = {k: val for k, val in separate.items() if k in params}
    kw = stacked
    try:
        with torch.no_grad():
            mod(**stacked)
    except Exception:  # noqa: BLE001 - older module signature
        kw = separate
    opt = torch.optim.RMSprop(mod.parameters(), lr=1e-3)

    def forward_backward():
        out = mod(**kw)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        return out

    def full_step():
        forward_backward()
        opt.step()

    return mod, forward_backward, full_step, opt, kw


def main(argv=None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads, override=False)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model, X, emb, prep = load_model(args)
    layout = resolve_layout(args.layout, X)
    mod, fwd_bwd, full_step, opt, kw = make_step(model, X, emb, args.batch_size, args.seed, layout)
    B, V = kw["v"].shape[0], kw["x"].shape[1]
    K = args.n_topics

    # warm up (also warms the Sinkhorn duals, as in training after the first step)
    for _ in range(args.warmup):
        full_step()

    # 1. FlopCounterMode (matmul family), forward + backward
    fcm = FlopCounterMode(display=False)
    with fcm:
        fwd_bwd()
    fcm_total = int(fcm.get_total_flops())
    # per-module attribution is reliable for the forward pass only (FlopCounterMode's module
    # tracking misplaces backward ops), so break down a forward pass separately
    fcm_fwd = FlopCounterMode(display=False)
    with fcm_fwd:
        mod(**kw)
    fwd_total = int(fcm_fwd.get_total_flops())
    by_module = {}
    for mname, ops in fcm_fwd.get_flop_counts().items():
        if mname and mname.count(".") <= 1:
            by_module[mname] = int(sum(ops.values()))

    # 1b/3. dispatch counter with the ECR call excluded; Sinkhorn iterations of this step
    counter = make_counter()
    ecr = getattr(mod, "ecr", None)
    hooks = []
    if ecr is not None:
        hooks.append(ecr.register_forward_pre_hook(lambda m, a: setattr(counter, "excluded", True)))
        hooks.append(ecr.register_forward_hook(lambda m, a, o: setattr(counter, "excluded", False)))
    with counter:
        fwd_bwd()
        opt.step()
    for h in hooks:
        h.remove()
    iters = int(getattr(ecr, "last_iterations", 0)) if ecr is not None else 0
    # iterations over a few steps (warm-started: typical of training after the first steps)
    iter_samples = []
    for _ in range(5):
        full_step()
        iter_samples.append(int(getattr(ecr, "last_iterations", 0)) if ecr is not None else 0)
    mm_flops = sum(f for _, f in counter.matmuls.values())
    elem = dict(sorted(counter.elementwise.items(), key=lambda kv: -kv[1]))
    elem_total = int(sum(elem.values()))
    sk = sinkhorn_flops(K, V, iters) if ecr is not None else None

    # measured time of a full step
    step_seconds = time_fn(full_step, args.repeats, warmup=1, stat="median")
    step_seconds_min = time_fn(full_step, max(3, args.repeats // 2), warmup=0, stat="min")

    # rates
    mm_rows = matmul_rates(counter.matmuls)
    mm_floor = sum(r["seconds_per_call"] * r["calls"] for r in mm_rows)
    mm_rate_mix = mm_flops / mm_floor / 1e9 if mm_floor else None
    sq = square_rate()
    mv = matvec_rate(K, V)
    sk_floor = (sk["flops"] / (mv * 1e9)) if sk else 0.0
    floor = mm_floor + sk_floor
    total_counted = mm_flops + (sk["flops"] if sk else 0) + elem_total

    offered = None
    if hasattr(model, "training_step_flops"):
        try:
            offered = model.training_step_flops()
        except Exception as e:  # noqa: BLE001 - report, do not fail
            offered = f"error: {e!r}"

    res = {
        "dataset": args.dataset, "n_cells": prep["n_cells"], "n_genes": int(V), "n_topics": K,
        "batch_size": int(B), "layout": layout, "threads": args.threads, "torch": torch.__version__,
        "machine": f"{os.cpu_count()} logical CPUs",
        "step": "forward + backward (+ RMSprop update for the timing) of SCE2TMModule with "
                "cross-view (anchor and one neighbour batch on both views), ECR weight "
                f"{kw.get('ecr_weight')}, driven through model.module",
        "flop_counter_mode_total": fcm_total,
        "flop_counter_mode_forward_total": fwd_total,
        "flop_counter_mode_forward_by_module": by_module,
        "dispatch_matmul_flops": int(mm_flops),
        "dispatch_matmul_flops_note": "same ops as FlopCounterMode (mm/addmm/bmm) plus any mv "
                                      "outside ECR; ECR's own matmuls excluded (in Sinkhorn "
                                      "below)",
        "ecr_matmul_flops_seen_by_dispatch": int(counter.excluded_matmul_flops),
        "sinkhorn": sk,
        "sinkhorn_iterations_next_steps": iter_samples,
        "elementwise_estimate_flops": elem_total,
        "elementwise_estimate_top": dict(list(elem.items())[:12]),
        "elementwise_note": "1 FLOP per output element of non-matmul arithmetic ops (approximate; "
                            "memory-bound, not in the compute floor)",
        "total_counted_flops": int(total_counted),
        "matmul_rate_gflops_step_shapes": mm_rate_mix,
        "matmul_rate_gflops_square2048": sq,
        "matvec_rate_gflops_KxV": mv,
        "matmuls": mm_rows,
        "floor_seconds_matmul": mm_floor,
        "floor_seconds_sinkhorn": sk_floor,
        "floor_seconds_per_step": floor,
        "floor_seconds_per_step_at_square_rate": (mm_flops + (sk["flops"] if sk else 0)) / (sq * 1e9),
        "measured_seconds_per_step": step_seconds,
        "measured_seconds_per_step_min": step_seconds_min,
        "timing_note": "isolated matmuls and the floor use the best of N runs; the step time is "
                       "the median (min also given); the 2 cores may be shared with other work",
        "measured_over_floor": step_seconds / floor if floor else None,
        "steps_per_epoch": int(np.ceil(prep["n_cells"] / B)),
        "floor_seconds_per_epoch": floor * int(np.ceil(prep["n_cells"] / B)),
        "measured_seconds_per_epoch_from_steps": step_seconds * int(np.ceil(prep["n_cells"] / B)),
        "model_training_step_flops": offered,
    }
    md = markdown(res)
    stem = write_report(Path(args.results_dir) / ("flops" if args.dataset == "pbmc3k" else f"flops_{args.dataset}"),
                        res, md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


def markdown(r: dict) -> str:
    g = lambda x: f"{x / 1e9:.3f}"  # noqa: E731
    sk = r["sinkhorn"] or {"flops": 0, "iterations": 0}
    L = [f"# FLOPs of one sctopic SCE2TM training step ({r['dataset']})", "",
         f"Batch {r['batch_size']} cells (+ {r['batch_size']} sampled neighbours) x {r['n_genes']} genes "
         f"({r['layout']} counts), {r['n_topics']} topics, "
         f"{r['threads']} threads, torch {r['torch']}, {r['machine']}.", "",
         "| quantity | value |", "|---|---|",
         f"| matmul FLOPs, FlopCounterMode (fwd+bwd) | {g(r['flop_counter_mode_total'])} GFLOP |",
         f"| matmul FLOPs, dispatch counter (ECR excluded) | {g(r['dispatch_matmul_flops'])} GFLOP |",
         f"| of which forward (FlopCounterMode) | {g(r['flop_counter_mode_forward_total'])} GFLOP |",
         f"| Sinkhorn (analytic, {sk['iterations']} iterations) | {g(sk['flops'])} GFLOP |",
         f"| other elementwise (estimate, 1/element) | {g(r['elementwise_estimate_flops'])} GFLOP |",
         f"| matmul rate on the step's shapes | {r['matmul_rate_gflops_step_shapes']:.1f} GFLOP/s |",
         f"| matmul rate, 2048^3 | {r['matmul_rate_gflops_square2048']:.1f} GFLOP/s |",
         f"| matrix-vector rate on the K x V kernel | {r['matvec_rate_gflops_KxV']:.1f} GFLOP/s |",
         f"| floor time per step (matmuls + Sinkhorn) | {r['floor_seconds_per_step'] * 1e3:.1f} ms |",
         f"| measured time per step (median / best) | {r['measured_seconds_per_step'] * 1e3:.1f} / "
         f"{r['measured_seconds_per_step_min'] * 1e3:.1f} ms |",
         f"| measured / floor | {r['measured_over_floor']:.2f} |",
         f"| floor / measured per epoch ({r['steps_per_epoch']} steps) | "
         f"{r['floor_seconds_per_epoch']:.3f} s / {r['measured_seconds_per_epoch_from_steps']:.3f} s |",
         "", "Forward matmul FLOPs by module: " + ", ".join(
             f"{k} {v / 1e9:.3f} GFLOP" for k, v in r["flop_counter_mode_forward_by_module"].items()) + ".",
         "", "Largest matmuls (isolated timing, same shapes and strides):", "",
         "| op | shapes | calls | GFLOP | GFLOP/s |", "|---|---|---|---|---|"]
    for m in r["matmuls"][:10]:
        L.append(f"| {m['op']} | {m['shapes'][0]} x {m['shapes'][1]}"
                 + (f" (nnz {m['nnz']})" if "nnz" in m else "") + f" | {m['calls']} | "
                 f"{m['flops'] / 1e9:.3f} | {m['gflops_per_s']:.1f} |")
    L += ["", "Notes:", "",
          "- FlopCounterMode counts only the matmul family (2 FLOPs per multiply-add) and counts a "
          "sparse x dense product as if dense; the dispatch counter counts 2 x nnz x width for it. "
          "It does "
          "not see matrix-vector products or elementwise ops, so the Sinkhorn solve (matrix-vector "
          "products and exponentials, under no_grad with envelope gradients) is counted "
          "analytically: " + (sk.get("formula") or "") + ".",
          "- The elementwise estimate is 1 FLOP per output element of each non-matmul arithmetic "
          "op (exp/log counted as 1); these ops are memory-bound and are not in the floor.",
          "- Floor = sum of the isolated times of the step's matmuls on this machine + Sinkhorn "
          "FLOPs at the measured matrix-vector rate. The gap to the measured step is elementwise "
          "work, memory traffic, autograd and Python overhead."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
