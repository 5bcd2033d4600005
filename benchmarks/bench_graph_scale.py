"""Neighbour graphs at scale: out-of-core PCA + kNN / mutual kNN / spanning forest, 10^4..10^6 cells.

For each scaled file (``benchmarks/make_scaled.py``: real Kang PBMCs resampled with binomial
thinning, 1,287 genes), in a fresh process:

1. out-of-core PCA (``sctopic.data.pca.pca_blocks``, exact Gram path, 50 components) of the
   backed ``.h5ad`` read ``--block-rows`` rows at a time;
2. pynndescent's numba compilation, on a small random array (a once-per-process cost, reported
   apart) when the size uses the approximate search;
3. the kNN search (``sctopic.data.neighbors.knn``; exact chunked brute force up to
   ``EXACT_MAX_CELLS`` cells, pynndescent above), k = 15 other cells;
4. the mutual kNN graph, the minimum spanning forest and the union + padded lists
   (``graph_from_knn``; seconds of each step);
5. kNN recall of the search against exact brute force for ``--n-recall`` random query cells
   (exact neighbours against all ``n`` cells, ``knn(..., exact=True)``), and two descriptive fractions of
   the kNN lists: same ``cell_type``, and same ``source_cell`` (the resampling duplicates each
   real cell about n / 12,261 times, thinned, so at 10^6 most neighbours are thinned copies of
   the same real cell: the data measure time and memory, not graph structure).

Peak RSS is the process's ``ru_maxrss`` read after each step (a running maximum, so the step
where it jumps holds the peak); the 1-minute load average is recorded before and after each
size (the 2-CPU machine is shared with other jobs).

Then, because at 10^6 the scaled file's kNN lists are all copies of one real cell, steps 2-5
on 10^6 distinct points interpolated between real neighbouring cells (``interpolated_row``).

Writes ``benchmarks/results/graph_scale.{json,md}``.

Usage (threads as in the results: 2)::

    NUMBA_NUM_THREADS=2 OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_graph_scale.py

``graph_scale_row(path)`` runs one size in the current process (``bench_scale.py`` imports
it); ``graph_scale_row_fresh(path)`` runs it in a fresh subprocess, which is what the peak RSS
needs.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import (
    BENCH,
    DATASETS,
    RESULTS,
    current_rss_mib,
    load1,
    make_parser,
    peak_rss_mib,
    scaled_path,
    write_report,
)

SIZES = (10_000, 100_000, 1_000_000)
SOURCE = DATASETS["kang8"].path


def _threads() -> dict:
    return {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _other_cells(X, k: int, seed: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other cells of every cell (``knn`` counts the cell: ask ``k + 1``, drop
    column 0), as contiguous arrays."""
    from sctopic.data.neighbors import knn

    ind, dist = knn(X, k + 1, exact=exact, seed=seed)
    return np.ascontiguousarray(ind[:, 1:]), np.ascontiguousarray(dist[:, 1:])


def graph_scale_row(
    path: str | Path,
    n_comps: int = 50,
    k: int = 15,
    seed: int = 0,
    n_recall: int = 2000,
    block_rows: int = 20_000,
) -> dict:
    """Out-of-core PCA and the neighbour graph of one backed ``.h5ad``; times, RSS and stats.

    Peak RSS figures (``*_peak_rss_mib``) are the process's running maximum: meaningful when
    the call runs in a fresh process (see :func:`graph_scale_row_fresh`).
    """
    import anndata as ad

    from sctopic.data.pca import pca_blocks, row_blocks

    row: dict = {"path": str(path), "load1_before": load1(), "rss_start_mib": round(current_rss_mib(), 1),
                 "threads": _threads()}
    t_all = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r")
    n, V = adata.shape
    row.update(n_cells=int(n), n_genes=int(V), n_comps=int(n_comps), k=int(k))

    t = time.perf_counter()
    X, model = pca_blocks(row_blocks(adata.X, block_rows), V, n_comps, seed=seed,
                          return_model=True)
    row["pca_s"] = round(time.perf_counter() - t, 2)
    row["pca_method"] = model.method
    row["pca_block_rows"] = int(block_rows)
    row["pca_explained_variance_ratio_sum"] = round(float(model.explained_variance_ratio.sum()), 4)
    row["pca_peak_rss_mib"] = round(peak_rss_mib(), 1)
    obs = adata.obs[[c for c in ("cell_type", "source_cell") if c in adata.obs]].copy()
    adata.file.close()
    del adata, model

    _search_and_graph(row, X, k, seed, n_recall, obs=obs)
    del X
    row["total_s"] = round(time.perf_counter() - t_all, 2)
    row["peak_rss_mib"] = round(peak_rss_mib(), 1)
    row["load1_after"] = load1()
    return row


def _search_and_graph(row: dict, X: np.ndarray, k: int, seed: int, n_recall: int, obs) -> None:
    """Steps 2-5 of the module docstring on the PCs ``X``; results go into ``row``."""
    from sctopic.data.graphs import graph_from_knn
    from sctopic.data.neighbors import knn, uses_exact_search

    n = X.shape[0]
    exact = uses_exact_search(n)
    row["knn_method"] = "exact (chunked brute force)" if exact else "pynndescent"
    row["jit_s"] = 0.0
    if not exact:
        from pynndescent import NNDescent

        t = time.perf_counter()
        rng = np.random.default_rng(0)
        NNDescent(rng.normal(size=(3000, X.shape[1])).astype(np.float32), n_neighbors=k + 1,
                  random_state=0, low_memory=True, compressed=True).neighbor_graph
        row["jit_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    ind, dist = _other_cells(X, k, seed, exact)
    row["knn_s"] = round(time.perf_counter() - t, 2)
    row["knn_peak_rss_mib"] = round(peak_rss_mib(), 1)

    # Recall against exact brute force on random query cells.
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, size=min(n_recall, n), replace=False))
    ei, _ = knn(X, k + 1, exact=True, queries=q)
    hits = 0
    for qi, row_e, row_a in zip(q.tolist(), ei.tolist(), ind[q].tolist()):
        truth = [j for j in row_e if j != qi][:k]  # the k exact neighbours other than the cell
        hits += len(set(truth) & set(row_a))
    row["recall_queries"] = int(len(q))
    row["knn_recall"] = round(hits / (len(q) * k), 4)
    row["recall_exact_s"] = round(time.perf_counter() - t, 2)
    for col in [] if obs is None else obs.columns:
        lab = obs[col].astype(str).to_numpy()
        same = 0
        for a in range(0, n, 100_000):
            same += int((lab[ind[a : a + 100_000]] == lab[a : a + 100_000, None]).sum())
        row[f"knn_same_{col}"] = round(same / ind.size, 4)

    g = graph_from_knn(ind, dist)
    del ind, dist
    s = g.stats
    row["mutual_s"] = s["seconds"]["mutual"]
    row["forest_s"] = s["seconds"]["forest"]
    row["lists_s"] = s["seconds"]["lists"]
    row["graph_s"] = round(row["knn_s"] + row["mutual_s"] + row["forest_s"] + row["lists_s"], 2)
    # What building the graph costs a fresh process: numba compilation + kNN..lists (no PCA).
    row["graph_seconds"] = round(row["jit_s"] + row["graph_s"], 2)
    row["graph_peak_rss_mib"] = round(peak_rss_mib(), 1)
    row["graph"] = {key: v for key, v in s.items() if key != "seconds"}
    row["graph_memory_mib"] = {
        "adjacency": round((g.adjacency.data.nbytes + g.adjacency.indices.nbytes
                            + g.adjacency.indptr.nbytes) / 2**20, 1),
        "neighbours": round(g.neighbours.nbytes / 2**20, 1),
        "pca_scores": round(X.nbytes / 2**20, 1),
    }
    del g


def _fresh(func: str, *args, **kw) -> dict:
    """Run ``func(*args, **kw)`` of this module in a fresh Python process; its JSON result."""
    code = ("import json, sys; sys.path.insert(0, %r); import bench_graph_scale as b; "
            "print('@@ROW@@' + json.dumps(b.%s(*%r, **%r)))" % (str(BENCH), func, args, kw))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("@@ROW@@")][-1]
    return json.loads(line[len("@@ROW@@"):])


def graph_scale_row_fresh(path: str | Path, **kw) -> dict:
    """:func:`graph_scale_row` in a fresh Python process (same environment), for its peak RSS."""
    return _fresh("graph_scale_row", str(path), **kw)


def interpolated_row(n: int = 1_000_000, k: int = 15, seed: int = 0, n_recall: int = 2000) -> dict:
    """kNN search and graph on ``n`` points interpolated between real neighbouring cells.

    A check of the search where the scaled files are too easy (at 10^6 every kNN list is
    thinned copies of one real cell): 50 PCs of the 12,261 real Kang cells, each new point
    ``x_i + t (x_j - x_i)`` for a random cell ``i``, one of its 15 nearest neighbours ``j``,
    ``t ~ U(0, 1)``: distinct points on the data's manifold, no islands of copies.
    """
    import anndata as ad

    from sctopic.data.counts import get_counts, pca_embedding

    row: dict = {"path": f"interpolated from {SOURCE.name}", "load1_before": load1(), "threads": _threads()}
    t_all = time.perf_counter()
    pcs = pca_embedding(get_counts(ad.read_h5ad(SOURCE)), 50, seed)
    nb, _ = _other_cells(pcs, 15, seed, True)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(pcs), n)
    j = nb[i, rng.integers(0, nb.shape[1], n)]
    t = rng.random(n, dtype=np.float32)[:, None]
    X = (pcs[i] + t * (pcs[j] - pcs[i])).astype(np.float32)
    del i, j, t, nb
    row.update(n_cells=int(n), n_genes=None, n_comps=50, k=int(k), pca_s=None, pca_method=None,
               pca_peak_rss_mib=round(peak_rss_mib(), 1))
    _search_and_graph(row, X, k, seed, n_recall, obs=None)
    row["total_s"] = round(time.perf_counter() - t_all, 2)
    row["peak_rss_mib"] = round(peak_rss_mib(), 1)
    row["load1_after"] = load1()
    return row


def _md(rows: list[dict], interp: list[dict], meta: dict) -> str:
    from sctopic.data.neighbors import EXACT_MAX_CELLS

    out = ["# Neighbour graphs at scale (out-of-core PCA + kNN graph)", ""]
    out.append(
        f"Data: `benchmarks/work/scale/kang_N.h5ad` (real Kang PBMCs resampled with binomial "
        f"thinning, {rows[0]['n_genes']} genes; `benchmarks/make_scaled.py`), read backed. "
        f"{rows[0]['n_comps']} PCs (exact Gram-path out-of-core PCA, `sctopic.data.pca`), "
        f"k = {rows[0]['k']}; one graph (the expression view; a second view costs the same "
        f"again). Machine: {meta['cpus']} CPUs shared with other agents' jobs during the run "
        f"(see the load averages), threads {rows[0]['threads']}, {meta['date']}. Each size ran "
        "in a fresh process; peak RSS = ru_maxrss of that process (includes ~120 MiB of "
        "Python + libraries at start), read after each step (running maximum).")

    def table(rs):
        t = ["| cells | PCA s | numba JIT s | kNN s | mutual s | forest s | lists s | "
             "graph s (kNN..lists) | total s | peak RSS after PCA / kNN / graph (MiB) | "
             "recall@15 | load 1-min before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            pca = "-" if r.get("pca_s") is None else r["pca_s"]
            t.append(
                f"| {r['n_cells']:,} | {pca} | {r['jit_s']} | {r['knn_s']} ({r['knn_method']}) | "
                f"{r['mutual_s']} | {r['forest_s']} | {r['lists_s']} | {r['graph_s']} | "
                f"{r['total_s']} | {r['pca_peak_rss_mib']:.0f} / {r['knn_peak_rss_mib']:.0f} / "
                f"{r['graph_peak_rss_mib']:.0f} | {r['knn_recall']} | "
                f"{r['load1_before']} / {r['load1_after']} |")
        return t

    def stats(rs):
        t = ["| cells | components | mutual-kNN comps | isolated in mutual | mutual edges | "
             "forest edges | edges | mean deg | max deg | list width | capped cells | "
             "kNN same cell_type | kNN same source cell | adjacency / lists / PCs MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            g, m = r["graph"], r["graph_memory_mib"]
            t.append(
                f"| {r['n_cells']:,} | {g['components']} | {g['components_mutual_knn']} | "
                f"{g['isolated_in_mutual_knn']} | {g['mutual_edges']} | {g['forest_edges']} | "
                f"{g['edges']} | {g['mean_degree']:.2f} | {g['max_degree']} | {g['list_width']} | "
                f"{g['capped_cells']} | {r.get('knn_same_cell_type', '-')} | "
                f"{r.get('knn_same_source_cell', '-')} | "
                f"{m['adjacency']} / {m['neighbours']} / {m['pca_scores']} |")
        return t

    big = [r for r in rows if r["n_cells"] >= 1_000_000]
    if big:
        r = big[-1]
        out += ["", f"Targets at {r['n_cells']:,} cells: PCA + numba compilation + graph "
                f"{r['total_s'] / 60:.1f} min (target: graph under 15 min); peak RSS "
                f"{r['peak_rss_mib'] / 1024:.2f} GiB (aim: under 2.5 GiB, inside the 4 GiB of "
                "the whole backed training)."]
    out += ["", "## Scaled files: PCA from the backed file, then the graph", ""] + table(rows)
    out += ["", "Graph statistics:", ""] + stats(rows)
    if interp:
        out += ["", "## Search check: points interpolated between real neighbouring cells", "",
                "At 10^6 every kNN list of the scaled file is thinned copies of one real cell "
                "(last column above), an easy search. Here 50 PCs of the 12,261 real Kang cells "
                "are grown to n distinct points `x_i + t (x_j - x_i)` (random cell i, one of its "
                "15 nearest neighbours j, t ~ U(0, 1)); no PCA step (the column shows '-'), the "
                "'after PCA' RSS is after making the points.", ""] + table(interp)
        out += ["", "Graph statistics:", ""] + stats(interp)
    out += ["", "Notes:", "",
            "* recall@15: fraction of the exact 15 nearest neighbours (brute force against all "
            f"cells, chunked) found by the search, over {rows[0]['recall_queries']} random query "
            f"cells. Up to {EXACT_MAX_CELLS:,} cells the search is exact (recall 1 by construction: a check of "
            "the chunked path). pynndescent's result depends on the numba thread count (at 10^5: "
            "0.9744 with 1 thread, 0.9723 with 2).",
            "* numba JIT: pynndescent's compilation, once per process, paid before the first "
            "approximate search (warmed up here on 3,000 random points); not in the kNN column, "
            "in the total.",
            "* 'components' are those of the final graph (= those of the kNN graph). The scaled "
            "files hold ~n/12,261 thinned copies of each real cell, so at 10^6 the kNN graph "
            "splits into about one island per real cell: the graph structure at that size is an "
            "artefact of the resampling; time and memory are what those rows measure.",
            "* The 1-minute load average includes this benchmark's own threads (up to 2)."]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = make_parser(__doc__, out=RESULTS / "graph_scale")
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    p.add_argument("--interpolated", type=int, nargs="*", default=[1_000_000],
                   help="sizes of the interpolated search check (none to skip)")
    p.add_argument("--n-recall", type=int, default=2000)
    p.add_argument("--block-rows", type=int, default=20_000)
    a = p.parse_args(argv)
    rows, interp = [], []
    for n in a.sizes:
        r = graph_scale_row_fresh(scaled_path(n), n_recall=a.n_recall,
                                  block_rows=a.block_rows)
        print(json.dumps({x: r[x] for x in r if x != "graph"}), flush=True)
        rows.append(r)
    for n in a.interpolated:
        r = _fresh("interpolated_row", n, n_recall=a.n_recall)
        print(json.dumps({x: r[x] for x in r if x != "graph"}), flush=True)
        interp.append(r)
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    md = _md(rows, interp, meta)
    write_report(Path(a.out), {"meta": meta, "rows": rows, "interpolated": interp}, md)
    print(md)


if __name__ == "__main__":
    main()
