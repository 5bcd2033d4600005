"""Train the authors' scE2TM (PyPI ``sce2tm`` 1.2.3) on a prepared input and time it.

Runs INSIDE ``benchmarks/envs/sce2tm`` (see ``benchmarks/setup_reference_envs.sh``)::

    benchmarks/envs/sce2tm/bin/python benchmarks/reference/run_sce2tm.py \
        --input benchmarks/work/pbmc3k_s0/input.npz --out benchmarks/work/pbmc3k_s0/sce2tm \
        --epochs 200 --seed 0

The reference package is driven exactly as its own high-level API ``scE2TM.api.scE2TM`` does
(same argument object, ``set_seed``, ``SingleCellDataHandler``, ``Runner.train``), with its
defaults: 100 topics, batch 512, RMSprop lr 1e-3 halved every 125 epochs, hidden 200,
dropout 0, ECR weight 100, beta temperature 0.2, 15 neighbours.  Only the shims below touch
it, all applied here at import time (site-packages is never edited):

1. ``StepLR(..., verbose=True)``: torch 2.13 removed ``verbose=``.  The shim drops the
   argument and records the wall time of each ``step()``, which the Runner calls once at the
   end of every epoch: that is our per-epoch clock.
2. ``umap.umap_.nearest_neighbors(..., n_jobs=4)``: numba refuses more threads than
   ``NUMBA_NUM_THREADS`` (= cores) on this 2-core machine; the shim caps ``n_jobs``.
3. ``Runner.evaluate`` (called every 100 epochs) pickles the whole model with ``torch.save``,
   reads an MSigDB GMT from ``./data/msigdb.v2024.1.Hs.symbols.gmt`` that the package does
   not ship, writes CSVs and clusters with ``louvain`` when labels are given.  None of this is
   training; the shim keeps only what the Runner uses from it (``self.test(test_loader)``,
   the cell-topic output) and its time is excluded from the training time.
4. Optional instrumentation (``--trace-sinkhorn``, default on): ``ECR.forward`` is replaced
   by a verbatim copy that also records the number of Sinkhorn iterations per step, to show
   why epochs slow down late in training.  Same arithmetic, same stopping rule.

Checkpoint dumps (``--dump-every N`` / ``--dump-at E1,E2``, for ``bench_time_to_quality.py``):
the epoch-clock shim (1.) also keeps a copy of the model's ``state_dict`` at those epoch ends,
in memory; after training each copy is loaded back and its outputs (``Runner.test`` and
``get_topic_gene_distribution``, as for the final ones) are written under
``checkpoints/e<EPOCH>/`` with the wall clock at that epoch in ``checkpoints.json``. The wall
clock runs from ``--clock-start`` and leaves out the copies, the conversion of the input to the
package's CSV files and the periodic ``evaluate()`` (``runner.Snapshots``).

Outputs in ``--out``: ``theta.npy`` (softmax of the saved cell-topic matrix), ``logits.npy``
(what the package itself saves as the "cell-topic matrix": the batch-normalised encoder mean,
i.e. pre-softmax logits), ``topic_gene.npy`` (K x V, ``softmax(-dist/0.2)`` over TOPICS, so
each gene column sums to 1), ``timings.json``, ``train.log``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import time
from pathlib import Path

import runner as C  # this folder is sys.path[0] when the runner runs as a file


def parse_args(argv=None):
    p = C.runner_parser(__doc__, epochs=200, batch_size=512)
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--name", default="bench", help="dataset name used for the CSV file names")
    p.add_argument("--trace-sinkhorn", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--quiet", action="store_true", help="send the package's prints to train.log only")
    p.add_argument("--keep-csv", action="store_true", help="keep the CSV inputs written for the package")
    C.add_dump_options(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- shims
class _Timeline:
    created: float | None = None
    epoch_ends: list[float] = []
    evals: list[tuple[float, float]] = []
    sinkhorn_iters: list[int] = []
    snaps: "C.Snapshots | None" = None  # checkpoint dumps (set by main)
    model = None  # the Runner's model, for the dumps


def install_shims(trace_sinkhorn: bool) -> None:
    import torch
    from torch.optim.lr_scheduler import StepLR as _TorchStepLR

    # the package's __init__ files re-export classes under their modules' names
    # (scE2TM.runners.Runner is the class there), so fetch the modules themselves
    runner_mod = importlib.import_module("scE2TM.runners.Runner")
    handler_mod = importlib.import_module("scE2TM.utils.data.SingleCellDataHandler")

    # 1. StepLR without verbose=, doubling as the per-epoch clock
    class StepLRShim(_TorchStepLR):
        def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1, verbose=None):
            self._armed = False
            super().__init__(optimizer, step_size=step_size, gamma=gamma, last_epoch=last_epoch)
            self._armed = True
            _Timeline.created = time.perf_counter()

        def step(self, *a, **k):
            out = super().step(*a, **k)
            if getattr(self, "_armed", False):
                _Timeline.epoch_ends.append(time.perf_counter())
                if _Timeline.snaps is not None and _Timeline.model is not None:
                    _Timeline.snaps.take(len(_Timeline.epoch_ends), _Timeline.model.state_dict)
            return out

    runner_mod.StepLR = StepLRShim

    # 2. nearest_neighbors(n_jobs=4) on a machine with fewer numba threads
    import numba

    _nn = handler_mod.nearest_neighbors
    max_jobs = int(numba.config.NUMBA_NUM_THREADS)

    def nearest_neighbors_shim(*a, **k):
        if k.get("n_jobs", -1) > max_jobs:
            k["n_jobs"] = max_jobs
        return _nn(*a, **k)

    handler_mod.nearest_neighbors = nearest_neighbors_shim

    # 3. evaluate(): keep only the cell-topic output the Runner stores, time it
    def evaluate_shim(self, test_loader, gene_vocab, num_top_genes, cell_labels):
        t = time.perf_counter()
        out = self.test(test_loader)
        _Timeline.evals.append((t, time.perf_counter()))
        if _Timeline.snaps is not None:
            _Timeline.snaps.exclude("periodic evaluate()", _Timeline.evals[-1][1] - t)
        return out

    runner_mod.Runner.evaluate = evaluate_shim

    # 4. Sinkhorn iteration counter: verbatim copy of ECR.forward (sce2tm 1.2.3) + a counter
    if trace_sinkhorn:
        ecr_mod = importlib.import_module("scE2TM.models.ECR")

        def ecr_forward(self, M):
            device = M.device
            a = (torch.ones(M.shape[0]) / M.shape[0]).unsqueeze(1).to(device)
            b = (torch.ones(M.shape[1]) / M.shape[1]).unsqueeze(1).to(device)
            u = (torch.ones_like(a) / a.size()[0]).to(device)
            K = torch.exp(-M * self.sinkhorn_alpha)
            err = 1
            cpt = 0
            while err > self.stopThr and cpt < self.OT_max_iter:
                v = torch.div(b, torch.matmul(K.t(), u) + self.epsilon)
                u = torch.div(a, torch.matmul(K, v) + self.epsilon)
                cpt += 1
                if cpt % 50 == 1:
                    bb = torch.mul(v, torch.matmul(K.t(), u))
                    err = torch.norm(torch.sum(torch.abs(bb - b), dim=0), p=float("inf"))
            _Timeline.sinkhorn_iters.append(cpt)
            transp = u * (K * v.T)
            loss_ECR = torch.sum(transp * M)
            loss_ECR *= self.weight_loss_ECR
            return loss_ECR

        ecr_mod.ECR.forward = ecr_forward


def write_csv_inputs(data: dict, data_dir: Path, name: str) -> None:
    """The package reads ``<name>_HIGHPRE.csv`` (cells x genes counts, index = cell id),
    ``<name>.csv`` (external embedding, index = cell id) and ``<name>_cell_anno.csv``.
    It does not check that the rows of the two files are the same cells; we write them from
    one source in one order."""
    import pandas as pd

    data_dir.mkdir(parents=True, exist_ok=True)
    X = data["X"].toarray()
    if (X == X.astype(int)).all():
        X = X.astype(int)  # integer CSV, like the authors' HIGHPRE files
    pd.DataFrame(X, index=data["cells"], columns=data["genes"]).to_csv(data_dir / f"{name}_HIGHPRE.csv")
    emb = data["embedding"]
    pd.DataFrame(emb, index=data["cells"], columns=[f"scgpt_{i}" for i in range(emb.shape[1])]).to_csv(
        data_dir / f"{name}.csv"
    )
    pd.DataFrame({"cell_type": data["labels"]}, index=data["cells"]).to_csv(data_dir / f"{name}_cell_anno.csv")


def per_epoch_seconds() -> tuple[list[float], float]:
    """Epoch durations from the scheduler clock, evaluate() time (and the dumps' state copies)
    removed."""
    edges = [_Timeline.created] + list(_Timeline.epoch_ends)
    removed = list(_Timeline.evals) + (list(_Timeline.snaps.windows) if _Timeline.snaps is not None else [])
    secs = []
    for a, b in zip(edges[:-1], edges[1:]):
        d = b - a
        for s, e in removed:
            d -= max(0.0, min(b, e) - max(a, s))
        secs.append(d)
    eval_total = sum(e - s for s, e in _Timeline.evals)
    return secs, eval_total


def main(argv=None) -> int:
    args = parse_args(argv)
    clock = C.Clock()  # write_csv_seconds: from here (torch's import included) to the CSVs written
    out, data = C.start(args)
    log_path = out / "train.log"

    import numpy as np
    import torch

    n_cells, n_genes = data["X"].shape
    if data["embedding"].shape[1] != 512:
        # CrossModalClusterHead is hard-wired to input_dim=512 in sce2tm 1.2.3
        raise SystemExit(f"sce2tm needs a 512-d external embedding, got {data['embedding'].shape[1]}")
    snaps = C.Snapshots(args)
    data_dir = out / "data"
    t_csv = time.perf_counter()
    write_csv_inputs(data, data_dir, args.name)
    snaps.exclude("input conversion to the package's CSV files", time.perf_counter() - t_csv)
    del data
    clock.lap("write_csv")

    from scE2TM.api import _Args, set_seed
    from scE2TM.runners.Runner import Runner
    from scE2TM.utils.data.SingleCellDataHandler import SingleCellDataHandler

    install_shims(args.trace_sinkhorn)

    # the argument object built exactly as scE2TM.api.scE2TM builds it (its defaults)
    a = _Args()
    a.model = "scE2TM"
    a.dataset_name = args.name
    a.data_dir = str(data_dir)
    a.output_dir = str(out / "pkg_output")
    a.num_topics = args.n_topics
    a.num_neighbors = args.n_neighbors
    a.num_top_genes = 10
    a.tac_weight = 1.0
    a.gpu_id = -1
    a.batch_size = args.batch_size
    a.learning_rate = 0.001
    a.epochs = args.epochs
    a.beta_temp = 0.2
    a.en1_units = 200
    a.dropout = 0.0
    a.weight_loss_ECR = 100.0
    a.lr_scheduler = True
    a.lr_step_size = 125
    a.use_labels = False

    logbuf = open(log_path, "w")
    tee = logbuf if args.quiet else _Tee(sys.stdout, logbuf)
    with contextlib.redirect_stdout(tee):
        set_seed(args.seed)
        a.device = torch.device("cpu")
        t_setup0 = time.perf_counter()
        handler = SingleCellDataHandler(
            dataset_name=a.dataset_name, batch_size=a.batch_size, n_neighbors=a.num_neighbors,
            data_dir=a.data_dir, output_dir=a.output_dir, device=a.device, use_labels=False,
        )
        a.vocab_size = handler.expression_data.shape[1]
        a.gene_embeddings = handler.gene_embeddings
        runner = Runner(a)
        if snaps.enabled:
            _Timeline.snaps, _Timeline.model = snaps, runner.model
        setup_seconds = time.perf_counter() - t_setup0
        rss_before_train = C.current_rss_mib()
        peak_before_train = C.peak_rss_mib()

        t_train0 = time.perf_counter()
        beta = runner.train(
            train_loader=handler.train_loader, test_loader=handler.test_loader,
            gene_vocab=handler.gene_vocab, num_top_genes=a.num_top_genes, cell_labels=None,
        )
        t_train1 = time.perf_counter()
        peak_after_train = C.peak_rss_mib()

        # the package's "cell-topic matrix": Runner.test -> model in eval mode ->
        # encode_expression -> z = mu (batch-normalised encoder mean, no softmax)
        t_inf0 = time.perf_counter()
        logits = runner.test(handler.test_loader)
        infer_seconds = time.perf_counter() - t_inf0

        if snaps.enabled:
            final = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}

            def outputs(state):
                runner.model.load_state_dict(state)
                lg = runner.test(handler.test_loader)  # eval mode: the encoder mean, as the final output
                with torch.no_grad():
                    tg = runner.model.get_topic_gene_distribution().detach().cpu().numpy()
                return {"theta": C.softmax_rows(lg), "logits": lg, "topic_gene": tg}

            snaps.write(out, outputs, restore=lambda: runner.model.load_state_dict(final))
    logbuf.close()

    theta = C.softmax_rows(logits)
    epoch_secs, eval_seconds = per_epoch_seconds()
    train_seconds = sum(epoch_secs)
    C.save_npy(out / "logits.npy", logits.astype(np.float32))
    C.save_npy(out / "theta.npy", theta)
    C.save_npy(out / "topic_gene.npy", np.asarray(beta, dtype=np.float32))

    # mutual-kNN graph facts, rebuilt from the handler's padded neighbour lists
    graph = {}
    for view, idx in (("expression", handler.train_loader.dataset.expression_indices),
                      ("embedding", handler.train_loader.dataset.embedding_indices)):
        idx = np.asarray(idx)
        valid = idx >= 0
        n_valid = valid.sum(axis=1)
        self_only = (n_valid == 1) & (idx[:, 0] == np.arange(idx.shape[0]))
        graph[view] = {
            "mean_candidates_incl_self": float(n_valid.mean()),
            "cells_with_only_self": int(self_only.sum()),
            "p_sample_self_mean": float((1.0 / n_valid).mean()),
        }

    # the handler prints the component count of each mutual-kNN graph before connecting it
    import re

    comps = [int(m) for m in re.findall(r"Number of connected components: (\d+)", log_path.read_text())]
    if len(comps) == 2:
        graph["expression"]["mutual_knn_components_before_mst"] = comps[0]
        graph["embedding"]["mutual_knn_components_before_mst"] = comps[1]
    graph["note"] = ("expression kNN on raw counts, embedding kNN on the external view, both "
                     "euclidean (pynndescent, k=15 incl. self); mutual kNN joined into one component "
                     "with minimum-spanning-tree edges; candidates = the cell itself + its 1-hop "
                     "neighbours (<= 15); one drawn uniformly per cell per epoch in Python "
                     "(__getitem__, np.random.choice)")

    sink = _Timeline.sinkhorn_iters
    steps_per_epoch = int(np.ceil(n_cells / args.batch_size))
    timings = {
        **C.run_settings("sce2tm", args, n_cells, n_genes),
        "steps_per_epoch": steps_per_epoch,
        "train_seconds": train_seconds,
        "train_wall_seconds_incl_eval": t_train1 - t_train0,
        "evaluate_seconds_excluded": eval_seconds,
        "setup_seconds": setup_seconds,
        "setup_note": "SingleCellDataHandler: CSV read, 2 kNN searches (pynndescent) and the "
                      "mutual-kNN graphs with per-cell Python loops",
        "write_csv_seconds": clock.laps["write_csv"],
        "inference_seconds": infer_seconds,
        **C.train_summary(epoch_secs, n_cells * len(epoch_secs) / train_seconds if train_seconds else None,
                          peak_before_train, peak_after_train, rss_before_train),
        "sinkhorn_iterations_per_step": sink if args.trace_sinkhorn else None,
        "sinkhorn_iterations_per_epoch_mean": (
            [float(np.mean(sink[i:i + steps_per_epoch])) for i in range(0, len(sink), steps_per_epoch)]
            if sink else None
        ),
        "neighbour_sampling": graph,
        "outputs": {
            "theta.npy": "softmax(logits): cell-topic proportions",
            "logits.npy": "what sce2tm saves as the cell-topic matrix: batch-normalised encoder "
                          "mean mu (eval mode, no softmax)",
            "topic_gene.npy": "K x V beta = softmax over topics of -||t_k - g_m||^2 / 0.2 "
                              "(columns sum to 1)",
        },
        "shims": [
            "StepLR(verbose=...) dropped (removed in torch 2.13); its step() is the epoch clock",
            "umap nearest_neighbors n_jobs capped at NUMBA_NUM_THREADS",
            "Runner.evaluate replaced by its only training-relevant part, self.test(); excluded "
            "from train time",
        ] + (["ECR.forward: verbatim copy + Sinkhorn iteration counter"] if args.trace_sinkhorn else []),
    }
    if not args.keep_csv:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    return C.finish(out, timings, ["sce2tm", "numpy", "scipy", "pandas", "scanpy", "umap-learn",
                              "pynndescent", "numba", "faiss-cpu", "gseapy"],
                    f"[sce2tm] {args.epochs} epochs in {train_seconds:.1f} s "
                    f"({timings['seconds_per_epoch_mean']:.3f} s/epoch), setup {setup_seconds:.1f} s")


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


if __name__ == "__main__":
    sys.exit(main())
