"""Figures (matplotlib, Agg canvas, no pyplot state): each function returns the Figure and
saves it when given ``path``.
"""
from sctopic.plotting.differential import topic_heatmap, volcano
from sctopic.plotting.perturb import lfc_scatter, perturbation_summary, perturbation_umap
from sctopic.plotting.survival import kaplan_meier

__all__ = ["kaplan_meier", "lfc_scatter", "perturbation_summary", "perturbation_umap", "topic_heatmap", "volcano"]
