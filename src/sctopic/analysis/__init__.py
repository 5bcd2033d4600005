"""Downstream biology on fitted topic models.

* :func:`differential_topics`: topics that differ between groups of cells (permutation or
  Mann-Whitney tests, effect sizes, BH/Bonferroni).
* :func:`perturb_topics`: shift topics in control cells, decode expression, compare with the
  real target cells against a random-topic null.
* :func:`score_bulk` and :func:`survival_association`: project topics onto bulk samples and
  test their association with survival (Cox models, Kaplan-Meier/log-rank).
* :func:`topic_specificity` and :func:`marker_topics`: which topics mark which cell types
  (mean use inside a label over mean use outside it).
* :func:`topic_stability`: choose K from the reproducibility of topics across seeds
  (Hungarian-matched cosine similarity) with TD, TC and ARI.

Nothing here imports torch at import time; decoding (perturbation) needs the model's torch
module.
"""
from sctopic.analysis.bulk import score_bulk
from sctopic.analysis.decode import decode_expression
from sctopic.analysis.differential import differential_activity, differential_topics
from sctopic.analysis.perturb import PerturbationResult, perturb_topics
from sctopic.analysis.specificity import marker_topics, topic_specificity
from sctopic.analysis.stability import (
    StabilityResult,
    cosine_similarity_matrix,
    match_topics,
    stability_from_fits,
    suggest_k,
    topic_stability,
)
from sctopic.analysis.survival import logrank_split, survival_association

__all__ = [
    "PerturbationResult", "decode_expression", "differential_activity", "differential_topics",
    "logrank_split", "marker_topics", "perturb_topics", "score_bulk", "survival_association",
    "StabilityResult", "cosine_similarity_matrix", "match_topics", "stability_from_fits", "suggest_k",
    "topic_specificity", "topic_stability",
]
