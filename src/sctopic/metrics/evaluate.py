"""One call that scores a fitted topic model: clustering, mixing and interpretability.

The result is a flat, JSON-ready dict (see :func:`evaluate` for the keys).  Metrics whose
inputs are missing are ``None`` rather than absent, so tables over many runs line up.
"""
from __future__ import annotations

import time
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from sctopic.errors import InputError
from sctopic.metrics.clustering import cluster_sweep, celltype_accuracy
from sctopic.metrics.enrichment import DEFAULT_FDR, enrichment_summary
from sctopic.metrics.integration import batch_asw, kbet, silhouette
from sctopic.metrics.interpretability import (
    interpretability_purity,
    topic_coherence,
    topic_diversity,
    topic_diversity_exclusive,
    topic_quality,
)
from sctopic.data.io import jsonable
from sctopic.data.outputs import clustering_key, model_outputs, read_result

#: gene-set library used when none is given (first entry drives the flat keys)
DEFAULT_GENESETS: tuple[str, ...] = ("go_bp_human",)

#: the flat keys every evaluation returns, in this order
FLAT_KEYS: tuple[str, ...] = (
    "ari_oracle", "nmi_oracle", "resolution_oracle", "ari_fixed", "nmi_fixed",
    "asw", "kbet", "batch_asw", "tc", "td", "td_exclusive", "tq", "ip",
    "ora_n", "ora_u", "ora_q", "gsea_n", "gsea_u", "gsea_q",
)


def _obs_column(adata, key, what: str):
    """Values of an obs column (or an array passed directly)."""
    if key is None:
        return None
    if isinstance(key, str):
        if key not in adata.obs.columns:
            cols = ", ".join(map(str, adata.obs.columns)) or "(none)"
            raise InputError(f"no {what} column {key!r} in obs; available columns: {cols}")
        from sctopic.data.validate import check_label_column

        check_label_column(adata.obs[key], key, what)
        return adata.obs[key].to_numpy(dtype=object)
    values = np.asarray(key, dtype=object)
    if len(values) != adata.n_obs:
        raise InputError(f"{what} have {len(values)} entries but the data has {adata.n_obs} cells")
    return values


def evaluate(
    adata_or_dir,
    labels: str | Sequence | None = None,
    batch_key: str | Sequence | None = None,
    genesets: Sequence | str | None = DEFAULT_GENESETS,
    model: str | None = None,
    *,
    use_rep: str | None = None,
    permutations: int = 1000,
    seed: int = 0,
    top_n: int = 10,
    fdr: float = DEFAULT_FDR,
    k: int = 15,
    resolutions: Sequence[float] | None = None,
    method: Literal["leiden", "louvain"] = "leiden",
    fixed_resolution: float = 1.0,
    n_clusters: int | None = None,
    kbet_k: int = 50,
    zero_convention: float = 0.0,
    absent: Literal["zero", "skip"] = "zero",
    tc_documents: Literal["matched", "all"] = "matched",
    asw_max_cells: int | None = 20000,
    progress=None,
) -> dict:
    """Score a fitted topic model's result.

    Parameters
    ----------
    adata_or_dir
        A model output directory holding ``result.h5ad``, an ``.h5ad`` path, or an AnnData
        following the contract in :mod:`sctopic.data.outputs`.
    labels
        obs column (or array) of cell types; ``None`` leaves label metrics null.
        Cells with a missing label are left out of label metrics.
    batch_key
        obs column (or array) of batches for kBET and batch ASW; ``None`` leaves them null.
    genesets
        Gene-set libraries (names or GMT paths for :func:`sctopic.genesets.load`, or loaded
        libraries).  The first one gives the flat ``tc``/``tq``/``ora_*``/``gsea_*`` keys;
        all are under ``"genesets"``.  Empty or ``None``: no coherence or enrichment.
    model
        Model name; default ``adata.uns["sctopic"]["model"]``.
    use_rep
        obsm key of the embedding to cluster and score (default the representation the model
        recommends, ``uns["sctopic"]["clustering_key"]``; theta ``X_<model>`` for files
        without it).  Interpretability purity always uses theta.
    permutations
        GSEA permutations; 0 skips GSEA (``gsea_*`` null).
    seed
        Seed for neighbour search, community detection, subsampling and GSEA.
    top_n
        Top genes per topic for TD, TC and ORA (h = 10 in the paper).
    fdr
        Enrichment significance threshold (FDR < fdr); the reference notebook used 0.01.
    k, resolutions, method, fixed_resolution
        Clustering protocol, see :func:`sctopic.metrics.cluster_sweep`.
    n_clusters
        Target cluster count for the ``*_matched`` keys; default the number of cell types.
    kbet_k
        Neighbourhood size of kBET.
    zero_convention, absent, tc_documents
        NPMI conventions (``tc_documents`` is its ``documents``), see
        :func:`sctopic.metrics.topic_coherence`.
    asw_max_cells
        Cells scored by the silhouettes at most (random subset above it).
    progress
        Called with one message as each part finishes (e.g. the CLI's stage printer); None: silent.

    Returns
    -------
    dict
        Flat keys :data:`FLAT_KEYS` (``None`` when not computable), plus
        ``resolution_fixed``, ``n_clusters_oracle``, ``n_clusters_fixed``, ``ari_matched``,
        ``nmi_matched``, ``resolution_matched``, ``n_clusters_matched``, ``asw_raw``,
        ``accuracy_fixed`` / ``accuracy_oracle`` (Hungarian-matched per-cell-type accuracy),
        ``clustering`` (protocol and per-resolution table), ``genesets`` (library name ->
        ``tc``, ``ora_*``, ``gsea_*``, ``ora_pairs``, ``gsea_pairs``), ``model``, ``use_rep``,
        ``n_cells``, ``n_genes``, ``n_topics``, ``settings`` and ``seconds`` (part -> s).
    """
    if not (isinstance(fixed_resolution, (int, float)) and np.isfinite(fixed_resolution) and fixed_resolution > 0):
        raise InputError(f"fixed_resolution (--resolution) must be a number > 0, got {fixed_resolution!r}.")
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    def _tick(part: str, t0: float) -> None:
        seconds[part] = round(time.perf_counter() - t0, 4)
        if progress is not None and part != "load":  # a callable taking one message (the CLI's stage printer)
            progress(f"{part} computed in {seconds[part]:.1f} s")

    t0 = time.perf_counter()
    adata = read_result(adata_or_dir)
    outs = model_outputs(adata, model)
    if outs.topic_gene is not None and not 1 <= top_n <= outs.topic_gene.shape[1]:
        # before the clustering sweep, not after it
        raise InputError(f"top_n (--top-n) is {top_n}, but the model has {outs.topic_gene.shape[1]} genes; "
                         f"pass --top-n between 1 and {outs.topic_gene.shape[1]}.")
    _tick("load", t0)

    if use_rep is not None:
        if use_rep not in adata.obsm:
            keys = ", ".join(adata.obsm.keys()) or "(none)"
            raise InputError(f"no embedding {use_rep!r} in obsm; available keys: {keys}")
        rep = adata.obsm[use_rep]
        rep = np.asarray(rep.toarray() if hasattr(rep, "toarray") else rep, dtype=np.float64)
        rep_key = use_rep
    elif outs.theta is not None:
        rep_key = clustering_key(adata, outs.model) or f"X_{outs.model}"
        rep = outs.theta if rep_key == f"X_{outs.model}" else np.asarray(adata.obsm[rep_key], dtype=np.float64)
    else:
        raise InputError(
            "cannot find the cell-topic matrix: set uns['sctopic']['model'] in the result, "
            f"or pass model=/use_rep= (obsm keys: {', '.join(adata.obsm.keys()) or '(none)'})"
        )
    if rep.ndim != 2 or not np.isfinite(rep).all():
        raise InputError(f"obsm[{rep_key!r}] must be a finite cells x dimensions matrix")
    y = _obs_column(adata, labels, "label")
    batches = _obs_column(adata, batch_key, "batch")

    res: dict = {key: None for key in FLAT_KEYS}
    res.update(asw_raw=None, accuracy_fixed=None, accuracy_oracle=None, genesets={})
    labelled = None
    if y is not None:
        labelled = ~pd.isna(pd.Series(y)).to_numpy()
        if not labelled.any():
            raise InputError("every cell's label is missing")
        n_types = int(pd.Series(y[labelled]).nunique())
        if n_clusters is None:
            n_clusters = n_types

    # --- clustering -------------------------------------------------------------------
    t0 = time.perf_counter()
    sweep = cluster_sweep(
        rep, y, k=k, resolutions=resolutions, method=method, seed=seed,
        fixed_resolution=fixed_resolution, n_clusters=n_clusters, return_clusters=True,
    )
    _tick("clustering", t0)
    for key in ("oracle", "fixed", "matched"):
        for m in ("ari", "nmi", "resolution", "n_clusters"):
            res[f"{m}_{key}"] = sweep[f"{m}_{key}"]
    clusters = sweep.pop("clusters")
    if y is not None:
        fixed_c = clusters.get(float(fixed_resolution))
        if fixed_c is not None:
            res["accuracy_fixed"] = celltype_accuracy(y[labelled], fixed_c[labelled])
        res["accuracy_oracle"] = celltype_accuracy(y[labelled], clusters[sweep["resolution_oracle"]][labelled])
    res["clustering"] = {
        key: sweep[key] for key in ("method", "k", "weights", "table")
    } | {"fixed_resolution": float(fixed_resolution), "n_clusters_target": n_clusters}

    # --- cell-type separation and batch mixing -----------------------------------------
    if y is not None:
        t0 = time.perf_counter()
        s = silhouette(rep[labelled], y[labelled], max_cells=asw_max_cells, seed=seed)
        res["asw"], res["asw_raw"] = s["asw"], s["asw_raw"]
        _tick("asw", t0)
    if batches is not None:
        has_batch = ~pd.isna(pd.Series(batches)).to_numpy()
        t0 = time.perf_counter()
        res["kbet"] = kbet(rep[has_batch], batches[has_batch], k=kbet_k, seed=seed)["kbet"]
        _tick("kbet", t0)
        if y is not None:
            t0 = time.perf_counter()
            both = has_batch & labelled
            res["batch_asw"] = batch_asw(
                rep[both], y[both], batches[both], max_cells_per_type=asw_max_cells, seed=seed
            )["batch_asw"]
            _tick("batch_asw", t0)

    # --- topics ------------------------------------------------------------------------
    t0 = time.perf_counter()
    if outs.theta is not None and y is not None:
        res["ip"] = interpretability_purity(outs.theta[labelled], y[labelled])
    if outs.topic_gene is not None:
        tg = outs.topic_gene
        if not 1 <= top_n <= tg.shape[1]:
            raise InputError(f"top_n (--top-n) is {top_n}, but the model has {tg.shape[1]} genes; "
                             f"pass --top-n between 1 and {tg.shape[1]}.")
        res["td"] = topic_diversity(tg, top_n)
        res["td_exclusive"] = topic_diversity_exclusive(tg, top_n)
        _tick("ip_td", t0)
        libs = [genesets] if isinstance(genesets, str) else list(genesets or [])
        per_lib = {}
        genes = outs.genes or list(map(str, adata.var_names))
        for lib in libs:
            per_lib_res, lib_secs = _score_library(
                lib, tg, genes, top_n=top_n, fdr=fdr, permutations=permutations, seed=seed,
                zero_convention=zero_convention, absent=absent, documents=tc_documents,
            )
            name = per_lib_res.pop("name")
            while name in per_lib:  # two libraries with the same name: keep both
                name = f"{name}_{len(per_lib)}"
            per_lib[name] = per_lib_res
            for part, sec in lib_secs.items():
                seconds[f"{part}:{name}"] = sec
        if per_lib:
            first = next(iter(per_lib.values()))
            for key in ("tc", "ora_n", "ora_u", "ora_q", "gsea_n", "gsea_u", "gsea_q"):
                res[key] = first[key]
            if res["tc"] is not None:
                res["tq"] = topic_quality(res["tc"], res["td"])
            for lib_res in per_lib.values():
                lib_res["tq"] = None if lib_res["tc"] is None else topic_quality(lib_res["tc"], res["td"])
        res["genesets"] = per_lib

    res.update(
        model=outs.model,
        use_rep=rep_key,
        labels=labels if isinstance(labels, str) else None,
        batch_key=batch_key if isinstance(batch_key, str) else None,
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        n_topics=None if outs.topic_gene is None else int(outs.topic_gene.shape[0]),
        settings={
            "top_n": top_n, "fdr": fdr, "permutations": permutations, "seed": seed,
            "kbet_k": kbet_k, "zero_convention": zero_convention, "absent": absent,
            "tc_documents": tc_documents, "k": k, "method": method,
        },
    )
    seconds["total"] = round(time.perf_counter() - t_start, 4)
    res["seconds"] = seconds
    return jsonable(res)


def _score_library(
    lib, topic_gene, genes, *, top_n, fdr, permutations, seed, zero_convention, absent, documents,
) -> tuple[dict, dict]:
    """TC, ORA and GSEA summaries for one gene-set library."""
    from sctopic import genesets as gs

    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    library = gs.load(lib) if isinstance(lib, str) or hasattr(lib, "__fspath__") else lib
    # match once; TC, ORA and GSEA then share the same sets (5..500 dataset genes)
    matched = library.match(genes) if hasattr(library, "match") else library
    name = str(getattr(library, "name", None) or getattr(matched, "library", None) or lib)
    secs["load"] = round(time.perf_counter() - t0, 4)
    out: dict = {"name": name, "n_sets": int(len(matched)) if hasattr(matched, "__len__") else None}

    t0 = time.perf_counter()
    out["tc"] = topic_coherence(
        topic_gene, genes, matched if documents == "matched" else library, top_n,
        zero_convention=zero_convention, absent=absent, documents=documents,
    )
    secs["tc"] = round(time.perf_counter() - t0, 4)

    t0 = time.perf_counter()
    ora = gs.ora(topic_gene, genes, matched, top_n=top_n, with_genes=False)
    summ = enrichment_summary(ora, fdr, positive_only=False)
    out.update(ora_n=summ["n"], ora_u=summ["u"], ora_q=summ["q"], ora_pairs=summ["pairs"])
    secs["ora"] = round(time.perf_counter() - t0, 4)

    if permutations and permutations > 0:
        t0 = time.perf_counter()
        gsea = gs.gsea(topic_gene, genes, matched, permutations=permutations, seed=seed)
        summ = enrichment_summary(gsea, fdr, positive_only=True)
        out.update(gsea_n=summ["n"], gsea_u=summ["u"], gsea_q=summ["q"], gsea_pairs=summ["pairs"])
        secs["gsea"] = round(time.perf_counter() - t0, 4)
    else:
        out.update(gsea_n=None, gsea_u=None, gsea_q=None, gsea_pairs=None)
    return out, secs
