"""Figures (matplotlib, Agg canvas, no pyplot state): each function returns the Figure and
saves it when given ``path``.
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
