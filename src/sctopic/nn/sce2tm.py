"""The scE2TM torch module: encoder, embedded-topic decoder, ECR and the Cross-view Encoder.

Pure torch: no AnnData, no training loop. :class:`sctopic.SCE2TM` wraps it for users.
"""
from __future__ import annotations

import torch

from sctopic.nn.base import TopicModule
from sctopic.nn.crossview import (
    cluster_contrastive_loss,
    consistency_loss,
    info_nce,
    mean_entropy,
    relational_distillation,
)
from sctopic.nn.decoder import EmbeddedTopicDecoder
from sctopic.nn.encoder import ClusterHead, TopicEncoder, reparameterize
from sctopic.nn.prior import kl_diag_gaussian, laplace_dirichlet_prior
from sctopic.nn.sinkhorn import ECR
from sctopic.utils.sparse import csr_head, csr_row_ids, csr_tensor, row_sums

ENCODER_INPUTS = ("counts", "log1p")
RECON_WEIGHTINGS = ("count", "cell")
CVE_LOSSES = ("cluster", "neighbour", "relational")


def transform_input(x: torch.Tensor, how: str) -> torch.Tensor:
    """Encoder input from counts: raw (``"counts"``, the reference) or ``"log1p"`` of
    counts scaled to 10^4 per cell. Sparse CSR input stays sparse (log1p(0) = 0)."""
    if how == "counts":
        return x
    lib = row_sums(x).clamp_min(1.0)
    if x.layout == torch.sparse_csr:
        vals = torch.log1p(x.values() * (1e4 / lib).index_select(0, csr_row_ids(x)))
        return csr_tensor(x.crow_indices(), x.col_indices(), vals, x.shape)
    return torch.log1p(x * (1e4 / lib)[:, None])


def thin_counts(x: torch.Tensor, low: float) -> torch.Tensor:
    """Binomially thin each cell's counts to a random fraction ``U(low, 1)`` of its depth.

    A cell sequenced at a fraction p of its depth has counts ~ Binomial(x, p) (each molecule
    kept independently), so the thinned copy is what the same cell would look like shallower.
    Sparse CSR input stays sparse (thinned values may be explicit zeros)."""
    p = torch.empty(x.shape[0], dtype=torch.float32, device=x.device).uniform_(low, 1.0)
    if x.layout == torch.sparse_csr:
        vals = x.values()
        keep = torch.binomial(vals.float(), p.index_select(0, csr_row_ids(x))).to(vals.dtype)
        return csr_tensor(x.crow_indices(), x.col_indices(), keep, x.shape)
    return torch.binomial(x.float(), p[:, None].expand_as(x).contiguous()).to(x.dtype)


class SCE2TMModule(TopicModule):
    """scE2TM network and losses (the module API of :mod:`sctopic.nn.base`).

    Parameters
    ----------
    n_genes, n_topics
        V and K.
    n_external
        Width of the external view (0 when there is none).
    n_hidden
        Encoder hidden width (200).
    emb_dim
        Gene/topic embedding width L (200).
    tau
        Temperature of beta (0.2).
    dropout
        Encoder dropout (0).
    encoder_input
        ``"counts"`` or ``"log1p"`` (see :func:`transform_input`).
    cross_view
        Use the Cross-view Encoder (needs an external view).
    external_concat
        Concatenate the external view to the encoder input instead (the "w/ EC" ablation).
    ecr_eps, ecr_grad
        Sinkhorn regularisation and gradient mode (see :class:`sctopic.nn.sinkhorn.ECR`).
    entropy_weight
        alpha of the entropy regulariser (5).
    temperature
        Temperature of the contrastive losses (0.5).
    cve_loss
        ``"cluster"`` (the paper: cluster-level contrast of the softmax heads, consistency and
        entropy terms) or ``"neighbour"`` (instance-level InfoNCE of the topic logits ``mu``
        against the cluster head's logits: an anchor against its external-view neighbour, its
        expression neighbour against the anchor, and a cell against itself across views) or
        ``"relational"`` (the cells' similarities in the external view distilled into those of
        their topic logits; no cluster head).
    n_batches
        Per-batch gene intercepts in the decoder (0: none).
    depth_augment
        Binomial thinning of the encoder's input while training (see :func:`thin_counts`).
    recon_weighting
        ``"count"``: the multinomial NLL summed over counts (the reference; deep cells weigh
        more) or ``"cell"``: each cell's NLL divided by its depth and multiplied by
        ``mean_library`` (every cell weighs the same, as scETM's normed loss).
    mean_library
        Mean counts per cell of the training data (the scale of ``"cell"``).
    """

    def __init__(
        self,
        n_genes: int,
        n_topics: int,
        n_external: int = 0,
        n_hidden: int = 200,
        emb_dim: int = 200,
        tau: float = 0.2,
        dropout: float = 0.0,
        encoder_input: str = "counts",
        cross_view: bool = True,
        external_concat: bool = False,
        ecr_eps: float = 0.05,
        ecr_grad: str = "implicit",
        entropy_weight: float = 5.0,
        temperature: float = 0.5,
        n_batches: int = 0,
        cve_loss: str = "cluster",
        depth_augment: float = 0.0,
        recon_weighting: str = "count",
        mean_library: float = 1.0,
    ):
        super().__init__()
        if recon_weighting not in RECON_WEIGHTINGS:
            raise ValueError(f"recon_weighting must be one of {RECON_WEIGHTINGS}, got {recon_weighting!r}")
        if not mean_library > 0:
            raise ValueError(f"mean_library must be > 0, got {mean_library!r}")
        self.recon_weighting, self.mean_library = recon_weighting, float(mean_library)
        if not 0.0 <= depth_augment < 1.0:
            raise ValueError(f"depth_augment must be in [0, 1), got {depth_augment!r}")
        self.depth_augment = float(depth_augment)
        if encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {encoder_input!r}")
        if cve_loss not in CVE_LOSSES:
            raise ValueError(f"cve_loss must be one of {CVE_LOSSES}, got {cve_loss!r}")
        if (cross_view or external_concat) and n_external <= 0:
            raise ValueError("cross_view / external_concat need an external view (n_external > 0)")
        if cross_view and external_concat:
            raise ValueError("cross_view and external_concat are alternatives; choose one")
        self.n_topics, self.encoder_input, self.cve_loss = n_topics, encoder_input, cve_loss
        self.cross_view, self.external_concat = cross_view, external_concat
        self.entropy_weight, self.temperature = float(entropy_weight), float(temperature)
        n_in = n_genes + (n_external if external_concat else 0)
        self.encoder = TopicEncoder(n_in, n_topics, n_hidden=n_hidden, dropout=dropout)
        self.decoder = EmbeddedTopicDecoder(n_genes, n_topics, emb_dim=emb_dim, tau=tau, n_batches=n_batches)
        self.cluster_head = ClusterHead(n_external, n_topics) if cross_view and cve_loss != "relational" else None
        self.ecr = ECR(n_topics, n_genes, eps=ecr_eps, grad=ecr_grad)
        self.prior_mu, self.prior_var = laplace_dirichlet_prior(n_topics)

    def encoder_in(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.depth_augment > 0:
            # the encoder sees a shallower copy of each cell (the reconstruction target stays
            # the full counts), so its posterior cannot lean on sequencing depth (issue 17)
            x = thin_counts(x, self.depth_augment)
        h = transform_input(x, self.encoder_input)
        if self.external_concat:
            if h.layout == torch.sparse_csr:
                h = h.to_dense()
            h = torch.cat([h, v], dim=1)
        return h

    def weigh_cells(self, nll: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-cell NLLs ``(B,)`` of counts ``x`` as the reconstruction term counts them: as they
        are (``"count"``) or divided by each cell's depth times the training data's mean depth
        (``"cell"``: every cell weighs the same, as scETM's normed loss, and the loss keeps its
        scale against the KL and the CVE)."""
        if self.recon_weighting == "cell":
            return nll * (self.mean_library / row_sums(x).clamp_min(1.0))
        return nll

    def reconstruction_nll(self, x: torch.Tensor, batch: torch.Tensor | None = None,
                           v: torch.Tensor | None = None) -> torch.Tensor:
        """Each cell's reconstruction term, weighted as in :meth:`loss` (see
        :meth:`weigh_cells` and :meth:`sctopic.nn.base.TopicModule.reconstruction_nll`)."""
        return self.weigh_cells(super().reconstruction_nll(x, batch, v), x)

    def inference(self, x: torch.Tensor, v: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Posterior of cells ``x`` (dense or sparse CSR counts; ``v``: the external view, used
        only with ``external_concat``): ``mu``, ``logvar`` (both batch-normalised), ``z`` (a
        sample in training mode, else ``mu``) and ``theta = softmax(z)``."""
        mu, logvar = self.encoder(self.encoder_in(x, v))
        z = reparameterize(mu, logvar, self.training)
        return {"mu": mu, "logvar": logvar, "z": z, "theta": torch.softmax(z, dim=1)}

    def forward(
        self,
        x: torch.Tensor,
        x_nb: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        v_nb: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        ecr_weight: float | torch.Tensor = 0.0,
        cve_weight: float | torch.Tensor = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Losses for a minibatch: :meth:`inference` then :meth:`loss`.

        Parameters
        ----------
        x
            ``(B, V)`` counts of the anchor cells (dense or sparse CSR). With ``cross_view`` and
            no ``x_nb``, ``x`` holds ``2B`` rows: the anchors, then their neighbours.
        x_nb
            ``(B, V)`` dense counts of one sampled neighbour of each anchor in the expression
            graph; its topic head is distilled against the anchor's cluster head.
        v, v_nb
            External view of the anchors, and of one sampled neighbour of each anchor in the
            external view's graph (distilled against the anchor's topic head).
        batch
            ``(B,)`` batch index per cell when the decoder has intercepts.
        ecr_weight
            Weight lambda of the ECR term (0 disables the Sinkhorn solve). A 0-d tensor
            (the graph-safe training step's weights) always runs it.
        cve_weight
            Weight of the Cross-view Encoder's terms (1 in the paper).
        """
        if self.cross_view and x_nb is not None:
            x = torch.cat([x, x_nb], 0)
        # With the CVE, one encoder pass for anchors and neighbours together (batch norm sees both).
        posterior = self.inference(x, None if self.cross_view else v)
        return self.loss(x, posterior, v=v, v_nb=v_nb, batch=batch, ecr_weight=ecr_weight,
                         cve_weight=cve_weight)

    def loss(
        self,
        x: torch.Tensor,
        posterior: dict[str, torch.Tensor],
        v: torch.Tensor | None = None,
        v_nb: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        ecr_weight: float | torch.Tensor = 0.0,
        cve_weight: float | torch.Tensor = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms of a minibatch and ``"loss"``, their weighted sum.

        ``x`` and ``posterior`` cover the anchors and, with the CVE, their expression
        neighbours after them (``v`` has one row per anchor); see :meth:`forward`.
        """
        mu_all, logvar_all, theta_all = posterior["mu"], posterior["logvar"], posterior["theta"]
        B = v.shape[0] if self.cross_view else x.shape[0]
        x_anchor = x if x.shape[0] == B else (csr_head(x, B) if x.layout == torch.sparse_csr else x[:B])
        theta = theta_all[:B]
        kl = kl_diag_gaussian(mu_all[:B], logvar_all[:B], self.prior_mu, self.prior_var).mean()

        cost = self.decoder.cost()
        beta = self.decoder.beta(cost)
        recon = self.weigh_cells(self.decoder.nll(x_anchor, theta, beta, batch), x_anchor).mean()
        out = {"reconstruction": recon, "kl": kl}
        loss = recon + kl
        # a tensor weight is never compared on the host (that would be a device sync)
        if isinstance(ecr_weight, torch.Tensor) or ecr_weight > 0:
            ecr = self.ecr(cost)
            out["ecr"] = ecr
            loss = loss + ecr_weight * ecr
        if self.cross_view:
            terms = self._cross_view_terms(posterior, theta, B, v, v_nb)
            out.update(terms)
            # Term by term, in this order: at weight 1 the sum is bit-identical to the paper's.
            loss = loss + cve_weight * terms["distill"]
            if "consistency" in terms:
                loss = loss + cve_weight * terms["consistency"]
            if "entropy" in terms:
                loss = loss - (cve_weight * self.entropy_weight) * terms["entropy"]
        out["loss"] = loss
        return out

    def _cross_view_terms(self, posterior: dict[str, torch.Tensor], theta: torch.Tensor, B: int,
                          v: torch.Tensor, v_nb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CVE's terms: anchors are rows ``:B`` of the posterior, their expression neighbours
        rows ``B:``; ``v``/``v_nb``: the anchors' external view and that of their external-view
        neighbours."""
        T = self.temperature
        if self.cve_loss == "relational":
            return {"distill": relational_distillation(posterior["mu"][:B], v, T)}
        psi_all = self.cluster_head(torch.cat([v, v_nb], 0))
        psi, psi_nb = psi_all[:B], psi_all[B:]
        if self.cve_loss == "neighbour":
            mu, mu_nb = posterior["mu"][:B], posterior["mu"][B:]
            return {"distill": info_nce(mu, psi_nb, T) + info_nce(psi, mu_nb, T),
                    "consistency": info_nce(mu, psi, T)}
        phi_all = torch.softmax(psi_all, dim=1)
        phi, phi_nb = phi_all[:B], phi_all[B:]
        theta_nb = posterior["theta"][B:]
        return {"distill": cluster_contrastive_loss(phi, theta_nb, T) + cluster_contrastive_loss(theta, phi_nb, T),
                "consistency": consistency_loss(theta, phi),
                "entropy": mean_entropy(theta) + mean_entropy(phi)}

    def gene_embedding(self) -> torch.Tensor:
        """``(V, L)`` gene embeddings."""
        return self.decoder.gene_embedding

    def topic_embedding(self) -> torch.Tensor:
        """``(K, L)`` topic embeddings."""
        return self.decoder.topic_embedding
