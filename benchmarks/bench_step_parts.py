"""The parts of an SCE2TM training step that were rewritten for speed, against their plain
autograd form, timed in one run on real data.

Runs in the project environment::

    .venv/bin/python benchmarks/bench_step_parts.py            # pbmc3k, 5000 HVGs, 2 threads

Each part is timed forward + backward on the shapes of a default pbmc3k step (512 anchor
cells and 512 neighbours x 5000 genes, K = 100 topics, encoder hidden width 200), the plain
and the fast form alternating in ``--rounds`` rounds (the 2-core machine's speed drifts with
other load; alternation exposes both forms to the same drift). Reported: the median over
rounds of each round's median time, and the ratio plain / fast.

Parts:

1. Reconstruction term: ``multinomial_nll(x, BatchNorm(theta @ beta))`` through autograd
   against ``EmbeddedTopicDecoder.nll`` (batch norm folded into the product, fused in-place
   likelihood), with the anchors' counts as sparse CSR (what pbmc3k trains with) and dense.
2. Encoder first layer: ``x @ W.T + b`` on a sparse CSR batch through autograd against
   ``sparse_linear`` (scipy transpose for the weight gradient).
3. ECR's implicit gradient: the former all-float64 backward (reproduced here) against the
   current one (float64 only for the K x K system; the K x V passes in float32).
4. Cost matrix and beta: the five-pass expansion against one ``addmm`` and an in-place clamp.

Writes ``benchmarks/results/step_parts_<dataset>.{json,md}``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from harness import THREAD_VARS, machine, make_parser, md_table, pin_threads, time_fn, write_report


def parse_args(argv=None):
    p = make_parser(__doc__, dataset="pbmc3k", choices=("pbmc3k", "kang8"), threads=2, seed=0, work_dir=True,
                    results_dir=True)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    return p.parse_args(argv)


def _median_ms(fn, repeats: int) -> float:
    """Median of ``repeats`` calls after one warm-up call, in ms."""
    return time_fn(fn, repeats, warmup=1, stat="median") * 1e3


def _old_ecr_backward(C, P, a, b, eps):
    """The implicit ECR gradient as it was: every K x V pass in float64."""
    import torch

    d = torch.float64
    P64, C64, a64, b64 = P.to(d), C.to(d), a.to(d), b.to(d)
    PC = P64 * C64
    s1, s2 = PC.sum(1), PC.sum(0)
    Pb = P64 / b64[None, :]
    S = torch.diag(a64) - Pb @ P64.T
    rhs = s1 - Pb @ s2
    alpha = torch.linalg.solve(S + S.diagonal().mean(), rhs)
    beta = (s2 - P64.T @ alpha) / b64
    return (P64 + P64 * (alpha[:, None] + beta[None, :] - C64) / eps).to(C.dtype)


def build_parts(args):
    import copy

    import torch

    import bench_flops as F
    from sctopic.nn.likelihood import multinomial_nll
    from sctopic.nn.sinkhorn import TransportCost, sinkhorn_stabilized
    from sctopic.nn.sparse import dense_to_csr, sparse_linear

    fargs = F.parse_args(["--dataset", args.dataset, "--seed", str(args.seed), "--work-dir", args.work_dir])
    model, X, emb, prep = F.load_model(fargs)
    mod = model.module.train()
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(X.shape[0], size=min(512, X.shape[0]), replace=False)
    both = np.concatenate([idx, rng.choice(X.shape[0], size=idx.size, replace=True)])
    x_dense = torch.as_tensor(X[idx].toarray())
    x_csr = dense_to_csr(x_dense)
    x2_csr = dense_to_csr(torch.as_tensor(X[both].toarray()))
    B, V = x_dense.shape
    K = mod.n_topics
    g = torch.Generator().manual_seed(args.seed)
    theta = torch.softmax(torch.randn(B, K, generator=g) * 2, 1).requires_grad_()
    dec_fast = mod.decoder
    dec_plain = copy.deepcopy(mod.decoder)
    parts = {}

    def recon(dec, x, fused):
        def run():
            beta = dec.beta()
            loss = dec.nll(x, theta, beta).mean() if fused else multinomial_nll(x, dec.logits(theta, beta)).mean()
            loss.backward()
        return run

    for name, x in (("reconstruction (sparse counts)", x_csr), ("reconstruction (dense counts)", x_dense)):
        parts[name] = (recon(dec_plain, x, False), recon(dec_fast, x, True),
                       "BatchNorm + logsumexp through autograd", "folded batch norm + fused likelihood")

    first = mod.encoder.mlp[0]
    # the plain form with nn.Linear's own row-major weight; the model stores it column-major
    W = first.weight.detach().contiguous().requires_grad_()
    W_col = first.weight.detach().t().contiguous().t().requires_grad_()
    bias = first.bias.detach().clone().requires_grad_()
    H = W.shape[0]
    up = torch.randn(x2_csr.shape[0], H, generator=g)

    def lin_plain():
        (x2_csr @ W.T + bias).backward(up)

    def lin_row():
        sparse_linear(x2_csr, W, bias).backward(up)

    def lin_fast():
        sparse_linear(x2_csr, W_col, bias).backward(up)

    parts["encoder first layer (sparse, 1024 cells)"] = (lin_plain, lin_fast, "torch.mm autograd",
                                                         "sparse_linear, column-major weight")
    parts["first layer: weight layout"] = (lin_row, lin_fast, "sparse_linear, row-major weight",
                                           "sparse_linear, column-major weight")

    with torch.no_grad():
        C = mod.decoder.cost().detach()
    a = torch.full((K,), 1.0 / K)
    b = torch.full((V,), 1.0 / V)
    plan = sinkhorn_stabilized(C, a, b, eps=mod.ecr.eps)[0]
    Cg = C.clone().requires_grad_()

    def ecr_plain():
        _old_ecr_backward(C, plan, a, b, mod.ecr.eps)

    def ecr_fast():  # includes the forward <P, C> and autograd's own overhead
        TransportCost.apply(Cg, plan, a, b, mod.ecr.eps).backward()

    parts["ECR implicit gradient"] = (ecr_plain, ecr_fast, "all float64", "float64 K x K system only")

    t = mod.decoder.topic_embedding.detach().clone().requires_grad_()
    gm = mod.decoder.gene_embedding.detach().clone().requires_grad_()
    tau = mod.decoder.tau
    U = torch.randn(K, V, generator=g)

    def cost_plain():
        d = ((t * t).sum(1, keepdim=True) + (gm * gm).sum(1)[None, :] - 2.0 * (t @ gm.T)).clamp_min(0.0)
        ((torch.softmax(-d / tau, 0) * U).sum() + (d * U).sum()).backward()

    def cost_fast():
        from sctopic.nn.decoder import pairwise_sq_dist

        d = pairwise_sq_dist(t, gm)
        ((torch.softmax(d * (-1.0 / tau), 0) * U).sum() + (d * U).sum()).backward()

    parts["cost matrix + beta"] = (cost_plain, cost_fast, "five-pass expansion", "addmm + in-place clamp")
    shapes = {"cells": int(B), "genes": int(V), "topics": int(K), "hidden": int(H),
              "nnz_anchor_batch": int(x_csr.values().numel())}
    return parts, shapes, prep


def main(argv=None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads, names=THREAD_VARS[:3], override=False)  # OMP, MKL, OPENBLAS
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    parts, shapes, _ = build_parts(args)
    rows = []
    for name, (plain, fast, plain_desc, fast_desc) in parts.items():
        tp, tf = [], []
        for _ in range(args.rounds):
            tp.append(_median_ms(plain, args.repeats))
            tf.append(_median_ms(fast, args.repeats))
        mp, mf = float(np.median(tp)), float(np.median(tf))
        rows.append({"part": name, "plain": plain_desc, "fast": fast_desc, "plain_ms": round(mp, 3),
                     "fast_ms": round(mf, 3), "speedup": round(mp / mf, 2)})
        print(f"{name}: {mp:.2f} ms -> {mf:.2f} ms ({mp / mf:.2f}x)", flush=True)
    # parts of a sparse-count step (the dense reconstruction and the layout A/B duplicate others)
    in_step = [r for r in rows if r["part"] not in ("reconstruction (dense counts)", "first layer: weight layout")]
    total_p = sum(r["plain_ms"] for r in in_step)
    total_f = sum(r["fast_ms"] for r in in_step)
    meta = {"dataset": args.dataset, "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
            "torch": torch.__version__, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), **shapes}
    lines = [f"# Rewritten parts of an SCE2TM step vs their plain form ({args.dataset})", "",
             f"{shapes['cells']} anchor cells (+ as many neighbours in the encoder) x {shapes['genes']} genes, "
             f"K = {shapes['topics']}, hidden {shapes['hidden']}, {args.threads} threads, torch {torch.__version__}, "
             f"{meta['machine']}; forward + backward, median of {args.rounds} alternating rounds of "
             f"{args.repeats} calls. Run {meta['date']}.", "",
             *md_table(["part", "plain form", "ms", "fast form", "ms", "speedup"],
                       [[r["part"], r["plain"], f"{r['plain_ms']:.2f}", r["fast"], f"{r['fast_ms']:.2f}",
                         f"{r['speedup']:.2f}x"] for r in rows])]
    lines += ["", f"Sum over the parts a sparse-count step runs: {total_p:.1f} ms -> {total_f:.1f} ms "
              f"(saved {total_p - total_f:.1f} ms per step).", "",
              "The whole step is timed by `bench_flops.py` (`flops_csr.md`) and the whole training run by "
              "`bench_vs_reference.py`."]
    out = write_report(Path(args.results_dir) / f"step_parts_{args.dataset}",
                       {"meta": meta, "parts": rows, "sum_sparse_step_parts_ms": [total_p, total_f]},
                       "\n".join(lines), indent=2)
    print(f"wrote {out}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
