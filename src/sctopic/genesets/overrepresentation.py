"""Over-representation analysis (ORA) of each topic's top genes, all topics and sets at once."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import hypergeom

from sctopic.errors import InputError
from sctopic.genesets._inputs import LibraryLike, check_topic_gene, match_library
from sctopic.genesets.stats import bh_fdr

def top_genes(topic_gene: np.ndarray, candidates: np.ndarray, top_n: int) -> np.ndarray:
    """Indices of each row's ``top_n`` largest values among the ``candidates`` columns.

    Ties are broken by column order (stable sort), so the result is deterministic.

    Returns
    -------
    numpy.ndarray
        ``(K, top_n)`` column indices into ``topic_gene``, highest value first.
    """
    sub = topic_gene[:, candidates]
    order = np.argsort(-sub, axis=1, kind="stable")[:, :top_n]
    return candidates[order]


def ora(
    topic_gene: np.ndarray,
    genes: Sequence[str],
    library: LibraryLike,
    top_n: int = 10,
    min_size: int = 5,
    max_size: int = 500,
    with_genes: bool = True,
) -> pd.DataFrame:
    """Hypergeometric over-representation of each topic's top genes in each gene set.

    For topic ``k`` the ``top_n`` genes with the largest weight *among the dataset genes
    present in the library* are tested against every kept set. With background size
    ``M`` (dataset genes present in the library), set size ``n`` (its genes in the
    dataset) and overlap ``x``, ``p = P(X >= x)`` for ``X ~ Hypergeom(M, n, top_n)``.
    Overlaps of all (topic, set) pairs come from one sparse product; p-values are
    Benjamini-Hochberg adjusted over the sets of each topic.

    Parameters
    ----------
    topic_gene
        ``(K, V)`` topic-gene weights (beta); higher means more in the topic.
    genes
        The ``V`` gene names.
    library
        :class:`GeneSetLibrary`, :class:`MatchedLibrary`, bundled name or GMT path.
    top_n
        Number of top genes per topic.
    min_size, max_size
        Keep sets with this many genes in the dataset.
    with_genes
        Add a ``genes`` column listing the overlapping genes (topic rank order).

    Returns
    -------
    pandas.DataFrame
        One row per (topic, set): ``topic, set, description, method ("ora"),
        statistic (overlap), p, fdr, set_size, genes``, sorted by topic then p.
        ``df.attrs`` holds ``background`` (M), ``top_n`` and the match ``report``.
    """
    w, genes = check_topic_gene(topic_gene, genes)
    lib = match_library(library, genes, min_size, max_size)
    background = np.flatnonzero(lib.in_library)
    n_bg = background.size
    if not 1 <= top_n <= n_bg:
        raise InputError(f"top_n must be between 1 and {n_bg} (the genes present in the library)")
    n_topics = w.shape[0]
    top = top_genes(w, background, top_n)

    # Topic-by-gene 0/1 selection times set-by-gene incidence = overlap counts.
    sel = sp.csr_matrix(
        (np.ones(top.size, dtype=np.int32), top.ravel(), np.arange(0, top.size + 1, top_n)),
        shape=(n_topics, w.shape[1]),
    )
    inc = lib.incidence.astype(np.int32)
    overlap = np.asarray((sel @ inc.T).todense())
    sizes = lib.sizes
    p = np.ones(overlap.shape)
    nz = overlap > 0  # x = 0 gives p = 1 exactly; only score the rest
    size_mat = np.broadcast_to(sizes, overlap.shape)
    p[nz] = hypergeom.sf(overlap[nz] - 1, n_bg, size_mat[nz], top_n)
    p = np.clip(p, 0.0, 1.0)
    fdr = bh_fdr(p, axis=1)

    n_sets = len(lib.set_names)
    df = pd.DataFrame(
        {
            "topic": np.repeat(np.arange(n_topics), n_sets),
            "set": np.tile(np.asarray(lib.set_names, dtype=object), n_topics),
            "description": np.tile(np.asarray(lib.descriptions, dtype=object), n_topics),
            "method": "ora",
            "statistic": overlap.ravel().astype(np.float64),
            "p": p.ravel(),
            "fdr": fdr.ravel(),
            "set_size": np.tile(sizes, n_topics),
        }
    )
    if with_genes:
        df["genes"] = _overlap_genes(top, lib, nz).ravel()
    df = df.sort_values(["topic", "p"], kind="stable").reset_index(drop=True)
    df.attrs.update(background=int(n_bg), top_n=int(top_n), report=str(lib.report), library=lib.library)
    return df


def _overlap_genes(top: np.ndarray, lib, nz: np.ndarray) -> np.ndarray:
    """``(K, S)`` array of comma-joined overlapping genes ('' where none), in rank order."""
    out = np.full(nz.shape, "", dtype=object)
    inc_csc = lib.incidence.tocsc()
    names = lib.genes
    for k in range(top.shape[0]):
        if not nz[k].any():
            continue
        # Columns of this topic's top genes, in rank order; nonzero rows are the sets hit.
        rows, cols = inc_csc[:, top[k]].nonzero()
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        bounds = np.flatnonzero(np.diff(rows)) + 1
        hit_names = names[top[k][cols]]
        for r, chunk in zip(rows[np.r_[0, bounds]], np.split(hit_names, bounds)):
            out[k, r] = ",".join(chunk)
    return out
