"""Train sctopic's SCETM on a prepared input and time it (same outputs as run_scetm.py).

Runs in the project environment, in its own process (peak RSS measured like the reference)::

    .venv/bin/python benchmarks/reference/run_sctopic_scetm.py \
        --input benchmarks/work/kang8_s0/input.npz --out benchmarks/work/kang8_s0/sctopic_scetm \
        --epochs 800 --seed 0 --batch-key

Settings are scETM 0.5.0's defaults, which are also SCETM's: 2000 cells per batch, Adam lr
5e-3 decayed by exp(-6e-5) per step, KL weight warmed to 1e-7 over the first third, encoder
hidden 128 with dropout 0.1, gene embedding 400, library-normalised input and loss.
Training seconds are the sum of ``model.history["epoch_seconds"]``. ``--dump-every`` /
``--dump-at`` keep the model's state at those epochs and write each checkpoint's outputs after
training (as ``run_sctopic.py``; ``runner.Snapshots``).
"""
from __future__ import annotations

import sys
import time

import runner as C  # this folder is sys.path[0] when the runner runs as a file


def main(argv=None) -> int:
    p = C.runner_parser(__doc__, epochs=800, batch_size=2000)
    p.add_argument("--batch-key", action="store_true", help="batch intercepts from the npz 'batches'")
    C.add_dump_options(p)
    args = p.parse_args(argv)
    out, data = C.start(args)

    import anndata as ad
    import numpy as np
    import pandas as pd

    import sctopic

    n_cells, n_genes = data["X"].shape
    obs = pd.DataFrame({"cell_type": data["labels"]}, index=data["cells"])
    if args.batch_key:
        obs["batch"] = data["batches"]
    adata = ad.AnnData(X=data["X"], obs=obs, var=pd.DataFrame(index=data["genes"]))
    del data
    snaps = C.Snapshots(args)
    t0 = time.perf_counter()
    model = sctopic.SCETM(adata, n_topics=args.n_topics, batch_key="batch" if args.batch_key else None,
                          seed=args.seed, n_top_genes=None)  # the input's genes, as scetm
    if snaps.enabled:
        C.hook_sctopic_epoch_ends(lambda epoch: snaps.take(epoch, model.module.state_dict))
    t_init = time.perf_counter() - t0
    peak_before_train = C.peak_rss_mib()
    t1 = time.perf_counter()
    model.train(max_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=False,
                write_results=False)
    train_call_seconds = time.perf_counter() - t1
    epoch_secs = [float(x) for x in model.history["epoch_seconds"]]
    train_seconds = sum(epoch_secs)
    t2 = time.perf_counter()
    logits = model.get_cell_topics(logits=True)
    infer_seconds = time.perf_counter() - t2
    C.save_npy(out / "logits.npy", logits.astype(np.float32))
    C.save_npy(out / "theta.npy", model.get_cell_topics().astype(np.float32))
    C.save_npy(out / "topic_gene.npy", model.get_topic_gene().to_numpy().astype(np.float32))
    C.write_sctopic_snapshots(snaps, model, out)
    timings = {
        **C.run_settings("sctopic_scetm", args, n_cells, n_genes), "n_batches": model.n_batches,
        "train_seconds": train_seconds, "train_call_seconds": train_call_seconds,
        "setup_seconds": t_init + max(0.0, train_call_seconds - train_seconds),
        "inference_seconds": infer_seconds,
        **C.train_summary(epoch_secs, n_cells * args.epochs / train_seconds, peak_before_train),
    }
    return C.finish(out, timings, ["sctopic", "numpy", "scipy", "torch", "anndata"],
                    f"[sctopic_scetm] {args.epochs} epochs in {train_seconds:.1f} s "
                    f"({timings['seconds_per_epoch_mean']:.3f} s/epoch)")


if __name__ == "__main__":
    sys.exit(main())
