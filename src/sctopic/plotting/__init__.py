"""Figures (matplotlib, Agg canvas, no pyplot state).

Every function has two forms: arrays or result tables (``volcano(table, path=...)``), and, as
``scanpy.pl``, an AnnData with keys (``volcano(adata, key="differential_topics", show=False,
save="v.png")``; tables made by :mod:`sctopic.tl` live in ``adata.uns``). Each returns the Figure
(None with ``show=True``) and saves it when given ``save`` (or ``path``). Figures stay readable
from K=10 to K=200 topics: heatmaps show the topics that matter and say how many are hidden,
legends fold small categories into "other", and point labels never overlap (see
:mod:`sctopic.plotting.labels`).
"""
from sctopic.plotting.differential import topic_heatmap, volcano
from sctopic.plotting.embedding import (
    cell_umap,
    dominant_topic,
    gene_topic_map,
    topic_label_heatmap,
    umap_coords,
)
from sctopic.plotting.enrichment import enrichment_manhattan, gsea_running_sum, running_sum
from sctopic.plotting.perturb import lfc_scatter, perturbation_summary, perturbation_umap
from sctopic.plotting.stability import stability_curves
from sctopic.plotting.survival import kaplan_meier

__all__ = ["kaplan_meier", "lfc_scatter", "perturbation_summary", "perturbation_umap", "topic_heatmap", "volcano",
    "cell_umap", "dominant_topic", "enrichment_manhattan", "gene_topic_map", "gsea_running_sum", "running_sum",
    "stability_curves", "topic_label_heatmap", "umap_coords",
]
