"""Validation of the arguments shared by :func:`ora` and :func:`gsea`."""
from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np

from sctopic.errors import InputError
from sctopic.genesets.library import GeneSetLibrary, MatchedLibrary

LibraryLike = Union[GeneSetLibrary, MatchedLibrary, str, os.PathLike]


def check_topic_gene(topic_gene, genes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Return ``topic_gene`` as a finite float64 ``(K, V)`` array and ``genes`` as a list."""
    w = np.asarray(topic_gene, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    genes = [str(g) for g in genes]
    if w.ndim != 2:
        raise InputError(f"topic_gene must be a (topics x genes) matrix, got shape {w.shape}")
    if w.shape[1] != len(genes):
        raise InputError(
            f"topic_gene has {w.shape[1]} columns but {len(genes)} gene names were given; "
            "rows must be topics and columns genes"
        )
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise InputError("topic_gene is empty")
    if not np.all(np.isfinite(w)):
        raise InputError("topic_gene contains NaN or infinite values")
    return w, genes


def match_library(
    library: LibraryLike, genes: Sequence[str], min_size: int, max_size: int
) -> MatchedLibrary:
    """Resolve a library argument (object, bundled name or GMT path) and match it to ``genes``."""
    if isinstance(library, MatchedLibrary):
        if list(library.genes) != list(genes):
            raise InputError("the MatchedLibrary was matched to a different gene list")
        rep = library.report
        if (rep.min_size, rep.max_size) != (min_size, max_size):
            raise InputError(
                f"the MatchedLibrary was matched with min_size={rep.min_size}, "
                f"max_size={rep.max_size}; match again or pass the same sizes"
            )
        return library
    if not isinstance(library, GeneSetLibrary):
        from sctopic.genesets.bundled import load

        library = load(library)
    return library.match(genes, min_size=min_size, max_size=max_size)
