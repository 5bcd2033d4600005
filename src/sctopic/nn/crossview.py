"""Losses of scE2TM's Cross-view Encoder (CVE).

The topic head ``theta`` (B x K, from expression) and the cluster head ``phi`` (B x K, from the
external view) are aligned by

* :func:`consistency_loss` (L_CON): a cell agrees with itself across views,
  ``-mean_i log(theta_i . phi_i)``;
* :func:`cluster_contrastive_loss` (L_NEI, applied between a cell in one view and a sampled
  mutual neighbour in the other view, both directions): cluster-level contrastive loss of
  Li et al. (2021) with temperature 0.5, where column k of one head and column k of the other
  are positives and all other columns negatives;
* :func:`mean_entropy` (L_REG): entropy of the batch-mean assignment, subtracted with weight
  alpha to prevent collapse onto few topics/clusters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_TINY = 1e-9


def consistency_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``-mean_i log(sum_k p_ik q_ik)``: binary cross-entropy of the agreement with target 1."""
    sim = (p * q).sum(dim=1)
    # BCE with target 1 is -log(sim); torch clamps the log at -100, as we do.
    return -torch.clamp(torch.log(sim), min=-100.0).mean()


def cluster_contrastive_loss(p: torch.Tensor, q: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Cluster-level contrastive loss between assignments ``p`` and ``q`` (each ``(B, K)``).

    The 2K cluster vectors (columns of ``p`` and ``q``) are L2-normalised; for each of them
    the positive is the same cluster in the other head, the negatives the 2K - 2 others.
    Returns the mean cross-entropy over the 2K anchors.
    """
    K = p.shape[1]
    c = F.normalize(torch.cat([p.T, q.T], dim=0), dim=1)  # (2K, B)
    sim = c @ c.T / temperature
    # Exclude self-similarity from the softmax denominator.
    sim = sim.masked_fill(torch.eye(2 * K, dtype=torch.bool, device=sim.device), float("-inf"))
    target = torch.cat([torch.arange(K, 2 * K), torch.arange(0, K)]).to(sim.device)
    return F.cross_entropy(sim, target)


def mean_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch-mean assignment ``mean_i p_i`` (high when clusters are all used)."""
    m = p.mean(dim=0).clamp_min(_TINY)
    return -(m * torch.log(m)).sum()


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Instance-level contrastive loss (InfoNCE): row ``i`` of ``query`` should be closer (cosine)
    to row ``i`` of ``key`` than to any other row of ``key``; mean cross-entropy over rows.

    Unlike :func:`cluster_contrastive_loss` it does not ask for balanced clusters, so a cell
    type holding 40% of the cells is not cut into pieces of equal size.
    """
    sim = F.normalize(query, dim=1) @ F.normalize(key, dim=1).T / temperature
    return F.cross_entropy(sim, torch.arange(query.shape[0], device=sim.device))


def relational_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Distil the teacher's similarity structure into the student: mean over cells ``i`` of
    ``KL(P_i || Q_i)``, where ``P_i`` and ``Q_i`` are softmaxes over the other cells ``j`` of the
    cosine similarities ``cos(teacher_i, teacher_j) / T`` and ``cos(student_i, student_j) / T``.

    Cells the teacher sees as alike are pulled together without pushing apart those it also
    sees as alike, so a large cell type is not split (unlike :func:`info_nce`, whose negatives
    include the anchor's own type).
    """
    eye = torch.eye(student.shape[0], dtype=torch.bool, device=student.device)

    def log_probs(z: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z, dim=1)
        return F.log_softmax((z @ z.T / temperature).masked_fill(eye, float("-inf")), dim=1)

    log_p = log_probs(teacher.detach()).masked_fill(eye, 0.0)
    log_q = log_probs(student).masked_fill(eye, 0.0)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()
