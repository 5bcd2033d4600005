"""Train sctopic's SCE2TM on a prepared input and time it (same outputs as the reference runners).

Runs in the project environment, in its own process so that its peak RSS is measured the
same way as the reference packages'::

    .venv/bin/python benchmarks/reference/run_sctopic.py \
        --input benchmarks/work/pbmc3k_s0/input.npz --out benchmarks/work/pbmc3k_s0/sctopic \
        --epochs 200 --seed 0

Training seconds are the sum of ``model.history["epoch_seconds"]`` (the training loop);
``setup_seconds`` is the rest of ``model.train()`` (graph building, data placement).

By default the model sees the input's 512-d external view (``obsm["X_svd512"]``) and halves the
learning rate every 125 epochs, as the reference does; ``--external-key none --lr-step-epochs -1``
gives SCE2TM's own defaults (the offline PCA view, halving every quarter of the epochs), which
``bench_time_to_quality.py`` uses. ``--dump-every`` / ``--dump-at`` keep the model's state at
those epochs (``runner.hook_sctopic_epoch_ends``: a copy in memory) and write each
checkpoint's outputs after training (``runner.Snapshots``).
"""
from __future__ import annotations

import sys
import time

import runner as C  # this folder is sys.path[0] when the runner runs as a file


def parse_args(argv=None):
    p = C.runner_parser(__doc__, epochs=200, batch_size=512)
    p.add_argument("--precision", default="32", help="32 or bf16 (SCE2TM.train(precision=...))")
    p.add_argument("--external-key", default="X_svd512",
                   help="SCE2TM's external_key: X_svd512 (the input's view, as the reference) or 'none' "
                        "(SCE2TM's default: the offline PCA view)")
    p.add_argument("--lr-step-epochs", type=int, default=125,
                   help="halve the learning rate every N epochs (125: the reference's; -1: SCE2TM's "
                        "default, a quarter of the epochs)")
    C.add_dump_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out, data = C.start(args)

    import anndata as ad
    import numpy as np
    import pandas as pd

    import sctopic
    from sctopic.models.sce2tm import PRESETS

    n_cells, n_genes = data["X"].shape
    adata = ad.AnnData(
        X=data["X"],
        obs=pd.DataFrame({"cell_type": data["labels"]}, index=data["cells"]),
        var=pd.DataFrame(index=data["genes"]),
    )
    adata.obsm["X_svd512"] = data["embedding"]
    del data

    snaps = C.Snapshots(args)
    external_key = None if args.external_key.lower() in ("none", "default") else args.external_key
    t0 = time.perf_counter()
    model = sctopic.SCE2TM(adata, n_topics=args.n_topics, external_key=external_key,
                           n_top_genes=None)  # the input's genes, as every contender
    if snaps.enabled:
        C.hook_sctopic_epoch_ends(lambda epoch: snaps.take(epoch, model.module.state_dict))
    t_init = time.perf_counter() - t0
    rss_before_train = C.current_rss_mib()
    peak_before_train = C.peak_rss_mib()
    t1 = time.perf_counter()
    # By default the reference's schedule: halve the learning rate every 125 epochs.
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                lr_step_epochs=args.lr_step_epochs, precision=args.precision)
    train_call_seconds = time.perf_counter() - t1
    peak_after_train = C.peak_rss_mib()

    hist = model.history  # DataFrame, one row per epoch
    epoch_secs = [float(x) for x in hist["epoch_seconds"]] if "epoch_seconds" in hist else []
    train_seconds = sum(epoch_secs) if epoch_secs else train_call_seconds

    t2 = time.perf_counter()
    theta = np.asarray(model.get_cell_topics(), dtype=np.float32)
    beta = model.get_topic_gene()
    infer_seconds = time.perf_counter() - t2
    beta_np = np.asarray(getattr(beta, "values", beta), dtype=np.float32)
    logits = np.asarray(model.get_cell_topics(logits=True), dtype=np.float32)

    C.save_npy(out / "theta.npy", theta)
    C.save_npy(out / "topic_gene.npy", beta_np)
    C.save_npy(out / "logits.npy", logits)

    C.write_sctopic_snapshots(snaps, model, out)

    extra = {f"history_{key}": hist[key].tolist()
             for key in ("sinkhorn_iterations", "graph", "graph_components", "n_components") if key in hist}
    extra["graph_info"] = model.graph_stats_

    timings = {
        **C.run_settings("sctopic", args, n_cells, n_genes),
        "precision": args.precision,
        "external_key": model.init_params["external_key"],
        "lr_step_epochs": args.lr_step_epochs,
        "defaults": {"max_epochs": PRESETS["default"]["max_epochs"], "batch_size": 512,
                     "note": "SCE2TM.train's defaults (max_epochs: the default preset's)"},
        "train_seconds": train_seconds,
        "train_call_seconds": train_call_seconds,
        "setup_seconds": t_init + max(0.0, train_call_seconds - train_seconds),
        "inference_seconds": infer_seconds,
        **C.train_summary(epoch_secs, n_cells * args.epochs / train_seconds if train_seconds else None,
                          peak_before_train, peak_after_train, rss_before_train),
        "history_keys": sorted(hist.columns),
        "outputs": {
            "theta.npy": "model.get_cell_topics()",
            "topic_gene.npy": "model.get_topic_gene() (K x V)",
            "logits.npy": "topic logits (delta)",
        },
        "shims": [],
        **extra,
    }
    return C.finish(out, timings, ["sctopic", "numpy", "scipy", "pandas", "scanpy", "anndata"],
                    f"[sctopic] {args.epochs} epochs in {train_seconds:.1f} s "
                    f"({timings['seconds_per_epoch_mean'] or float('nan'):.3f} s/epoch)")


if __name__ == "__main__":
    sys.exit(main())
