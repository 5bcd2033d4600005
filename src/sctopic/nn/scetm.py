"""The scETM torch module: Gaussian encoder, tri-factorised linear decoder, optional adversary.

Pure torch: no AnnData, no training loop. :class:`sctopic.SCETM` wraps it for users.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from sctopic.nn.base import TopicModule
from sctopic.nn.decoder import LinearTopicDecoder
from sctopic.nn.encoder import BatchDiscriminator, NormalEncoder
from sctopic.utils.sparse import csr_row_ids, csr_tensor, row_sums


def library_normalize(x: torch.Tensor) -> torch.Tensor:
    """Counts divided by each cell's total (rows sum to 1); sparse CSR input stays sparse."""
    lib = row_sums(x).clamp_min(1.0)
    if x.layout == torch.sparse_csr:
        vals = x.values() / lib.index_select(0, csr_row_ids(x))
        return csr_tensor(x.crow_indices(), x.col_indices(), vals, x.shape)
    return x / lib[:, None]


def kl_standard_normal(mu: torch.Tensor, logsigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` per row, summed over dimensions."""
    return 0.5 * (mu.pow(2) + torch.exp(2.0 * logsigma) - 1.0 - 2.0 * logsigma).sum(1)


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the discriminator's prediction against the uniform distribution
    (scETM's ``"confuse"`` adversarial loss): minimal when the batch cannot be told."""
    return -torch.log_softmax(logits, dim=1).mean(1).mean()


class SCETMModule(TopicModule):
    """scETM network and losses (the module API of :mod:`sctopic.nn.base`).

    Parameters
    ----------
    n_genes, n_topics
        V and K.
    n_hidden
        Encoder hidden width (128).
    emb_dim
        Trainable gene-embedding width L (400; 0 for a pure p-scETM).
    dropout
        Encoder dropout (0.1).
    fixed_rho
        ``(P, V)`` fixed pathway-by-gene rows of rho (p-scETM), or ``None``.
    n_batches
        Number of batches: per-batch gene intercepts when > 0.
    adversarial
        Add a batch discriminator on ``delta`` (scETM+adv); needs ``n_batches >= 2``.
    normed_loss
        Reconstruction term on library-normalised counts (scETM's default: every cell weighs
        the same) instead of raw counts.
    """

    def __init__(self, n_genes: int, n_topics: int, n_hidden: int = 128, emb_dim: int = 400,
                 dropout: float = 0.1, fixed_rho: torch.Tensor | None = None, n_batches: int = 0,
                 adversarial: bool = False, normed_loss: bool = True):
        super().__init__()
        if adversarial and n_batches < 2:
            raise ValueError("the adversary needs at least 2 batches")
        self.n_topics, self.normed_loss = n_topics, bool(normed_loss)
        self.encoder = NormalEncoder(n_genes, n_topics, n_hidden=n_hidden, dropout=dropout)
        self.decoder = LinearTopicDecoder(n_genes, n_topics, emb_dim=emb_dim, fixed_rho=fixed_rho,
                                          n_batches=n_batches)
        self.discriminator = BatchDiscriminator(n_topics, n_batches) if adversarial else None

    def inference(self, x: torch.Tensor, v: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Posterior of cells ``x`` (counts, dense or sparse CSR; ``v`` is unused): ``mu`` and
        ``logsigma`` of delta, ``z`` (delta: a sample in training mode, else ``mu``), ``theta =
        softmax(z)`` and ``x_normalized`` (the library-normalised counts the encoder saw)."""
        xn = library_normalize(x)
        mu, logsigma = self.encoder(xn)
        delta = mu + torch.randn_like(mu) * torch.exp(logsigma) if self.training else mu
        return {"mu": mu, "logsigma": logsigma, "z": delta, "theta": torch.softmax(delta, dim=1),
                "x_normalized": xn}

    def reconstruction_nll(self, x: torch.Tensor, batch: torch.Tensor | None = None,
                           v: torch.Tensor | None = None) -> torch.Tensor:
        """Each cell's reconstruction term, ``(B,)``, as :meth:`loss` computes it: of the
        library-normalised counts with ``normed_loss`` (scETM's default), else of the counts
        (see :meth:`sctopic.nn.base.TopicModule.reconstruction_nll`)."""
        posterior = self.inference(x)
        target = posterior["x_normalized"] if self.normed_loss else x
        return self.decoder.nll(target, posterior["theta"], self.decoder.beta(), batch)

    def gene_embedding(self) -> torch.Tensor:
        """``(V, L + P)`` gene embeddings (rho transposed; fixed pathway rows first)."""
        return self.decoder.rho().T

    def topic_embedding(self) -> torch.Tensor:
        """``(K, L + P)`` topic embeddings alpha."""
        return self.decoder.alpha

    def forward(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        adv_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Losses for a minibatch: :meth:`inference` then :meth:`loss`.

        Parameters
        ----------
        x
            ``(B, V)`` counts (dense or sparse CSR).
        batch
            ``(B,)`` batch index of each cell (intercepts and adversary).
        kl_weight
            Weight of the KL term (warmed up by the training plan).
        adv_weight
            Weight of the encoder's adversarial (confusion) loss; the discriminator itself is
            always trained when present, on a detached ``delta``.
        """
        return self.loss(x, self.inference(x), batch=batch, kl_weight=kl_weight, adv_weight=adv_weight)

    def loss(
        self,
        x: torch.Tensor,
        posterior: dict[str, torch.Tensor],
        batch: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        adv_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms of a minibatch and ``"loss"``, their weighted sum (see :meth:`forward`)."""
        mu, logsigma, delta, theta = posterior["mu"], posterior["logsigma"], posterior["z"], posterior["theta"]
        beta = self.decoder.beta()
        target = posterior["x_normalized"] if self.normed_loss else x
        recon = self.decoder.nll(target, theta, beta, batch).mean()
        kl = kl_standard_normal(mu, logsigma).mean()
        loss = recon + kl_weight * kl
        out = {"reconstruction": recon, "kl": kl}
        if self.discriminator is not None and batch is not None:
            # One optimiser serves both players: the discriminator learns from a detached delta
            # (so its loss cannot move the encoder), and the encoder's confusion loss is taken
            # through a frozen copy of the discriminator's weights (so it cannot move the
            # discriminator). Each player's gradient is exactly its own objective's.
            disc = F.cross_entropy(self.discriminator(delta.detach()), batch)
            out["discriminator"] = disc
            loss = loss + disc
            if isinstance(adv_weight, torch.Tensor) or adv_weight > 0:  # a tensor: never read on the host
                frozen = {k: p.detach() for k, p in self.discriminator.named_parameters()}
                confuse = confusion_loss(functional_call(self.discriminator, frozen, (delta,)))
                out["adversarial"] = confuse
                loss = loss + adv_weight * confuse
        out["loss"] = loss
        return out
