"""User-facing scE2TM model (Chen et al., arXiv 2507.08355)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import anndata as ad
import numpy as np
import torch

from sctopic.data.counts import pca_embedding
from sctopic.data.graphs import build_graph
from sctopic.data.loader import resolve_ahead, sample_neighbours
from sctopic.errors import InputError
from sctopic.external import resolve_view
from sctopic.models.base import BaseTopicModel, seeded
from sctopic.nn.sce2tm import SCE2TMModule
from sctopic.nn.sinkhorn import ECR_GRADS
from sctopic.train import Trainer
from sctopic.train.checkpoint import check_checkpoint_args, make_checkpointer
from sctopic.train.distributed import prepare as prepare_distributed
from sctopic.train.distributed import setup as setup_distributed

log = logging.getLogger(__name__)


class SCE2TM(BaseTopicModel):
    """scE2TM: embedded topic model with Embedding Clustering Regularization and a Cross-view Encoder.

    Topic-gene matrix ``beta_km = softmax_k(-||g_m - t_k||^2 / tau)`` from gene and topic
    embeddings; ECR (entropic OT of genes onto topics) keeps topics apart; the Cross-view Encoder
    aligns the cell-topic head with a cluster head on an external cell view through mutual-
    nearest-neighbour distillation.

    Parameters
    ----------
    adata
        AnnData (or path to ``.h5ad``) with raw counts in ``X`` or ``layer``.
    n_topics
        Number of topics K.
    layer
        Layer holding raw counts (``None``: ``X``).
    external_key
        External view: an ``adata.obsm`` key (any width; e.g. an scGPT embedding), ``"pca"``
        (default when ``None``: 50 PCs of log-normalised expression, which makes the CVE a
        self-distillation; see :mod:`sctopic.external.views`), ``"random"``, ``"go"`` (a
        gene-ontology view), or a foundation model computed on the fly: ``"scgpt:DIR"``,
        ``"geneformer:DIR"`` (better: compute it once with ``sctopic embed`` and pass its key).
    n_top_genes
        Keep this many highly variable genes (``None`` or 0: all genes of ``adata``).
    n_hidden, emb_dim, tau, dropout
        Encoder width (200), embedding width L (200), beta temperature (0.2), dropout (0).
    encoder_input
        ``"counts"`` (the reference) or ``"log1p"`` (library-normalised log1p).
    cross_view
        Use the Cross-view Encoder (``False``: the "w/o CVE" ablation).
    external_concat
        Concatenate the external view to the encoder input instead of CVE (the "w/ EC" ablation).
    ecr_weight
        Weight lambda of ECR (100 as in the reference configuration; 0: "w/o ECR").
    ecr_eps, ecr_grad
        Sinkhorn regularisation (0.05) and gradient mode. The plan is always solved without
        autograd, log-stabilised and warm-started from the previous step (except
        ``"unrolled"``). ``"implicit"`` (default): exact gradient of ``<P*(C), C>`` through the
        plan by implicit differentiation, the limit the reference's unrolled gradient converges
        to; ``"envelope"``: the plan as a constant (gradient = plan; cheaper, but on pbmc3k it
        gave clearly less distinct topics: TD 0.60 vs 0.75 after 200 epochs);
        ``"unrolled"``: the reference's cold-started iterations with autograd (slow).
    entropy_weight, temperature
        alpha of the entropy regulariser (5) and contrastive temperature (0.5).
    n_neighbors
        k of the kNN graphs (15).
    batch_key
        ``adata.obs`` column of batches (donors, samples): adds scETM's per-batch gene
        intercepts ``lambda_b`` to the decoder's logits, ``p = softmax(BN(theta beta) +
        lambda_b)``, so batch-specific gene levels need not be explained by topics. The
        encoder does not see the batch, so new cells are embedded without one.
    seed
        Seed for the initial weights (training has its own ``seed``).
    backed
        Train out of core: ``adata`` is an ``.h5ad`` path (or an AnnData opened with
        ``backed="r"``) whose count matrix stays on disk and is read in row blocks (see
        :mod:`sctopic.data.backed` for the minibatch randomness this gives). Gene selection
        and the expression PCA are computed in passes over the file. External views must be
        ``None``/``"pca"`` or an ``obsm`` key.
    """

    model_name = "sce2tm"

    def __init__(
        self,
        adata: ad.AnnData | str,
        n_topics: int = 100,
        layer: str | None = None,
        external_key: str | None = None,
        *,
        n_top_genes: int | None = None,
        n_hidden: int = 200,
        emb_dim: int = 200,
        tau: float = 0.2,
        dropout: float = 0.0,
        encoder_input: str = "counts",
        cross_view: bool = True,
        external_concat: bool = False,
        ecr_weight: float = 100.0,
        ecr_eps: float = 0.05,
        ecr_grad: str = "implicit",
        entropy_weight: float = 5.0,
        temperature: float = 0.5,
        n_neighbors: int = 15,
        batch_key: str | None = None,
        seed: int = 0,
        backed: bool = False,
    ):
        if int(n_topics) < 2:
            raise InputError(f"n_topics must be at least 2, got {n_topics}.")
        if ecr_weight < 0:
            raise InputError(f"ecr_weight must be >= 0, got {ecr_weight}.")
        if cross_view and external_concat:
            raise InputError("cross_view=True and external_concat=True are alternatives; set cross_view=False for 'w/ EC'.")
        if ecr_grad not in ECR_GRADS:
            raise InputError(f"ecr_grad must be one of {ECR_GRADS}, got {ecr_grad!r}.")
        self._setup_data(adata, layer, n_top_genes, backed=backed)
        self._setup_batches(batch_key)
        self._pca = None
        self.external_ = None
        if cross_view or external_concat:
            obs_adata = self.adata
            if backed:
                _check_backed_view(external_key)
            need_pca = external_key in (None, "pca") or cross_view
            self._pca = _pca_of(self._X, seed) if need_pca else None
            self.external_ = resolve_view(obs_adata, external_key, self._X, seed=seed, pca=self._pca,
                                          layer=layer)
        self._init_kwargs: dict[str, Any] = dict(
            n_topics=int(n_topics), layer=layer,
            external_key=None if self.external_ is None else self.external_.name,
            n_top_genes=n_top_genes, n_hidden=n_hidden, emb_dim=emb_dim, tau=tau, dropout=dropout,
            encoder_input=encoder_input, cross_view=bool(cross_view),
            external_concat=bool(external_concat), ecr_weight=float(ecr_weight), ecr_eps=ecr_eps,
            ecr_grad=ecr_grad, entropy_weight=entropy_weight, temperature=temperature,
            n_neighbors=int(n_neighbors), batch_key=batch_key, seed=int(seed),
            n_external=0 if self.external_ is None else int(self.external_.matrix.shape[1]),
        )
        with seeded(seed):
            self.module = self._make_module()
        self.device = torch.device("cpu")
        self.is_trained_ = False
        self.history_: dict[str, list[float]] = {}
        self.graph_stats_: dict[str, dict] = {}

    # ------------------------------------------------------------------ module
    def _make_module(self) -> SCE2TMModule:
        k = self._init_kwargs
        return SCE2TMModule(
            n_genes=len(self.genes), n_topics=k["n_topics"], n_external=k["n_external"],
            n_hidden=k["n_hidden"], emb_dim=k["emb_dim"], tau=k["tau"], dropout=k["dropout"],
            encoder_input=k["encoder_input"], cross_view=k["cross_view"],
            external_concat=k["external_concat"], ecr_eps=k["ecr_eps"], ecr_grad=k["ecr_grad"],
            entropy_weight=k["entropy_weight"], temperature=k["temperature"],
            n_batches=self.n_batches,
        )

    def _beta(self) -> torch.Tensor:
        with torch.no_grad():
            return self.module.decoder.beta()

    def _gene_embedding(self) -> np.ndarray:
        return self.module.decoder.gene_embedding.detach().cpu().numpy()

    def _topic_embedding(self) -> np.ndarray:
        return self.module.decoder.topic_embedding.detach().cpu().numpy()

    def __repr__(self) -> str:
        k = self._init_kwargs
        state = "trained" if self.is_trained_ else "untrained"
        return (f"SCE2TM({len(self.genes)} genes, {k['n_topics']} topics, external="
                f"{k['external_key']!r}, cross_view={k['cross_view']}, ecr_weight={k['ecr_weight']}, "
                f"batches={self.n_batches}; {state})")

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 500,
        batch_size: int = 512,
        lr: float = 1e-3,
        device: str = "auto",
        seed: int = 0,
        progress: bool = True,
        lr_step_epochs: int | None = -1,
        optimizer: str = "rmsprop",
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
    ) -> "SCE2TM":
        """Train the model.

        Parameters
        ----------
        max_epochs
            Passes over the cells (500 in the paper).
        batch_size
            Cells per minibatch (512).
        lr
            Learning rate of RMSprop (1e-3).
        device
            ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:N]"``.
        seed
            Seed of minibatch order, neighbour sampling and noise: the same seed gives the same
            model on the same machine.
        progress
            Show a progress bar.
        lr_step_epochs
            Halve the learning rate every this many epochs; ``-1`` (default) uses a quarter of
            ``max_epochs`` (the paper halves every 125 of 500 epochs); ``None`` keeps it constant.
        optimizer
            ``"rmsprop"`` (paper), ``"adam"`` or ``"adamw"``.
        storage
            Minibatch layout. ``"csr"``: sparse CSR minibatches, so the encoder's first layer
            and the likelihood's data term cost O(non-zeros); ``"dense"``: dense minibatches;
            ``"auto"`` (default): dense when at least 10% of the counts are non-zero, where
            the sparse weight gradient stops paying off (see
            :func:`sctopic.data.loader.minibatch_layout`).
        write_results
            Write the outputs into the training AnnData when done (see :meth:`write_results`).
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
        k = self._init_kwargs
        if (k["cross_view"] or k["external_concat"]) and self.external_ is None and self._X is not None:
            raise InputError(
                "this model was loaded from a file, which does not store the external view; "
                "continuing training is not supported yet: create a new SCE2TM to train."
            )
        t_start = time.perf_counter()
        dist = setup_distributed(distributed, device)
        data = self._prepare_training(max_epochs, batch_size, device if dist.device is None else dist.device,
                                      storage, num_workers, block_size, pool_blocks, precision,
                                      compile)
        dev, cells, X, n, layout, rows, codes = (data.device, data.cells, data.X, data.n, data.layout,
                                                 data.rows, data.codes)
        view = None
        if self.external_ is not None:
            view = torch.as_tensor(self.external_.matrix[cells], device=dev)
        graphs = {}
        if k["cross_view"]:
            t0 = time.perf_counter()
            expr_rep = self._pca[cells]
            g_expr = build_graph(expr_rep, k=k["n_neighbors"], seed=seed)
            if self.external_.name == "pca":
                g_ext = g_expr  # the same representation: build once
            else:
                g_ext = build_graph(self.external_.matrix[cells], k=k["n_neighbors"], seed=seed)
            self.graph_stats_ = {"expression": g_expr.stats, "external": g_ext.stats,
                                 "seconds": time.perf_counter() - t0}
            for name, g in (("expr", g_expr), ("ext", g_ext)):
                graphs[name] = (torch.as_tensor(g.neighbours, device=dev),
                                torch.as_tensor(g.degree, device=dev))
        gen = torch.Generator().manual_seed(int(seed))
        step = lr_step_epochs
        if step == -1:
            step = max(1, max_epochs // 4)
        prec = data.precision
        ddp = prepare_distributed(self.module, data, dist, batch_size)
        trainer = Trainer(self.module, lr=lr, optimizer=optimizer, lr_step_epochs=step, wrapper=ddp,
                          reduce_sum=dist.all_reduce_sum if dist.enabled else None,
                          precision=prec, compile=compile)


        def planned_batches():
            for idx in data.batches(batch_size, gen):
                if k["cross_view"]:
                    # Neighbours are drawn for the whole minibatch before sharding, so every
                    # process draws the same numbers and their generators stay in step.
                    nb_x = data.shard(sample_neighbours(*graphs["expr"], idx, gen))
                    nb_v = data.shard(sample_neighbours(*graphs["ext"], idx, gen))
                    idx = data.shard(idx)
                    # Anchors and their expression neighbours in one gather (one encoder pass).
                    batch = {"x": data.fetch(torch.cat([idx, nb_x])), "v": view.index_select(0, idx),
                             "v_nb": view.index_select(0, nb_v)}
                else:
                    idx = data.shard(idx)
                    batch = {"x": rows(idx)}
                if codes is not None:
                    batch["batch"] = codes.index_select(0, idx)
                if k["external_concat"]:
                    batch["v"] = view.index_select(0, idx)
                yield idx.shape[0], batch

        def epoch_batches(epoch: int):
            # Out of core, the neighbours' rows of steps t+1 and t+2 are read while step t
            # trains (in memory the look-ahead only holds two minibatches).
            return resolve_ahead(planned_batches(), depth=2)

        ecr = self.module.ecr
        extra = (lambda: {"sinkhorn_iterations": float(ecr.last_iterations)}) if k["ecr_weight"] > 0 else None
        ckpt = make_checkpointer(
            checkpoint_path, checkpoint_every, resume, model=self, X=X,
            settings=dict(max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=int(seed),
                          lr_step_epochs=step, optimizer=optimizer, layout=layout, precision=prec,
                          device=dev.type),
            module=self.module, trainer=trainer, generator=gen, device=dev, dist=dist)
        with seeded(seed + dist.rank, dev):  # noise differs between processes, not the batches
            if resume:
                ckpt.restore()
            history = trainer.fit(epoch_batches, max_epochs, step_kwargs={"ecr_weight": k["ecr_weight"]},
                                  progress=progress and dist.is_main, extra_stats=extra, on_epoch_end=ckpt)
        self._finish_training(history, t_start, dist, write_results=write_results, settings=dict(
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, device=str(dev), seed=seed,
            lr_step_epochs=step, optimizer=optimizer, n_cells=int(n), precision=prec))
        return self

    # ------------------------------------------------------------------ inference
    def _inference_view(self, data, is_training_data: bool):
        if not self._init_kwargs["external_concat"]:
            return None
        return self._external_for(data, is_training_data)

    def _external_for(self, data: ad.AnnData, is_training_data: bool) -> np.ndarray:
        if is_training_data and self.external_ is not None:
            return self.external_.matrix
        key = self._init_kwargs["external_key"]
        if key in (None, "pca", "random", "array") or key not in data.obsm:
            raise InputError(
                "this model concatenates an external view to its input (external_concat=True); "
                f"new data need the same view in adata.obsm[{key!r}] (built-in views cannot be "
                "transferred to new cells)."
            )
        from sctopic.data.validate import check_embedding

        mat = check_embedding(data.obsm[key], data.obs_names, f"adata.obsm[{key!r}]")
        if mat.shape[1] != self._init_kwargs["n_external"]:
            raise InputError(
                f"adata.obsm[{key!r}] has {mat.shape[1]} columns; the model was trained with "
                f"{self._init_kwargs['n_external']}."
            )
        return mat

    def _extra_meta(self) -> dict[str, Any]:
        return {"graph_stats": self.graph_stats_,
                "train_settings": getattr(self, "train_settings_", {})}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self.graph_stats_ = extra.get("graph_stats", {})
        self.train_settings_ = extra.get("train_settings", {})
        self.external_ = None
        self._pca = None


def _check_backed_view(external_key) -> None:
    """Out of core, only views that need no pass of a foundation model over the data."""
    if isinstance(external_key, str) and (external_key in ("random", "go") or ":" in external_key):
        raise InputError(
            f"external view {external_key!r} is not available with backed=True; compute it once "
            "(e.g. `sctopic embed`), store it in adata.obsm and pass its key."
        )


def _pca_of(X, seed: int) -> np.ndarray:
    """50 PCs of log-normalised counts, in memory or in passes over a backed file."""
    if hasattr(X, "iter_blocks"):
        from sctopic.data.pca import pca_blocks

        return pca_blocks(lambda: (b for _, _, b in X.iter_blocks()), X.shape[1], 50)
    return pca_embedding(X, 50, seed)
