"""User-facing scE2TM model (Chen et al., arXiv 2507.08355)."""
from __future__ import annotations

import numbers
import time
from typing import Any

import anndata as ad
import numpy as np
import torch

from sctopic.data.graphs import build_graph
from sctopic.data.pca import pca_of_counts
from sctopic.errors import InputError
from sctopic.external import resolve_view
from sctopic.external.validate import check_backed_view, view_for_new_cells
from sctopic.models.base import BaseTopicModel
from sctopic.models.batches import cross_view_batches, plain_batches
from sctopic.nn.sce2tm import CVE_LOSSES, RECON_WEIGHTINGS, SCE2TMModule
from sctopic.nn.sinkhorn import ECR_GRADS, SOLVE_DTYPES
from sctopic.train.lr import check_lr_schedule
from sctopic.train.plan import Optimisation, TrainingPlan
from sctopic.train.schedules import Constant, warmup
from sctopic.utils.random import seeded

#: The learning-rate schedules ``train(lr_schedule=...)`` offers (None: ``"step"``).
LR_SCHEDULES = ("step", "constant", "cosine", "onecycle")
#: Sinkhorn iterations per training step with ``cuda_graphs=True`` unless ``sinkhorn_iterations``
#: says otherwise (warm-started solves of the adaptive solver stop after 5-30 at tol 1e-3)
GRAPH_SINKHORN_ITERATIONS = 50

#: ``cve_weight="auto"``: the CVE's weight per mean count per cell (100 at ~1,000 counts).
AUTO_CVE_PER_COUNT = 0.1

#: Settings each ``preset`` gives to the options left at ``None``. ``"paper"``: the equations
#: and schedule of Chen et al. as published; ``"default"``: the recipe chosen by the 3-seed A/Bs
#: on pbmc3k, Kang and Baron in ``benchmarks/results/quality`` (relational cross-view
#: distillation at a depth-scaled weight, ECR warm-up, no sampled neighbour rows:
#: ``benchmarks/results/quality_nonb``).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"cve_loss": "relational", "cve_weight": "auto", "ecr_delay": 0.5, "ecr_warmup": 0.25,
                "depth_augment": 0.2, "recon_weighting": "cell", "cve_neighbours": False, "max_epochs": 200},
    "paper": {"cve_loss": "cluster", "cve_weight": 1.0, "ecr_delay": 0.0, "ecr_warmup": 0.0, "depth_augment": 0.0,
              "recon_weighting": "count", "cve_neighbours": True, "max_epochs": 500},
}


class SCE2TM(BaseTopicModel):
    """scE2TM: embedded topic model with Embedding Clustering Regularization and a Cross-view Encoder.

    Topic-gene matrix ``beta_km = softmax_k(-||g_m - t_k||^2 / tau)`` (each gene's column sums
    to 1) from gene and topic embeddings; ECR (entropic OT of genes onto topics) keeps topics
    apart; the Cross-view Encoder aligns the cell-topic head with a cluster head on an external
    cell view through mutual-nearest-neighbour distillation.

    Parameters
    ----------
    adata, layer
        AnnData (or ``.h5ad`` path) of raw counts, in ``X`` or in the layer ``layer``.
    n_topics
        Number of topics K (100).
    external_key
        External view: an ``adata.obsm`` key (any width, e.g. an scGPT embedding), ``"pca"``
        (default when ``None``: 50 PCs of log-normalised expression, which makes the CVE a
        self-distillation; see :mod:`sctopic.external.views`), ``"random"``, ``"go"``, or a
        foundation model run on the fly (``"scgpt:DIR"``, ``"geneformer:DIR"``; better: compute
        it once with ``sctopic embed`` and pass its key).
    n_top_genes
        Highly variable genes to keep (5000, the paper's setting; ``None`` or 0: all genes).
    n_hidden, emb_dim, tau, dropout
        Encoder width (200), embedding width L (200), beta temperature (0.2), dropout (0).
    encoder_input
        ``"counts"`` (the reference) or ``"log1p"`` (library-normalised log1p).
    depth_augment
        While training, the encoder sees each cell's counts binomially thinned to a random
        fraction in ``[depth_augment, 1)`` of its depth (the reconstruction target stays the
        full counts), so the topic logits cannot lean on sequencing depth; 0: off. ``None``:
        the preset's (default 0.2, paper 0).
    recon_weighting
        ``"count"``: the reconstruction sums the NLL over counts (the reference: deep cells weigh
        more) or ``"cell"``: each cell's NLL is divided by its depth (times the mean depth), so
        every cell weighs the same, as in scETM. ``None``: the preset's (default ``"cell"``,
        paper ``"count"``).
    cross_view
        Use the Cross-view Encoder (``False``: the "w/o CVE" ablation).
    external_concat
        Concatenate the external view to the encoder input instead (the "w/ EC" ablation).
    ecr_weight, ecr_eps, ecr_grad
        ECR weight lambda (100; 0: "w/o ECR"), Sinkhorn regularisation (0.05) and gradient
        mode: ``"implicit"`` (default, the exact gradient of ``<P*(C), C>`` by implicit
        differentiation), ``"envelope"`` (the plan as a constant: cheaper, less distinct
        topics) or ``"unrolled"`` (the reference's iterations under autograd; slow). See
        :class:`sctopic.nn.sinkhorn.ECR`.
    entropy_weight, temperature
        alpha of the entropy regulariser (5) and contrastive temperature (0.5).
    preset
        ``"default"`` (the recommended recipe) or ``"paper"`` (the published equations and
        schedule); fills ``cve_loss``, ``cve_weight`` and ``train``'s ``ecr_delay`` and
        ``ecr_warmup`` where they are left at ``None`` (see :data:`PRESETS`).
    cve_loss
        ``"cluster"`` (the paper's cluster-level distillation of softmax heads) or
        ``"neighbour"`` (instance-level InfoNCE of the topic logits against the cluster head's
        logits) or ``"relational"`` (the external view's cell-cell similarities distilled into
        the topic logits'); see :class:`sctopic.nn.sce2tm.SCE2TMModule`.
    cve_weight
        Weight of the Cross-view Encoder's terms, or ``"auto"``: 0.1 x the mean count per cell,
        so that its pull relative to the reconstruction (whose gradient grows with sequencing
        depth) is the same on shallow and deep data.
    n_neighbors
        Neighbours of each cell besides itself in the mutual kNN graphs (15, the paper's k).
    batch_key
        ``adata.obs`` column of batches: per-batch gene intercepts in the decoder,
        ``p = softmax(BN(theta beta) + lambda_b)``. The encoder does not see the batch.
    cve_neighbours
        Whether each minibatch carries one sampled graph neighbour per anchor cell (its counts
        go through the encoder with the anchors') and the two mutual kNN graphs are built. The
        ``"cluster"`` and ``"neighbour"`` losses need them; the ``"relational"`` loss reads only
        the anchors, so ``False`` halves the encoder's rows and skips the graphs (the neighbour
        rows also enter the encoder's batch-norm statistics, so the choice changes the model,
        not only its speed). ``None``: the preset's (default ``False``, paper ``True``), and
        always ``True`` with the ``"cluster"`` and ``"neighbour"`` losses.
    seed
        Seed of the initial weights and of the PCA (training has its own ``seed``).
    backed
        Train out of core from an ``.h5ad`` path (or an AnnData opened with ``backed="r"``);
        external views must then be ``None``/``"pca"`` or an ``obsm`` key.
    """

    model_name = "sce2tm"
    clustering_representation = "logits"  # the logits cluster more stably than theta (issue 17)

    def __init__(self, adata: ad.AnnData | str, n_topics: int = 100, layer: str | None = None,
                 external_key: str | None = None, *, n_top_genes: int | None = 5000,
                 n_hidden: int = 200, emb_dim: int = 200, tau: float = 0.2, dropout: float = 0.0,
                 encoder_input: str = "counts", cross_view: bool = True, external_concat: bool = False,
                 ecr_weight: float = 100.0, ecr_eps: float = 0.05, ecr_grad: str = "implicit",
                 entropy_weight: float = 5.0, temperature: float = 0.5, n_neighbors: int = 15,
                 batch_key: str | None = None, seed: int = 0, backed: bool = False,
                 preset: str = "default", cve_loss: str | None = None, cve_weight: float | str | None = None,
                 depth_augment: float | None = None, recon_weighting: str | None = None,
                 cve_neighbours: bool | None = None):
        self._check_n_topics(n_topics)  # before reading the data: fail fast
        if not (isinstance(ecr_weight, numbers.Real) and ecr_weight >= 0 and np.isfinite(ecr_weight)):
            raise InputError(f"ecr_weight must be a finite number >= 0, got {ecr_weight!r}.")
        if cross_view and external_concat:
            raise InputError("cross_view=True and external_concat=True are alternatives; set cross_view=False for 'w/ EC'.")
        if preset not in PRESETS:
            raise InputError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}.")
        cve_loss = PRESETS[preset]["cve_loss"] if cve_loss is None else cve_loss
        cve_weight = PRESETS[preset]["cve_weight"] if cve_weight is None else cve_weight
        depth_augment = PRESETS[preset]["depth_augment"] if depth_augment is None else depth_augment
        recon_weighting = PRESETS[preset]["recon_weighting"] if recon_weighting is None else recon_weighting
        if cve_neighbours is None:  # the losses that read a sampled neighbour always get one
            cve_neighbours = PRESETS[preset]["cve_neighbours"] or cve_loss != "relational"
        if not isinstance(cve_neighbours, (bool, np.bool_)):
            raise InputError(f"cve_neighbours must be True or False, got {cve_neighbours!r}.")
        if recon_weighting not in RECON_WEIGHTINGS:
            raise InputError(f"recon_weighting must be one of {RECON_WEIGHTINGS}, got {recon_weighting!r}.")
        if cve_loss not in CVE_LOSSES:
            raise InputError(f"cve_loss must be one of {CVE_LOSSES}, got {cve_loss!r}.")
        if cross_view and not cve_neighbours and cve_loss != "relational":
            raise InputError(f"cve_loss={cve_loss!r} distills each cell against a sampled graph neighbour, so it needs "
                             "cve_neighbours=True; only cve_loss='relational' can do without them.")
        if not (cve_weight == "auto" or (isinstance(cve_weight, (int, float)) and not isinstance(cve_weight, bool)
                                         and cve_weight >= 0)):
            raise InputError(f"cve_weight must be a number >= 0 or 'auto', got {cve_weight!r}.")
        if not (isinstance(depth_augment, numbers.Real) and 0 <= depth_augment < 1):
            raise InputError(f"depth_augment must be a fraction in [0, 1) (0: off), got {depth_augment!r}.")
        if ecr_grad not in ECR_GRADS:
            raise InputError(f"ecr_grad must be one of {ECR_GRADS}, got {ecr_grad!r}.")
        self._setup(adata, layer, n_top_genes, backed, batch_key)
        self._check_topics(n_topics)
        self._pca, self.external_ = None, None
        if cross_view or external_concat:
            is_name = external_key is None or isinstance(external_key, str)
            if not is_name and not hasattr(external_key, "shape"):
                raise InputError(f"external_key must be an obsm key, a view name ('pca', 'random', 'go', "
                                 f"'scgpt:DIR', 'geneformer:DIR') or a cells x dims array/DataFrame, got "
                                 f"{type(external_key).__name__}.")
            if backed and is_name:
                check_backed_view(external_key)
            # an array/DataFrame (one row per cell) is checked and aligned by resolve_view
            if (is_name and external_key in (None, "pca")) or cross_view:
                self._pca = pca_of_counts(self._X, 50, seed)
            self.external_ = resolve_view(self.adata, external_key, self._X, seed=seed, pca=self._pca,
                                          layer=layer)
        self._init_kwargs: dict[str, Any] = dict(
            n_topics=int(n_topics), layer=layer,
            external_key=None if self.external_ is None else self.external_.name,
            n_top_genes=n_top_genes, n_hidden=n_hidden, emb_dim=emb_dim, tau=tau, dropout=dropout,
            encoder_input=encoder_input, cross_view=bool(cross_view),
            external_concat=bool(external_concat), ecr_weight=float(ecr_weight), ecr_eps=ecr_eps,
            ecr_grad=ecr_grad, entropy_weight=entropy_weight, temperature=temperature,
            n_neighbors=int(n_neighbors), batch_key=batch_key, seed=int(seed), preset=preset, cve_loss=cve_loss,
            cve_weight=cve_weight if cve_weight == "auto" else float(cve_weight),
            cve_weight_value=AUTO_CVE_PER_COUNT * self.mean_library_ if cve_weight == "auto" else float(cve_weight),
            n_external=0 if self.external_ is None else int(self.external_.matrix.shape[1]),
            depth_augment=float(depth_augment), recon_weighting=recon_weighting,
            mean_library=float(self.mean_library_), cve_neighbours=bool(cve_neighbours),
        )
        self.graph_stats_: dict[str, dict] = {}
        with seeded(seed):
            self.module = self._make_module()

    def _make_module(self) -> SCE2TMModule:
        k = self._init_kwargs
        names = ("n_external", "n_hidden", "emb_dim", "tau", "dropout", "encoder_input", "cross_view",
                 "external_concat", "ecr_eps", "ecr_grad", "entropy_weight", "temperature")
        return SCE2TMModule(n_genes=len(self.genes), n_topics=k["n_topics"], n_batches=self.n_batches,
                            cve_loss=k.get("cve_loss", "cluster"),  # files saved before it existed
                            depth_augment=k.get("depth_augment", 0.0),
                            recon_weighting=k.get("recon_weighting", "count"),
                            mean_library=k.get("mean_library", 1.0),
                            **{name: k[name] for name in names})

    def __repr__(self) -> str:
        k, state = self._init_kwargs, "trained" if self.is_trained else "untrained"
        return (f"SCE2TM({len(self.genes)} genes, {k['n_topics']} topics, external={k['external_key']!r}, "
                f"preset={k.get('preset', 'paper')!r}, cross_view={k['cross_view']}, ecr_weight={k['ecr_weight']}, "
                f"batches={self.n_batches}; {state})")

    def train(self, max_epochs: int | None = None, batch_size: int = 512, lr: float = 1e-3, seed: int = 0, *,
              lr_step_epochs: int | None = -1, optimizer: str = "rmsprop", ecr_delay: float | None = None,
              ecr_warmup: float | None = None, lr_schedule: str | None = None, lr_warmup: float | None = None,
              lr_floor: float = 0.01, early_stopping: bool = False, validation_fraction: float = 0.1,
              check_every: int = 5, patience: int = 3, min_delta: float = 1e-3,
              sinkhorn_iterations: int | None = None, ecr_solve_dtype: str = "float64",
              **run_options) -> "SCE2TM":
        """Train the model (the paper's schedule: 500 epochs of 512 cells, RMSprop at 1e-3; the
        default preset's: 200 epochs).

        Parameters
        ----------
        max_epochs, batch_size, lr, seed
            Passes over the cells, cells per minibatch, learning rate, and the seed of minibatch
            order, neighbour sampling and noise (same seed, same model on the same machine).
            ``max_epochs=None``: the preset's (default 200, at which every 3-seed A/B of the
            recipe on pbmc3k, Kang and Baron ran, ``benchmarks/results/quality*``; paper 500).
            The ECR warm-up and the learning-rate halving scale with it.
        lr_step_epochs
            Halve the learning rate every this many epochs; ``-1`` (default): a quarter of
            ``max_epochs`` (the paper halves every 125 of 500); ``None``: constant. Only with
            ``lr_schedule`` ``None`` or ``"step"``.
        lr_schedule, lr_warmup, lr_floor
            The learning-rate schedule: ``None`` or ``"step"`` (default: the halving of
            ``lr_step_epochs``), ``"constant"``, ``"cosine"`` (linear warm-up over the first
            ``lr_warmup`` fraction of the optimiser steps, default 0.05, then cosine decay to
            ``lr_floor * lr``) or ``"onecycle"`` (PyTorch's one-cycle policy peaking at ``lr``
            after ``lr_warmup`` of the steps, default 0.25); see :mod:`sctopic.train.lr`.
        early_stopping, validation_fraction, check_every, patience, min_delta
            Hold a seeded random ``validation_fraction`` of the cells out of training (never an
            anchor nor a sampled neighbour; the neighbour graphs are built without them),
            measure their mean reconstruction NLL every ``check_every`` epochs (history column
            ``heldout_reconstruction``), stop after ``patience`` checks without a relative
            improvement of ``min_delta``, and keep the best check's weights; the outcome is in
            :attr:`early_stopping_` (``stopped_epoch``, ``best_epoch``...) and the held-out
            cells in :attr:`heldout_cells_`. Not with distributed training. See
            :mod:`sctopic.train.early_stopping`.
        optimizer
            ``"rmsprop"`` (paper), ``"adam"`` or ``"adamw"``.
        ecr_delay, ecr_warmup
            ECR off for the first ``ecr_delay`` fraction of epochs (no Sinkhorn solve), then
            ramped linearly to ``ecr_weight`` over the next ``ecr_warmup`` fraction. ``None``:
            the preset's (``"default"``: 0.5 and 0.25; ``"paper"``: 0 and 0, the full weight from
            the first step).
        sinkhorn_iterations
            ``None`` (default): ECR's Sinkhorn solve runs to its tolerance, checking convergence
            on the host. An integer: exactly that many iterations and no host read, what
            ``cuda_graphs=True`` needs (it then defaults to
            :data:`GRAPH_SINKHORN_ITERATIONS`); the history's ``sinkhorn_error`` (the plan's
            row-marginal L1 error, epoch mean) shows whether the count suffices (the adaptive
            solver stops below 1e-3).
        ecr_solve_dtype
            ``"float64"`` (default) or ``"float32"``: precision of the K x K solve in ECR's
            implicit gradient (float32 for GPUs with slow float64; see
            :class:`sctopic.nn.sinkhorn.TransportCost`).
        **run_options
            How the run executes (``device``, ``progress``, ``checkpoint_path``, ``resume``,
            ``distributed``, ``precision``...); see :class:`sctopic.train.plan.RunOptions`.
        """
        k = self._init_kwargs
        if (k["cross_view"] or k["external_concat"]) and self.external_ is None and self._X is not None:
            raise InputError("this model was loaded from a file, which does not store the external view; "
                             "continuing training is not supported yet: create a new SCE2TM to train.")
        preset = PRESETS[k.get("preset", "paper")]  # files saved before presets: the paper's
        max_epochs = preset["max_epochs"] if max_epochs is None else max_epochs
        ecr_delay = preset["ecr_delay"] if ecr_delay is None else ecr_delay
        ecr_warmup = preset["ecr_warmup"] if ecr_warmup is None else ecr_warmup
        if not (0 <= ecr_delay and 0 <= ecr_warmup and ecr_delay + ecr_warmup <= 1):
            raise InputError(f"ecr_delay and ecr_warmup are fractions of training (>= 0, sum <= 1); "
                             f"got {ecr_delay} and {ecr_warmup}.")
        check_lr_schedule(lr_schedule, LR_SCHEDULES, "SCE2TM")
        stopping = self._early_stopping(early_stopping, validation_fraction, check_every, patience, min_delta)
        if lr_schedule in (None, "step"):
            step = max(1, max_epochs // 4) if lr_step_epochs == -1 else lr_step_epochs
            opt = Optimisation(optimizer, lr, lr_step_epochs=step)
        else:
            if lr_step_epochs != -1:
                raise InputError(f"lr_step_epochs applies to lr_schedule='step' only; got lr_step_epochs="
                                 f"{lr_step_epochs!r} with lr_schedule={lr_schedule!r}.")
            step = None
            opt = Optimisation(optimizer, lr, lr_schedule=None if lr_schedule == "constant" else lr_schedule,
                               lr_warmup=lr_warmup, lr_floor=lr_floor)
        if sinkhorn_iterations is None and run_options.get("cuda_graphs"):
            sinkhorn_iterations = GRAPH_SINKHORN_ITERATIONS
        self._configure_ecr(sinkhorn_iterations, ecr_solve_dtype)
        settings = {"lr_step_epochs": step}
        if ecr_delay or ecr_warmup:  # only then: checkpoints of runs without them stay resumable
            settings.update(ecr_delay=ecr_delay, ecr_warmup=ecr_warmup)
        if sinkhorn_iterations is not None:  # likewise
            settings["sinkhorn_iterations"] = int(sinkhorn_iterations)
        if ecr_solve_dtype != "float64":
            settings["ecr_solve_dtype"] = ecr_solve_dtype
        plan = TrainingPlan(max_epochs, batch_size, seed, opt,
                            weights={"ecr_weight": warmup(k["ecr_weight"], ecr_warmup, ecr_delay),
                                     "cve_weight": Constant(k.get("cve_weight_value", 1.0))},
                            settings=settings, early_stopping=stopping)
        stats = self._ecr_stats() if k["ecr_weight"] > 0 else None
        # "w/ EC": the held-out check's encoder needs the held-out cells' external view too
        views = ({"v": self.external_.matrix[self._train_cells]}
                 if stopping is not None and k["external_concat"] else None)
        self._fit(plan, run_options, self._batch_builder(batch_size, seed), stats, eval_views=views)
        return self

    def _configure_ecr(self, sinkhorn_iterations: int | None, solve_dtype: str) -> None:
        """Set how ECR computes (not what): fixed or adaptive iterations, the solve's precision."""
        if sinkhorn_iterations is not None and (not isinstance(sinkhorn_iterations, numbers.Integral)
                                                or isinstance(sinkhorn_iterations, bool) or sinkhorn_iterations < 1):
            raise InputError(f"sinkhorn_iterations must be a positive integer or None, got {sinkhorn_iterations!r}.")
        if solve_dtype not in SOLVE_DTYPES:
            raise InputError(f"ecr_solve_dtype must be one of {SOLVE_DTYPES}, got {solve_dtype!r}.")
        ecr = self.module.ecr
        ecr.n_iter = None if sinkhorn_iterations is None else int(sinkhorn_iterations)
        ecr.solve_dtype = solve_dtype

    def _ecr_stats(self):
        """Per-step Sinkhorn statistics for the history: the iterations, and with a fixed count
        the plan's row-marginal error, left a device tensor (the graph-safe step averages it
        on the device; the plain step reads it)."""
        ecr = self.module.ecr

        def stats() -> dict:
            out = {"sinkhorn_iterations": float(ecr.last_iterations)}
            if ecr.n_iter is not None and torch.is_tensor(ecr.last_error):
                out["sinkhorn_error"] = ecr.last_error
            return out

        return stats

    def _batch_builder(self, batch_size: int, seed: int):
        cells = self._train_cells
        # the relational CVE reads only the anchors' view: no neighbour rows, no graphs
        if not self._init_kwargs["cross_view"] or not self._init_kwargs.get("cve_neighbours", True):
            return plain_batches(batch_size, {} if self.external_ is None else {"v": self.external_.matrix[cells]})
        return cross_view_batches(batch_size, self.external_.matrix[cells],
                                  lambda device, sel: self._graphs(cells if sel is None else cells[sel], seed, device))

    def _graphs(self, cells: np.ndarray, seed: int, device: torch.device) -> dict[str, tuple]:
        """Padded neighbour lists and degrees of the expression and external-view graphs."""
        t0 = time.perf_counter()
        k = self._init_kwargs["n_neighbors"]
        g_expr = build_graph(self._pca[cells], k=k, seed=seed)
        # The default view is the expression PCA itself: build its graph once.
        g_ext = g_expr if self.external_.name == "pca" else build_graph(self.external_.matrix[cells], k=k, seed=seed)
        self.graph_stats_ = {"expression": g_expr.stats, "external": g_ext.stats,
                             "seconds": time.perf_counter() - t0}
        return {name: (torch.as_tensor(g.neighbours, device=device), torch.as_tensor(g.degree, device=device))
                for name, g in (("expr", g_expr), ("ext", g_ext))}

    def _inference_view(self, data, is_training_data: bool):
        if not self._init_kwargs["external_concat"]:
            return None
        if is_training_data and self.external_ is not None:
            return self.external_.matrix
        return view_for_new_cells(data, self._init_kwargs["external_key"], self._init_kwargs["n_external"])

    def _extra_meta(self) -> dict[str, Any]:
        return {"graph_stats": self.graph_stats_}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self.graph_stats_ = extra.get("graph_stats", {})
        self.external_, self._pca = None, None
