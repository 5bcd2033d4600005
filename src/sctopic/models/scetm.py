"""User-facing scETM model (Zhao et al., Nat. Commun. 2021), with scETM+adv and p-scETM."""
from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctopic.errors import InputError
from sctopic.models.base import BaseTopicModel
from sctopic.models.batches import plain_batches
from sctopic.models.inputs import pathway_matrix
from sctopic.nn.scetm import SCETMModule
from sctopic.train.lr import STEP_SCHEDULES, check_lr_schedule
from sctopic.train.plan import Optimisation, TrainingPlan
from sctopic.train.schedules import Ramp, warmup
from sctopic.utils.random import seeded

log = logging.getLogger(__name__)

#: The learning-rate schedules ``train(lr_schedule=...)`` offers (None: ``"exponential"``).
LR_SCHEDULES = ("exponential", "step", "constant", "cosine", "onecycle")


class SCETM(BaseTopicModel):
    """scETM: embedded topic model with a tri-factorised linear decoder and batch intercepts.

    ``delta ~ N(mu(x), sigma(x))`` from library-normalised counts, ``theta = softmax(delta)``,
    ``p = softmax(theta alpha rho + lambda_batch)`` with topic embeddings ``alpha`` (K x L),
    gene embeddings ``rho`` (L x V) and per-batch gene intercepts ``lambda``. The topic-gene
    matrix (:meth:`get_topic_gene`) is ``alpha rho``: unnormalised logits, as scETM reports it.

    Variants: ``adversarial=True`` adds a batch discriminator on ``delta`` that the encoder
    learns to confuse (scETM+adv); ``gene_sets=...`` fixes rho to a standardised
    pathway-by-gene matrix (p-scETM), so ``alpha`` becomes a topic-by-pathway matrix
    (:meth:`topic_pathway_frame`).

    Parameters
    ----------
    adata
        AnnData (or path to ``.h5ad``) with raw counts in ``X`` or ``layer``.
    n_topics
        Number of topics K (100).
    layer
        Layer holding raw counts (``None``: ``X``).
    batch_key
        ``adata.obs`` column of batches: per-batch gene intercepts (and the adversary's target).
    n_top_genes
        Highly variable genes to keep (5000; ``None`` or 0: all genes).
    n_hidden, dropout
        Encoder width (128) and dropout (0.1), as in scETM.
    emb_dim
        Trainable gene-embedding width L (400; 0 with ``gene_sets``: rho is the pathway matrix).
    gene_sets
        p-scETM: a gene-set library (bundled name, GMT path or library); sets with 5..500
        genes in the data become fixed rows of rho.
    adversarial
        scETM+adv: a batch discriminator on delta against the encoder (needs ``batch_key``
        with >= 2 batches).
    normed_loss
        Reconstruct library-normalised counts (scETM's default; every cell weighs the same).
    seed
        Seed of the initial weights.
    backed
        Train out of core from an ``.h5ad`` path (or an AnnData opened with ``backed="r"``).
    """

    model_name = "scetm"

    def __init__(self, adata: ad.AnnData | str, n_topics: int = 100, layer: str | None = None,
                 batch_key: str | None = None, *, n_top_genes: int | None = 5000, n_hidden: int = 128,
                 emb_dim: int | None = None, dropout: float = 0.1, gene_sets=None,
                 adversarial: bool = False, normed_loss: bool = True, seed: int = 0, backed: bool = False):
        self._check_n_topics(n_topics)  # before reading the data: fail fast
        self._setup(adata, layer, n_top_genes, backed, batch_key)
        self._check_topics(n_topics)
        if adversarial and self.n_batches < 2:
            raise InputError("adversarial=True needs batch_key naming a column with at least 2 batches.")
        self.pathways_: list[str] = []
        fixed = None
        if gene_sets is not None:
            fixed, self.pathways_, report = pathway_matrix(self.genes, gene_sets)
            log.info("p-scETM: %s", report)
            self.pathway_report_ = str(report)
        if emb_dim is None:
            emb_dim = 0 if gene_sets is not None else 400
        if emb_dim < 0 or (emb_dim == 0 and fixed is None):
            raise InputError("emb_dim must be > 0 (or 0 together with gene_sets).")
        self._init_kwargs: dict[str, Any] = dict(
            n_topics=int(n_topics), layer=layer, batch_key=batch_key, n_top_genes=n_top_genes,
            n_hidden=int(n_hidden), emb_dim=int(emb_dim), dropout=float(dropout),
            gene_sets=None if gene_sets is None else str(getattr(gene_sets, "name", gene_sets)),
            adversarial=bool(adversarial), normed_loss=bool(normed_loss), seed=int(seed),
        )
        self.graph_stats_: dict[str, dict] = {}  # no neighbour graphs in scETM
        with seeded(seed):
            self.module = self._make_module(fixed)

    def _make_module(self, fixed: np.ndarray | None = None) -> SCETMModule:
        k = self._init_kwargs
        fixed_t = None
        if fixed is not None:
            fixed_t = torch.as_tensor(fixed)
        elif self.pathways_:  # loading: a placeholder the saved buffer overwrites
            fixed_t = torch.zeros(len(self.pathways_), len(self.genes))
        return SCETMModule(
            n_genes=len(self.genes), n_topics=k["n_topics"], n_hidden=k["n_hidden"],
            emb_dim=k["emb_dim"], dropout=k["dropout"], fixed_rho=fixed_t,
            n_batches=self.n_batches, adversarial=k["adversarial"], normed_loss=k["normed_loss"],
        )

    def topic_pathway_frame(self) -> pd.DataFrame:
        """p-scETM: the topic-by-pathway weights (the pathway columns of ``alpha``)."""
        if not self.pathways_:
            raise InputError("this model has no pathways; create it with gene_sets=... (p-scETM).")
        alpha = self.module.topic_embedding().detach().cpu().numpy()[:, : len(self.pathways_)]
        return pd.DataFrame(alpha, index=self.topic_names, columns=self.pathways_)

    def top_pathways(self, n: int = 10) -> pd.DataFrame:
        """p-scETM: the ``n`` highest-weighted pathways of each topic (rows topics, columns ranks)."""
        frame = self.topic_pathway_frame()
        order = np.argsort(-frame.to_numpy(), axis=1, kind="stable")[:, :n]
        names = np.asarray(self.pathways_, dtype=object)[order]
        return pd.DataFrame(names, index=frame.index, columns=[f"pathway_{r + 1}" for r in range(order.shape[1])])

    def write_results(self, adata=None, key_added=None, layer=None, allow_missing_genes=False):
        """As :meth:`BaseTopicModel.write_results`; p-scETM also writes
        ``uns['<key>']['topic_pathway']`` and ``uns['<key>']['pathways']``."""
        target = super().write_results(adata, key_added, layer, allow_missing_genes)
        if self.pathways_:
            key = key_added or self.model_name
            target.uns[key]["topic_pathway"] = self.topic_pathway_frame().to_numpy().astype(np.float32)
            target.uns[key]["pathways"] = np.asarray(self.pathways_, dtype=object)
        return target

    def __repr__(self) -> str:
        k = self._init_kwargs
        extra = f", {len(self.pathways_)} pathways" if self.pathways_ else ""
        return (f"SCETM({len(self.genes)} genes, {k['n_topics']} topics, batches={self.n_batches}, "
                f"adversarial={k['adversarial']}{extra}; {'trained' if self.is_trained else 'untrained'})")

    def train(self, max_epochs: int = 800, batch_size: int = 2000, lr: float = 5e-3, seed: int = 0, *,
              lr_decay: float = 6e-5, kl_weight: float = 1e-7, kl_warmup: float = 1 / 3,
              adv_weight: float = 0.005, adv_cutoff: float = 1 / 6, adv_warmup: float = 1 / 3,
              lr_schedule: str | None = None, lr_warmup: float | None = None, lr_floor: float = 0.01,
              early_stopping: bool = False, validation_fraction: float = 0.1, check_every: int = 5,
              patience: int = 3, min_delta: float = 1e-3, **run_options) -> "SCETM":
        """Train with Adam (scETM's defaults: 800 epochs of 2000 cells, lr 5e-3).

        Parameters
        ----------
        max_epochs, batch_size, lr
            Epochs, cells per minibatch, Adam learning rate.
        seed
            Seed of minibatch order and noise (same seed, same model on the same machine).
        lr_decay
            Learning rate multiplied by ``exp(-lr_decay)`` after every step (6e-5, scETM); only
            with ``lr_schedule`` ``None`` or ``"exponential"``.
        lr_schedule, lr_warmup, lr_floor
            The learning-rate schedule: ``None`` or ``"exponential"`` (default: the decay of
            ``lr_decay``), ``"step"`` (halved every quarter of ``max_epochs``), ``"constant"``,
            ``"cosine"`` (linear warm-up over the first ``lr_warmup`` fraction of the optimiser
            steps, default 0.05, then cosine decay to ``lr_floor * lr``) or ``"onecycle"``
            (PyTorch's one-cycle policy peaking at ``lr`` after ``lr_warmup`` of the steps,
            default 0.25, cycling Adam's beta1); see :mod:`sctopic.train.lr`.
        early_stopping, validation_fraction, check_every, patience, min_delta
            Hold a seeded random ``validation_fraction`` of the cells out of training, measure
            their mean reconstruction NLL (of the library-normalised counts with
            ``normed_loss``, as the training ``reconstruction``) every ``check_every`` epochs
            (history column ``heldout_reconstruction``), stop after ``patience`` checks without
            a relative improvement of ``min_delta``, and keep the best check's weights; the
            outcome is in :attr:`early_stopping_` and the held-out cells in
            :attr:`heldout_cells_`. Not with distributed training. See
            :mod:`sctopic.train.early_stopping`.
        kl_weight, kl_warmup
            The KL weight rises linearly from 0 to ``kl_weight`` over the first ``kl_warmup``
            fraction of epochs. scETM's default maximum is 1e-7 (almost an autoencoder);
            1.0 gives the textbook ELBO.
        adv_weight, adv_cutoff, adv_warmup
            With ``adversarial=True``: the encoder's confusion loss weight is 0 for the first
            ``adv_cutoff`` of epochs (the discriminator learns alone), then rises linearly to
            ``adv_weight`` over the next ``adv_warmup`` fraction (scETM+adv's schedule).
        **run_options
            How the run executes (``device``, ``progress``, ``checkpoint_path``, ``resume``,
            ``distributed``...); see :class:`sctopic.train.plan.RunOptions`.
        """
        weights = {"kl_weight": warmup(kl_weight, kl_warmup)}
        if self._init_kwargs["adversarial"]:
            weights["adv_weight"] = Ramp(adv_weight, adv_cutoff, adv_warmup)
        check_lr_schedule(lr_schedule, LR_SCHEDULES, "SCETM")
        stopping = self._early_stopping(early_stopping, validation_fraction, check_every, patience, min_delta)
        decay = lr_decay if lr_schedule in (None, "exponential") else 0.0
        step = max(1, max_epochs // 4) if lr_schedule == "step" else None
        per_step = lr_schedule if lr_schedule in STEP_SCHEDULES else None
        opt = Optimisation("adam", lr, lr_step_epochs=step, lr_decay=decay, lr_schedule=per_step,
                           lr_warmup=lr_warmup, lr_floor=lr_floor)
        settings = dict(lr_decay=decay, kl_weight=kl_weight, kl_warmup=kl_warmup, adv_weight=adv_weight,
                        adv_cutoff=adv_cutoff, adv_warmup=adv_warmup)
        if step is not None:
            settings["lr_step_epochs"] = step
        plan = TrainingPlan(max_epochs, batch_size, seed, opt, weights=weights, settings=settings,
                            early_stopping=stopping)
        self._fit(plan, run_options, plain_batches(batch_size))
        return self

    def _extra_meta(self) -> dict[str, Any]:
        return {"pathways": self.pathways_}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self.pathways_ = list(extra.get("pathways", []))
        self.graph_stats_ = {}
