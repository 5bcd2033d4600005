"""Train the authors' scETM (PyPI ``scetm`` 0.5.0) on a prepared input and time it.

Runs INSIDE ``benchmarks/envs/scetm`` (see ``benchmarks/setup_reference_envs.sh``)::

    benchmarks/envs/scetm/bin/python benchmarks/reference/run_scetm.py \
        --input benchmarks/work/pbmc3k_s0/input.npz --out benchmarks/work/pbmc3k_s0/scetm \
        --epochs 200 --seed 0

Driven as the package's README does: ``scETM(n_genes, n_batches)`` and
``UnsupervisedTrainer(model, adata).train(...)``, with the package defaults (hidden (128,),
gene-embedding dim 400, batch norm, dropout 0.1, library-normalised input and loss, Adam
lr 5e-3 decayed by exp(-6e-5) per step, KL weight warmed up to 1e-7 over the first third,
batch size 2000, 4 sampler threads) except ``n_topics=100`` (the benchmark's K; the package
default is 50).  No batch covariate is given (``n_batches=1``), as sctopic's SCE2TM is run
without one; ``--batch-key batch`` turns on scETM's batch bias.

scETM counts epochs in steps: one step = one minibatch of ``batch_size`` cells drawn from a
reshuffled stream, ``epoch = step * batch_size / n_cells`` (fractional).  ``--epochs E``
runs until ``epoch >= E``, i.e. ``ceil(E * n_cells / batch_size)`` steps.  Per-epoch
seconds are taken from per-step timestamps at integer epoch crossings.

Shims: none are needed for training on torch 2.13 (its trainer uses no ``verbose=``
scheduler).  ``eval=False`` skips the package's periodic Leiden/UMAP evaluation (not
training); nothing is checkpointed (``ckpt_dir=None``).

Checkpoint dumps (``--dump-every N`` / ``--dump-at E1,E2``, for ``bench_time_to_quality.py``):
the per-step clock also keeps a copy of the model's ``state_dict`` after the step at which the
fractional epoch first reaches each dump epoch, in memory (its time is left out of the clock);
after training each copy is loaded back and its outputs (``get_cell_embeddings_and_nll`` and
``alpha @ rho``, as for the final ones) are written under ``checkpoints/e<EPOCH>/`` with the
wall clock from ``--clock-start`` in ``checkpoints.json`` (``runner.Snapshots``).

Outputs in ``--out``: ``theta.npy`` (softmax of the encoder mean, as scETM's own eval-mode
``theta``), ``logits.npy`` (``delta`` = encoder mean, what scETM clusters on by default),
``topic_gene.npy`` (``alpha @ rho``, K x V, unnormalised; ``topic_gene_softmax.npy`` is its
softmax over genes, the per-topic gene distribution), ``timings.json``, ``train.log``.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time

import runner as C  # this folder is sys.path[0] when the runner runs as a file


def parse_args(argv=None):
    p = C.runner_parser(__doc__, epochs=200, batch_size=2000, batch_help="scETM's default is 2000")
    p.add_argument("--n-samplers", type=int, default=4, help="scETM's default is 4 threads")
    p.add_argument("--batch-key", default=None,
                   help="use the 'batches' array of input.npz as scETM's batch (intercepts)")
    C.add_dump_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    snaps = C.Snapshots(args)
    out, data = C.start(args)

    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import torch

    n_cells, n_genes = data["X"].shape
    obs = pd.DataFrame({"cell_types": data["labels"]}, index=data["cells"])
    # scETM tests isinstance(adata.X, scipy.sparse.spmatrix): keep a csr_matrix, not csr_array
    adata = ad.AnnData(X=sp.csr_matrix(data["X"]), obs=obs, var=pd.DataFrame(index=data["genes"]))
    n_batches = 1
    if args.batch_key:
        if "batches" not in data:
            raise SystemExit("--batch-key needs a 'batches' array in input.npz")
        # scETM reads batch codes from obs['batch_indices'] (its default batch_col)
        codes = pd.Categorical(data["batches"])
        adata.obs["batch_indices"] = np.asarray(codes.codes, dtype=np.int64)
        n_batches = len(codes.categories)

    log_path = out / "train.log"
    logfh = open(log_path, "w")
    handler = logging.StreamHandler(logfh)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s - %(name)s: %(message)s"))

    with contextlib.redirect_stdout(logfh):
        from scETM import UnsupervisedTrainer, scETM

        lg = logging.getLogger("scETM")
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.addHandler(handler)

        t_setup0 = time.perf_counter()
        model = scETM(adata.n_vars, n_batches, n_topics=args.n_topics, device=torch.device("cpu"))
        trainer = UnsupervisedTrainer(model, adata, batch_size=args.batch_size, seed=args.seed)
        setup_seconds = time.perf_counter() - t_setup0

        # per-step clock: wrap the model's train_step (called once per minibatch)
        stamps: list[tuple[float, float]] = []  # (time after step, epoch after step)
        _train_step = model.train_step
        copies = [0.0]  # seconds spent copying states for the dumps, left out of the clock

        def timed_train_step(*a, **k):
            rec = _train_step(*a, **k)
            epoch = (trainer.step + 1) / trainer.steps_per_epoch
            prev = stamps[-1][1] if stamps else 0.0
            stamps.append((time.perf_counter() - copies[0], epoch))
            for e in snaps.epochs:  # the dump epochs this step reached
                if prev < e - 1e-9 <= epoch:
                    t = time.perf_counter()
                    snaps.take(e, model.state_dict, fractional_epoch=epoch)
                    copies[0] += time.perf_counter() - t
            return rec

        model.train_step = timed_train_step
        rss_before_train = C.current_rss_mib()
        peak_before_train = C.peak_rss_mib()
        t_train0 = time.perf_counter()
        trainer.train(
            n_epochs=args.epochs, eval=False, save_model_ckpt=False, n_samplers=args.n_samplers,
            eval_every=args.epochs, batch_col="batch_indices",
        )
        t_train1 = time.perf_counter() - copies[0]
        peak_after_train = C.peak_rss_mib()

        t_inf0 = time.perf_counter()
        embs, _ = model.get_cell_embeddings_and_nll(
            adata, batch_size=args.batch_size, emb_names=["delta", "theta"], inplace=False,
            batch_col="batch_indices",
        )
        infer_seconds = time.perf_counter() - t_inf0
        with torch.no_grad():
            beta = (model.alpha @ model.rho).detach().cpu().numpy()

        if snaps.enabled:
            final = {k: v.detach().clone() for k, v in model.state_dict().items()}

            def outputs(state):
                model.load_state_dict(state)
                e, _ = model.get_cell_embeddings_and_nll(
                    adata, batch_size=args.batch_size, emb_names=["delta", "theta"], inplace=False,
                    batch_col="batch_indices")
                with torch.no_grad():
                    tg = (model.alpha @ model.rho).detach().cpu().numpy()
                return {"theta": e["theta"], "logits": e["delta"], "topic_gene": tg}

            snaps.write(out, outputs, restore=lambda: model.load_state_dict(final))
    logfh.close()

    train_seconds = t_train1 - t_train0
    # per-epoch seconds from the first step ending at or after each integer epoch
    times = np.array([t for t, _ in stamps])
    epochs_at = np.array([e for _, e in stamps])
    edges = [t_train0]
    for e in range(1, args.epochs + 1):
        j = int(np.searchsorted(epochs_at, e - 1e-9))
        edges.append(times[min(j, len(times) - 1)])
    epoch_secs = list(np.diff(edges))

    C.save_npy(out / "logits.npy", embs["delta"].astype(np.float32))
    C.save_npy(out / "theta.npy", embs["theta"].astype(np.float32))
    C.save_npy(out / "topic_gene.npy", beta.astype(np.float32))
    C.save_npy(out / "topic_gene_softmax.npy", C.softmax_rows(beta))

    timings = {
        **C.run_settings("scetm", args, n_cells, n_genes),
        "n_samplers": args.n_samplers,
        "n_batches": n_batches,
        "n_steps": len(stamps),
        "steps_per_epoch": float(trainer.steps_per_epoch),
        "train_seconds": train_seconds,
        "seconds_per_step_mean": float(np.mean(np.diff([t_train0] + list(times)))) if stamps else None,
        "setup_seconds": setup_seconds,
        "inference_seconds": infer_seconds,
        # with batch_size >= n_cells scETM feeds the whole data set at every step
        **C.train_summary(epoch_secs, len(stamps) * min(args.batch_size, n_cells) / train_seconds,
                          peak_before_train, peak_after_train, rss_before_train),
        "outputs": {
            "theta.npy": "softmax of the encoder mean (scETM eval-mode theta)",
            "logits.npy": "delta = encoder mean mu (scETM's default clustering input)",
            "topic_gene.npy": "alpha @ rho, K x V, unnormalised logits",
            "topic_gene_softmax.npy": "softmax over genes of alpha @ rho (per-topic distribution)",
        },
        "shims": [],  # none needed on torch 2.13 (see the module docstring)
    }
    return C.finish(out, timings, ["scetm", "numpy", "scipy", "pandas", "scanpy", "anndata"],
                    f"[scetm] {args.epochs} epochs ({len(stamps)} steps of {min(args.batch_size, n_cells)}) in "
                    f"{train_seconds:.1f} s ({timings['seconds_per_epoch_mean']:.3f} s/epoch)")


if __name__ == "__main__":
    sys.exit(main())
