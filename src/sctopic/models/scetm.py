"""User-facing scETM model (Zhao et al., Nat. Commun. 2021), with scETM+adv and p-scETM."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctopic.errors import InputError
from sctopic.models.base import BaseTopicModel, seeded
from sctopic.nn.scetm import SCETMModule
from sctopic.train import Trainer
from sctopic.train.checkpoint import check_checkpoint_args, make_checkpointer
from sctopic.train.distributed import prepare as prepare_distributed
from sctopic.train.distributed import setup as setup_distributed

log = logging.getLogger(__name__)


def pathway_matrix(genes, gene_sets, min_size: int = 5, max_size: int = 500) -> tuple[np.ndarray, list[str], Any]:
    """Standardised pathway-by-gene matrix for p-scETM.

    Each kept set (``min_size``..``max_size`` genes overlapping ``genes``) becomes a row of its
    0/1 membership over ``genes``, standardised to mean 0 and standard deviation 1 across
    genes (scETM's p-scETM input).

    Parameters
    ----------
    genes
        The model's genes, in order.
    gene_sets
        Bundled library name (``"go_bp_human"``...), GMT path, or a
        :class:`~sctopic.genesets.GeneSetLibrary`.
    min_size, max_size
        Overlap bounds of kept sets.

    Returns
    -------
    matrix, names, report
        ``(P, V)`` float32 matrix, the P set names, and the match report (coverage).
    """
    from sctopic.genesets import load

    matched = load(gene_sets).match(list(genes), min_size=min_size, max_size=max_size)
    inc = matched.incidence.toarray().astype(np.float64)
    mean = inc.mean(1, keepdims=True)
    sd = inc.std(1, keepdims=True)
    sd[sd == 0] = 1.0
    return ((inc - mean) / sd).astype(np.float32), list(matched.set_names), matched.report


class SCETM(BaseTopicModel):
    """scETM: embedded topic model with a tri-factorised linear decoder and batch intercepts.

    ``delta ~ N(mu(x), sigma(x))`` from library-normalised counts, ``theta = softmax(delta)``,
    ``p = softmax(theta alpha rho + lambda_batch)`` with topic embeddings ``alpha`` (K x L),
    gene embeddings ``rho`` (L x V) and per-batch gene intercepts ``lambda``.

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
        ``adata.obs`` column of batches: per-batch gene intercepts (and the adversary's
        target).
    n_top_genes
        Keep this many highly variable genes (``None`` or 0: all genes).
    n_hidden, dropout
        Encoder width (128) and dropout (0.1), as in scETM.
    emb_dim
        Trainable gene-embedding width L (default 400; 0 with ``gene_sets``, i.e. rho is the
        pathway matrix alone).
    gene_sets
        p-scETM: a gene-set library (bundled name, GMT path or library); sets with 5..500
        genes in the data become fixed rows of rho.
    adversarial
        scETM+adv: train a batch discriminator on delta against the encoder (needs
        ``batch_key`` with >= 2 batches).
    normed_loss
        Reconstruct library-normalised counts (scETM's default; every cell weighs the same).
    seed
        Seed for the initial weights.
    backed
        Train out of core: ``adata`` is an ``.h5ad`` path (or an AnnData opened with
        ``backed="r"``) whose count matrix stays on disk and is read in row blocks (see
        :mod:`sctopic.data.backed` for the minibatch randomness this gives).
    """

    model_name = "scetm"

    def __init__(
        self,
        adata: ad.AnnData | str,
        n_topics: int = 100,
        layer: str | None = None,
        batch_key: str | None = None,
        *,
        n_top_genes: int | None = None,
        n_hidden: int = 128,
        emb_dim: int | None = None,
        dropout: float = 0.1,
        gene_sets=None,
        adversarial: bool = False,
        normed_loss: bool = True,
        seed: int = 0,
        backed: bool = False,
    ):
        if int(n_topics) < 2:
            raise InputError(f"n_topics must be at least 2, got {n_topics}.")
        self._setup_data(adata, layer, n_top_genes, backed=backed)
        self._setup_batches(batch_key)
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
        with seeded(seed):
            self.module = self._make_module(fixed)
        self.device = torch.device("cpu")
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {}
        self.graph_stats_: dict[str, dict] = {}  # no neighbour graphs in scETM

    # ------------------------------------------------------------------ module
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

    def _beta(self) -> torch.Tensor:
        with torch.no_grad():
            return self.module.decoder.beta()

    def _gene_embedding(self) -> np.ndarray:
        return self.module.decoder.rho().detach().cpu().numpy().T

    def _topic_embedding(self) -> np.ndarray:
        return self.module.decoder.alpha.detach().cpu().numpy()

    def get_topic_gene(self) -> pd.DataFrame:
        """Topic-gene matrix ``alpha rho`` (K x V logits, scETM's ``beta``; unnormalised)."""
        return super().get_topic_gene()

    def topic_pathway_frame(self) -> pd.DataFrame:
        """p-scETM: the topic-by-pathway weights (the pathway columns of ``alpha``)."""
        if not self.pathways_:
            raise InputError("this model has no pathways; create it with gene_sets=... (p-scETM).")
        alpha = self.module.decoder.alpha.detach().cpu().numpy()[:, : len(self.pathways_)]
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
        state = "trained" if self.is_trained_ else "untrained"
        extra = f", {len(self.pathways_)} pathways" if self.pathways_ else ""
        return (f"SCETM({len(self.genes)} genes, {k['n_topics']} topics, batches={self.n_batches}, "
                f"adversarial={k['adversarial']}{extra}; {state})")

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 800,
        batch_size: int = 2000,
        lr: float = 5e-3,
        device: str = "auto",
        seed: int = 0,
        progress: bool = True,
        lr_decay: float = 6e-5,
        kl_weight: float = 1e-7,
        kl_warmup: float = 1 / 3,
        adv_weight: float = 0.005,
        adv_cutoff: float = 1 / 6,
        adv_warmup: float = 1 / 3,
        storage: str = "auto",
        write_results: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
        distributed: bool | str = "auto",
        num_workers: int = 1,
        block_size: int | None = None,
        pool_blocks: int | None = None,
        precision: str = "32",
        compile: bool = False,
    ) -> "SCETM":
        """Train with Adam (scETM's defaults: 800 epochs, 2000 cells per batch, lr 5e-3).

        Parameters
        ----------
        max_epochs, batch_size, lr
            Epochs, cells per minibatch, Adam learning rate.
        device
            ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:N]"``.
        seed
            Seed of minibatch order and noise (same seed, same model on the same machine).
        progress
            Show a progress bar.
        lr_decay
            Learning rate multiplied by ``exp(-lr_decay)`` after every step (6e-5, scETM).
        kl_weight, kl_warmup
            The KL weight rises linearly from 0 to ``kl_weight`` over the first ``kl_warmup``
            fraction of epochs. scETM's default maximum is 1e-7 (almost an autoencoder);
            1.0 gives the textbook ELBO.
        adv_weight, adv_cutoff, adv_warmup
            With ``adversarial=True``: the encoder's confusion loss weight is 0 for the first
            ``adv_cutoff`` of epochs (the discriminator learns alone), then rises linearly to
            ``adv_weight`` over the next ``adv_warmup`` fraction (scETM+adv's schedule).
        storage
            Minibatch layout: ``"csr"`` (sparse), ``"dense"``, or ``"auto"`` (default: dense
            when at least 10% of the counts are non-zero; see
            :func:`sctopic.data.loader.minibatch_layout`).
        write_results
            Write the outputs into the training AnnData when done.
        checkpoint_path
            Checkpoint file for ``checkpoint_every`` and ``resume`` (see
            :mod:`sctopic.train.checkpoint`). It is kept after training.
        checkpoint_every
            Write a checkpoint (atomically) after every this many epochs (0: never).
        resume
            Continue from ``checkpoint_path`` up to ``max_epochs``: the result is bit-for-bit
            that of an uninterrupted run with the same seed and settings (other settings or
            data raise :class:`~sctopic.errors.InputError`). Without the file yet, warn and
            start from epoch 0.
        precision
            ``"32"`` (default), ``"bf16"`` (dense matrix products in bfloat16 under autocast;
            parameters, distances, Sinkhorn and losses stay float32; see
            :mod:`sctopic.nn.precision`) or ``"auto"`` (bf16 on GPUs and CPUs with native
            bf16 units, else 32).
        compile
            Run the forward pass through :func:`torch.compile` (meant for GPUs; dense
            minibatches only; the first steps pay the compilation).
        num_workers, block_size, pool_blocks
            Out of core only (``backed=True``): reader threads prefetching ahead (1), cells
            per contiguous read (8192) and blocks shuffled together into minibatches (4).
        distributed
            Data-parallel training across the processes of a ``torchrun`` launch (see
            :mod:`sctopic.train.distributed`): ``"auto"`` (default) when torchrun started more
            than one process, ``True`` or a backend (``"gloo"``, ``"nccl"``) to require it,
            ``False`` never. Each process trains on its share of every minibatch; only rank 0
            shows progress, writes checkpoints and writes the results into ``adata``.
        """
        check_checkpoint_args(checkpoint_path, checkpoint_every, resume)
        t_start = time.perf_counter()
        dist = setup_distributed(distributed, device)
        data = self._prepare_training(max_epochs, batch_size, device if dist.device is None else dist.device,
                                      storage, num_workers, block_size, pool_blocks, precision,
                                      compile)
        dev, X, n, layout, rows, codes = data.device, data.X, data.n, data.layout, data.rows, data.codes
        gen = torch.Generator().manual_seed(int(seed))
        prec = data.precision
        ddp = prepare_distributed(self.module, data, dist, batch_size)
        trainer = Trainer(self.module, lr=lr, optimizer="adam", lr_decay=lr_decay, wrapper=ddp,
                          reduce_sum=dist.all_reduce_sum if dist.enabled else None,
                          precision=prec, compile=compile)
        adversarial = self._init_kwargs["adversarial"]

        def ramp(epoch: int, start: float, length: float, top: float) -> float:
            e0, span = start * max_epochs, max(length * max_epochs, 1e-9)
            return float(top * min(1.0, max(0.0, (epoch - e0) / span)))

        def epoch_batches(epoch: int):
            kw = {"kl_weight": ramp(epoch, 0.0, kl_warmup, kl_weight) if kl_warmup > 0 else kl_weight}
            if adversarial:
                kw["adv_weight"] = ramp(epoch, adv_cutoff, adv_warmup, adv_weight)
            for idx in data.batches(batch_size, gen):
                idx = data.shard(idx)
                batch = {"x": rows(idx), **kw}
                if codes is not None:
                    batch["batch"] = codes.index_select(0, idx)
                yield idx.shape[0], batch

        ckpt = make_checkpointer(
            checkpoint_path, checkpoint_every, resume, model=self, X=X,
            settings=dict(max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=int(seed),
                          lr_decay=lr_decay, kl_weight=kl_weight, kl_warmup=kl_warmup,
                          adv_weight=adv_weight, adv_cutoff=adv_cutoff, adv_warmup=adv_warmup,
                          optimizer="adam", layout=layout, precision=prec, device=dev.type),
            module=self.module, trainer=trainer, generator=gen, device=dev, dist=dist)
        with seeded(seed + dist.rank, dev):  # noise differs between processes, not the batches
            if resume:
                ckpt.restore()
            history = trainer.fit(epoch_batches, max_epochs, progress=progress and dist.is_main,
                                  on_epoch_end=ckpt)
        self._finish_training(history, t_start, dist, write_results=write_results, settings=dict(
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, device=str(dev), seed=seed,
            lr_decay=lr_decay, kl_weight=kl_weight, kl_warmup=kl_warmup,
            adv_weight=adv_weight if adversarial else 0.0, optimizer="adam", n_cells=int(n),
            precision=prec))
        return self

    # ------------------------------------------------------------------ save / load
    def _extra_meta(self) -> dict[str, Any]:
        return {"pathways": self.pathways_, "train_settings": getattr(self, "train_settings_", {})}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self.pathways_ = list(extra.get("pathways", []))
        self.graph_stats_ = {}
        self.train_settings_ = extra.get("train_settings", {})
