"""Clustering and interpretability metrics for topic models (numpy/scipy; never torch).

Clustering: :func:`cluster_sweep` (kNN graph + Leiden/Louvain over resolutions, oracle and
label-free readings), :func:`ari`, :func:`nmi`, :func:`celltype_accuracy`.
Mixing: :func:`silhouette`, :func:`batch_asw`, :func:`kbet`.
Topics: :func:`top_gene_indices`, :func:`topic_diversity`,
:func:`topic_diversity_exclusive`, :func:`topic_coherence`, :func:`topic_quality`,
:func:`interpretability_purity`, :func:`enrichment_summary`.
All together: :func:`evaluate`.
"""
from sctopic.metrics.clustering import (
    DEFAULT_RESOLUTIONS,
    ari,
    celltype_accuracy,
    cluster_sweep,
    nmi,
)
from sctopic.metrics.community import cluster_graph
from sctopic.metrics.enrichment import enrichment_summary
from sctopic.metrics.evaluate import FLAT_KEYS, evaluate
from sctopic.metrics.integration import batch_asw, kbet, silhouette
from sctopic.metrics.interpretability import (
    interpretability_purity,
    npmi_per_topic,
    top_gene_indices,
    top_genes,
    topic_coherence,
    topic_diversity,
    topic_diversity_exclusive,
    topic_quality,
)
from sctopic.metrics.neighbors import knn, neighbor_graph

__all__ = [
    "DEFAULT_RESOLUTIONS", "FLAT_KEYS", "ari", "batch_asw", "celltype_accuracy",
    "cluster_graph", "cluster_sweep", "enrichment_summary", "evaluate",
    "interpretability_purity", "kbet", "knn", "neighbor_graph", "nmi", "npmi_per_topic",
    "silhouette", "top_gene_indices", "top_genes", "topic_coherence", "topic_diversity",
    "topic_diversity_exclusive", "topic_quality",
]
