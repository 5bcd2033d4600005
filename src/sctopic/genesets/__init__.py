"""Gene-set libraries and enrichment of topics (numpy/scipy/pandas only, no torch).

* :func:`load`, :func:`read_gmt`, :func:`write_gmt`, :class:`GeneSetLibrary`: gene-set IO;
  bundled libraries ``go_bp_human``, ``go_bp_mouse``, ``hallmark``.
* :meth:`GeneSetLibrary.match`: project a library onto a dataset's genes (coverage report);
  :func:`gene_id_kind`: whether a gene list holds symbols, Ensembl or Entrez IDs.
* :func:`ora`: hypergeometric over-representation of each topic's top genes.
* :func:`gsea`: preranked GSEA of each topic's gene ranking, with a permutation null.
* :func:`bh_fdr`: Benjamini-Hochberg adjustment.
* :func:`read_topic_gene`: the topic-gene matrix of a fitted model's ``result.h5ad``.
"""
from __future__ import annotations

from sctopic.genesets.bundled import BUNDLED, available, load
from sctopic.genesets.escore import enrichment_scores
from sctopic.genesets.gmt import iter_gmt, write_gmt
from sctopic.genesets.io import read_topic_gene
from sctopic.genesets.library import GeneSetLibrary, MatchedLibrary, MatchReport, gene_id_kind, read_gmt
from sctopic.genesets.overrepresentation import ora
from sctopic.genesets.prerank import gsea
from sctopic.genesets.stats import bh_fdr

__all__ = [
    "BUNDLED",
    "GeneSetLibrary",
    "MatchReport",
    "MatchedLibrary",
    "available",
    "bh_fdr",
    "enrichment_scores",
    "gene_id_kind",
    "gsea",
    "iter_gmt",
    "load",
    "ora",
    "read_gmt",
    "read_topic_gene",
    "write_gmt",
]
