"""Train sctopic's SCE2TM on a prepared input and time it (same outputs as the reference runners).

Runs in the project environment, in its own process so that its peak RSS is measured the
same way as the reference packages'::

    .venv/bin/python benchmarks/reference/run_sctopic.py \
        --input benchmarks/work/pbmc3k_s0/input.npz --out benchmarks/work/pbmc3k_s0/sctopic \
        --epochs 200 --seed 0

Training seconds are the sum of ``model.history_["epoch_seconds"]`` (the training loop);
``setup_seconds`` is the rest of ``model.train()`` (graph building, data placement).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-topics", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="32", help="32 or bf16 (SCE2TM.train(precision=...))")
    return p.parse_args(argv)


def _logits(model, adata):
    """The topic logits (delta), whichever way the model exposes them."""
    import numpy as np

    for call in (
        lambda: model.get_cell_topics(kind="logits"),
        lambda: model.get_cell_topics(logits=True),
        lambda: model.get_cell_logits(),
        lambda: model.get_topic_logits(),
    ):
        try:
            out = call()
        except (AttributeError, TypeError, ValueError, NotImplementedError):
            continue
        if out is not None:
            return np.asarray(out, dtype=np.float32)
    for key in ("X_sce2tm_logits", "X_SCE2TM_logits"):
        if key in adata.obsm:
            return np.asarray(adata.obsm[key], dtype=np.float32)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    C.pin_threads_env(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import anndata as ad
    import numpy as np
    import pandas as pd

    C.pin_torch_threads(args.threads)
    import sctopic

    data = C.load_input(args.input)
    n_cells, n_genes = data["X"].shape
    adata = ad.AnnData(
        X=data["X"],
        obs=pd.DataFrame({"cell_type": data["labels"]}, index=data["cells"]),
        var=pd.DataFrame(index=data["genes"]),
    )
    adata.obsm["X_svd512"] = data["embedding"]
    del data

    t0 = time.perf_counter()
    model = sctopic.SCE2TM(adata, n_topics=args.n_topics, external_key="X_svd512")
    t_init = time.perf_counter() - t0
    rss_before_train = C.current_rss_mb()
    peak_before_train = C.peak_rss_mb()
    t1 = time.perf_counter()
    # Same schedule as the reference: halve the learning rate every 125 epochs.
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, lr_step_epochs=125,
                precision=args.precision)
    train_call_seconds = time.perf_counter() - t1
    peak_after_train = C.peak_rss_mb()

    hist = getattr(model, "history_", {}) or {}
    epoch_secs = [float(x) for x in hist.get("epoch_seconds", [])]
    train_seconds = sum(epoch_secs) if epoch_secs else train_call_seconds

    t2 = time.perf_counter()
    theta = np.asarray(model.get_cell_topics(), dtype=np.float32)
    beta = model.get_topic_gene()
    infer_seconds = time.perf_counter() - t2
    beta_np = np.asarray(getattr(beta, "values", beta), dtype=np.float32)
    logits = _logits(model, adata)

    C.save_npy(out / "theta.npy", theta)
    C.save_npy(out / "topic_gene.npy", beta_np)
    if logits is not None:
        C.save_npy(out / "logits.npy", logits)

    extra = {}
    for key in ("sinkhorn_iterations", "graph", "graph_components", "n_components"):
        if key in hist:
            extra[f"history_{key}"] = hist[key]
    info = getattr(model, "graph_info_", None) or getattr(model, "graph_stats_", None)
    if info is not None:
        extra["graph_info"] = info

    timings = {
        "contender": "sctopic",
        "precision": args.precision,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "n_topics": args.n_topics,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": train_seconds,
        "train_call_seconds": train_call_seconds,
        "setup_seconds": t_init + max(0.0, train_call_seconds - train_seconds),
        "inference_seconds": infer_seconds,
        "epoch_seconds": epoch_secs,
        **C.epoch_summary(epoch_secs),
        "cells_per_second": n_cells * args.epochs / train_seconds if train_seconds else None,
        "peak_rss_mb": C.peak_rss_mb(),
        "peak_rss_mb_before_train": peak_before_train,
        "peak_rss_mb_after_train": peak_after_train,
        "rss_mb_before_train": rss_before_train,
        "history_keys": sorted(hist.keys()) if isinstance(hist, dict) else None,
        "outputs": {
            "theta.npy": "model.get_cell_topics()",
            "topic_gene.npy": "model.get_topic_gene() (K x V)",
            "logits.npy": "topic logits (delta)" if logits is not None else "not exposed",
        },
        "shims": [],
        **extra,
        "env": C.environment(["sctopic", "numpy", "scipy", "pandas", "scanpy", "anndata"]),
    }
    C.save_json(out / "timings.json", timings)
    print(f"[sctopic] {args.epochs} epochs in {train_seconds:.1f} s "
          f"({timings['seconds_per_epoch_mean'] or float('nan'):.3f} s/epoch), "
          f"peak RSS {timings['peak_rss_mb']:.0f} MiB -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
