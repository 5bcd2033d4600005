"""Interpretability of topics: diversity, coherence, quality and purity.

``topic_gene`` is the K x V topic-gene matrix (rows topics, e.g. beta); the top ``h``
genes of a topic are its ``h`` largest entries (default h = 10, the paper's setting).
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import scipy.sparse as sp

from sctopic.metrics._labels import encode
from sctopic.errors import InputError


def _topic_gene(topic_gene) -> np.ndarray:
    tg = np.asarray(topic_gene.toarray() if sp.issparse(topic_gene) else topic_gene, dtype=np.float64)
    if tg.ndim != 2:
        raise ValueError(f"topic_gene must be 2-D (topics x genes), got shape {tg.shape}")
    if not np.isfinite(tg).all():
        raise ValueError("topic_gene contains NaN or infinite values")
    return tg


def top_gene_indices(topic_gene, top_n: int = 10) -> np.ndarray:
    """Column indices of each topic's ``top_n`` largest entries, largest first.

    Returns
    -------
    numpy.ndarray
        ``K x top_n`` int64.  Ties are broken by gene index (stable), so the result is
        deterministic.
    """
    tg = _topic_gene(topic_gene)
    h = int(top_n)
    k, v = tg.shape
    if not 1 <= h <= v:
        raise InputError(f"top_n (--top-n) is {h}, but there are {v} genes; pass a top_n between 1 and {v}.")
    if h == v:
        return np.argsort(-tg, axis=1, kind="stable")
    part = np.argpartition(-tg, h - 1, axis=1)[:, :h]  # the h largest, in no order
    vals = np.take_along_axis(tg, part, axis=1)
    # order each block by value (descending), then gene index
    out = np.take_along_axis(part, np.lexsort((part, -vals), axis=-1), axis=1)
    # a tie across the cut-off lets argpartition pick any of the tied genes: redo those
    # rows with a full stable sort so the lowest gene indices win
    ties = (tg >= vals.min(axis=1)[:, None]).sum(axis=1) > h
    if ties.any():
        out[ties] = np.argsort(-tg[ties], axis=1, kind="stable")[:, :h]
    return out.astype(np.int64)


def top_genes(topic_gene, genes: Sequence[str], top_n: int = 10) -> list[list[str]]:
    """Names of each topic's top genes, largest first."""
    g = np.asarray(genes, dtype=object)
    tg = _topic_gene(topic_gene)
    if len(g) != tg.shape[1]:
        raise ValueError(f"{len(g)} gene names for a topic-gene matrix with {tg.shape[1]} genes")
    return [list(map(str, g[row])) for row in top_gene_indices(tg, top_n)]


def topic_diversity(topic_gene, top_n: int = 10) -> float:
    """Topic diversity TD = |unique genes in all top lists| / (K * top_n) (the paper's TD).

    1 = no gene is shared between topics' top lists; 1/K = all topics have the same list.
    """
    top = top_gene_indices(topic_gene, top_n)
    return float(np.unique(top).size / top.size)


def topic_diversity_exclusive(topic_gene, top_n: int = 10) -> float:
    """Genes occurring in exactly one topic's top list, divided by K * top_n.

    The stricter definition used by the reference notebook's ``TD_eva``: a gene shared by
    two topics counts for neither.
    """
    top = top_gene_indices(topic_gene, top_n)
    _, counts = np.unique(top, return_counts=True)
    return float((counts == 1).sum() / top.size)


def _library_incidence(
    library, genes: Sequence[str], documents: Literal["matched", "all"] = "matched"
) -> tuple[sp.csr_matrix, int]:
    """Sets x dataset-genes 0/1 incidence of a library, and the number of documents.

    ``library`` may be a library name or GMT path (:func:`sctopic.genesets.load`), a
    :class:`~sctopic.genesets.GeneSetLibrary`, a :class:`~sctopic.genesets.MatchedLibrary`
    already matched to ``genes``, or a sets x genes matrix (every row a document).
    ``documents="matched"`` keeps the sets with 5..500 dataset genes (the library's default
    matching); ``"all"`` counts every set of the library, as the reference code did.
    """
    if documents not in ("matched", "all"):
        raise ValueError(f"documents must be 'matched' or 'all', got {documents!r}")
    if isinstance(library, (str, bytes)) or hasattr(library, "__fspath__"):
        from sctopic.genesets import load

        library = load(library)
    n_docs = None
    if hasattr(library, "match"):  # a GeneSetLibrary
        if documents == "all":
            n_docs = len(library)
            library = library.match(list(genes), min_size=1, max_size=np.iinfo(np.int32).max)
        else:
            library = library.match(list(genes))
    if hasattr(library, "set_names") and hasattr(library, "incidence"):  # a MatchedLibrary
        if [str(g) for g in library.genes] != [str(g) for g in genes]:
            raise ValueError("the matched gene-set library was matched to a different gene list")
        if documents == "all" and n_docs is None:
            raise ValueError("documents='all' needs the whole library, not a MatchedLibrary")
        inc = library.incidence
    else:
        inc = library
    inc = sp.csr_matrix(inc, dtype=np.float64)
    if inc.shape[1] != len(genes):
        raise ValueError(
            f"gene-set incidence has {inc.shape[1]} gene columns but there are {len(genes)} genes"
        )
    inc.data[:] = 1.0
    return inc, (inc.shape[0] if n_docs is None else n_docs)


def npmi_per_topic(topic_gene, genes: Sequence[str], library, top_n: int = 10, *,
                   zero_convention: float = 0.0, absent: Literal["zero", "skip"] = "zero",
                   documents: Literal["matched", "all"] = "matched") -> np.ndarray:
    """Mean NPMI of each topic's top-gene pairs, gene sets as documents.

    See :func:`topic_coherence` for the definition and conventions.

    Returns
    -------
    numpy.ndarray
        One value per topic; NaN for a topic with no scored pair (only with ``absent="skip"``).
    """
    tg = _topic_gene(topic_gene)
    if len(genes) != tg.shape[1]:
        raise ValueError(f"{len(genes)} gene names for a topic-gene matrix with {tg.shape[1]} genes")
    if absent not in ("zero", "skip"):
        raise ValueError(f"absent must be 'zero' or 'skip', got {absent!r}")
    inc, n_docs = _library_incidence(library, genes, documents)
    top = top_gene_indices(tg, top_n)
    if n_docs == 0:
        raise ValueError("the gene-set library has no sets")
    # restrict to the genes that appear in some top list: a dense |U| x |U| co-occurrence
    uniq, local = np.unique(top, return_inverse=True)
    local = local.reshape(top.shape)
    m = inc[:, uniq]
    co = np.asarray((m.T @ m).todense(), dtype=np.float64)  # docs containing both genes
    df = np.diag(co).copy()  # docs containing each gene
    p_ij = co / n_docs
    p_i = df / n_docs
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(p_ij / np.outer(p_i, p_i))
        npmi = pmi / -np.log(p_ij)
    npmi[p_ij >= 1.0] = 1.0  # pair in every document: perfect association (limit value)
    npmi[p_ij == 0] = zero_convention  # never together (the reference scores these 0)
    present = df > 0
    a, b = np.triu_indices(top.shape[1], k=1)
    ia, ib = local[:, a], local[:, b]  # K x n_pairs
    vals = npmi[ia, ib]
    scored = present[ia] & present[ib]
    if absent == "zero":
        vals = np.where(scored, vals, 0.0)
        return vals.mean(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(scored, vals, 0.0).sum(axis=1) / scored.sum(axis=1)


def topic_coherence(
    topic_gene,
    genes: Sequence[str],
    library,
    top_n: int = 10,
    *,
    zero_convention: float = 0.0,
    absent: Literal["zero", "skip"] = "zero",
    documents: Literal["matched", "all"] = "matched",
) -> float:
    """Topic coherence TC: NPMI of top-gene pairs with gene sets as documents.

    By default every set of the library matched to the dataset (``library.match(genes)``:
    the sets with 5..500 dataset genes, the same sets ORA and GSEA test) is one document;
    ``documents="all"`` counts every set of the GMT file instead, as the reference code
    did (only the document count D differs; a larger D raises TC).
    With D documents, p(w) = (sets containing w) / D and p(w_i, w_j) = (sets containing
    both) / D, NPMI = log(p(i,j) / (p(i) p(j))) / -log p(i,j), in [-1, 1].  TC is the mean
    over the top_n*(top_n-1)/2 pairs of each topic, then over topics.

    Parameters
    ----------
    topic_gene
        K x V topic-gene matrix over ``genes``.
    genes
        The V gene names (dataset genes, e.g. ``adata.var_names``).
    library
        A :class:`sctopic.genesets.GeneSetLibrary`, a
        :class:`~sctopic.genesets.MatchedLibrary` matched to ``genes``, a library name or GMT
        path for :func:`sctopic.genesets.load`, or a sets x V 0/1 matrix.
    top_n
        Top genes per topic (h).
    zero_convention
        Score of a pair that never occurs in the same set (NPMI is -1 in the limit).  The
        reference code scores these 0 (default); use -1 for the limit value.
    absent
        Pairs with a gene that occurs in no set: ``"zero"`` (default, as the reference code)
        counts them as 0 in the average; ``"skip"`` leaves them out (topics with no scored
        pair are then left out of the mean over topics).
    documents
        ``"matched"`` (default) or ``"all"``, see above.  A MatchedLibrary or a matrix is
        used as given (its rows are the documents).

    Returns
    -------
    float
    """
    per_topic = npmi_per_topic(
        topic_gene, genes, library, top_n, zero_convention=zero_convention, absent=absent,
        documents=documents,
    )
    if np.all(np.isnan(per_topic)):
        return float("nan")
    return float(np.nanmean(per_topic))


def topic_quality(tc: float, td: float) -> float:
    """TQ = TC * TD."""
    return float(tc) * float(td)


def interpretability_purity(theta, labels) -> float:
    """Interpretability purity IP of the argmax-topic assignment against cell types.

    Each cell is assigned its most active topic; for each topic the count of its most common
    cell type is summed, and the sum is divided by the number of cells.  1 = every topic's
    cells are of a single type.  (It does not penalise splitting a type over many topics.)
    """
    if sp.issparse(theta):
        theta = theta.toarray()
    th = np.asarray(theta)
    if th.ndim != 2:
        raise ValueError(f"theta must be 2-D (cells x topics), got shape {th.shape}")
    if len(labels) != th.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries but theta has {th.shape[0]} cells")
    y, types = encode(labels)
    t = th.argmax(axis=1)
    k = th.shape[1]
    table = np.bincount(t * len(types) + y, minlength=k * len(types)).reshape(k, len(types))
    return float(table.max(axis=1).sum() / max(len(y), 1))
