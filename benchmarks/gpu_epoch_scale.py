"""SCE2TM training epochs at 10^6 cells, in memory and backed, without 10^6-cell setup (``gpu_run.sh epoch``).

``bench_scale.py`` times the whole user path; at 10^6 cells its setup (reading, gene statistics,
PCA and neighbour graphs of all cells: 276 s on the H100 machine) leaves no room for both modes
in one device session. This script times the training epochs alone, through the same code:
the model is built on Kang 8 donors (12,261 cells, seconds), and :func:`sctopic.train.plan.run_plan`
then trains its module on the ``make_scaled.py`` file of N cells (1,287 genes, the same as
``bench_scale.py``'s): in memory (``X`` read whole, minibatches gathered on the device as
training does) or backed (``BackedCounts`` + the row-reader of ``backed=True``). What differs
from a user's run is where the per-cell inputs come from: each cell's external view is its
source Kang cell's (``obs["source_cell"]``), and its neighbours in both graphs are 6 random
cells (training samples one per anchor per step, from anywhere in the data, as a real graph's
neighbours are; the cost is the same).

ECR is on at weight 100 (the second half of training). Variants: ``eager`` (today's step) and
``graphs`` (``cuda_graphs=True``, 50 fixed Sinkhorn iterations, float32 solve), each for
``--epochs`` epochs; seconds per epoch = the median of the epochs after the first (the first
pays warm-up and graph capture). Writes ``$OUT/epoch_scale.json`` and ``.md``.

Usage (GPU): ``python benchmarks/gpu_epoch_scale.py --data benchmarks/work/scale/kang_1000000.h5ad``;
a CPU check: ``--device cpu --data kang_3000.h5ad --epochs 1 --variants eager``.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from harness import DATASETS, fmt, make_parser, md_table, peak_rss_mib, write_report


def parse_args(argv=None):
    p = make_parser(__doc__, n_topics=100, threads=16)
    p.add_argument("--data", required=True, help="make_scaled.py's file of N cells")
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", nargs="+", default=["memory", "backed"], choices=["memory", "backed"])
    p.add_argument("--variants", nargs="+", default=["graphs"], choices=["eager", "graphs"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--num-workers", type=int, default=2, help="backed: reader threads")
    p.add_argument("--sinkhorn-iterations", type=int, default=50)
    p.add_argument("--solve-dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"), help="folder of epoch_scale.json")
    return p.parse_args(argv)


def source_model(args):
    """SCE2TM built on the Kang cells the scaled file resamples."""
    import anndata as ad

    import sctopic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sctopic.SCE2TM(ad.read_h5ad(DATASETS["kang8"].path), n_topics=args.n_topics, seed=0)


def scaled_inputs(model, path: Path, mode: str):
    """The scaled cells' counts over the model's genes (CSR or BackedCounts) and external view."""
    import anndata as ad

    from sctopic.data.backed import BackedCounts

    file = ad.read_h5ad(path, backed="r")
    cols = file.var_names.get_indexer(model.genes)
    if (cols < 0).any():
        raise SystemExit(f"{path} lacks {int((cols < 0).sum())} of the model's genes")
    src = model.adata.obs_names.get_indexer(file.obs["source_cell"].astype(str))
    view = np.asarray(model.external_.matrix, dtype=np.float32)[src]
    file.file.close()
    if mode == "backed":
        return BackedCounts(path, cols=cols), view
    X = ad.read_h5ad(path).X
    return X[:, cols].tocsr().astype(np.float32), view


def random_graphs(n: int, width: int = 8, degree: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    nb = rng.integers(0, n, (n, width), dtype=np.int64)
    nb[:, degree:] = -1
    deg = np.full(n, degree, dtype=np.int64)

    def graphs(device, cells):
        import torch

        t = (torch.as_tensor(nb, device=device), torch.as_tensor(deg, device=device))
        return {"expr": t, "ext": t}

    return graphs


def run(model, X, view, mode: str, variant: str, args) -> dict:
    import torch

    from sctopic.models.batches import cross_view_batches
    from sctopic.train.plan import Optimisation, RunOptions, TrainingPlan, run_plan
    from sctopic.train.schedules import Constant

    module = copy.deepcopy(model.module)
    graphs = variant == "graphs"
    module.ecr.n_iter = args.sinkhorn_iterations if graphs else None
    module.ecr.solve_dtype = args.solve_dtype if graphs else "float64"
    cve = float(model.init_params.get("cve_weight_value", 1.0))
    plan = TrainingPlan(args.epochs, args.batch_size, 0, Optimisation(),
                        weights={"ecr_weight": Constant(100.0), "cve_weight": Constant(cve)})
    options = RunOptions(device=args.device, progress=False, write_results=False, cuda_graphs=graphs,
                         num_workers=args.num_workers)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_plan(plan, options, module=module, X=X, codes=None,
                          batch_builder=cross_view_batches(args.batch_size, view, random_graphs(X.shape[0])),
                          identity=model)
    ep = result.history["epoch_seconds"]
    steady = ep[1:] if len(ep) > 1 else ep
    n = int(X.shape[0])
    s = float(statistics.median(steady))
    return {"mode": mode, "variant": variant, "n_cells": n, "epoch_seconds": ep, "seconds_per_epoch": s,
            "cells_per_second": n / s, "run_seconds": time.perf_counter() - t,
            "loss": result.history["loss"][-1], "sinkhorn_error": result.history.get("sinkhorn_error", [None])[-1],
            "settings": {k: result.settings.get(k) for k in ("cuda_graphs", "precision", "batch_size", "device")},
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None,
            "peak_rss_mib": peak_rss_mib()}


def markdown(res: dict) -> str:
    rows = [[r.get("mode"), r.get("variant"), fmt(r.get("n_cells")), fmt(r.get("seconds_per_epoch"), 2),
             fmt(r.get("cells_per_second"), 0), fmt(r.get("peak_gpu_mib"), 0), r.get("error", "")[:80]]
            for r in res["runs"]]
    ratio = res.get("backed_over_memory")
    return (f"# SCE2TM epochs at scale ({res['device_name']}, torch {res['torch']})\n\n"
            f"{res['data']}; batch {res['batch_size']}; ECR weight 100; epochs after the first.\n\n"
            + "\n".join(md_table(["mode", "variant", "cells", "s/epoch", "cells/s", "peak GPU MiB", "error"], rows))
            + (f"\n\nbacked / in memory (graphs): {ratio:.2f}\n" if ratio else "\n"))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = source_model(args)
    res = {"data": str(args.data), "device": args.device, "torch": torch.__version__,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "batch_size": args.batch_size, "setup_seconds": time.perf_counter() - t0, "runs": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in args.modes:
        t = time.perf_counter()
        X, view = scaled_inputs(model, Path(args.data), mode)
        load_s = time.perf_counter() - t
        for variant in args.variants:
            try:
                row = run(model, X, view, mode, variant, args)
            except Exception as exc:  # noqa: BLE001 - keep the other runs
                row = {"mode": mode, "variant": variant, "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-3000:]}
            row["load_seconds"] = load_s
            res["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "epoch_seconds")}), flush=True)
            by = {(r.get("mode"), r.get("variant")): r.get("seconds_per_epoch") for r in res["runs"]}
            if by.get(("memory", "graphs")) and by.get(("backed", "graphs")):
                res["backed_over_memory"] = by[("backed", "graphs")] / by[("memory", "graphs")]
            write_report(out / "epoch_scale", res, markdown(res))
        del X
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
