"""The training plan: one loop for every model.

A model's ``train()`` states what makes it different, a :class:`TrainingPlan` (epochs, batch
size, seed, optimiser and learning-rate schedule, loss-weight schedules, the settings that
identify the run) and a batch builder, and hands both to :func:`run_plan` with the
:class:`RunOptions` the user passed. The plan does the rest, in this order:

1. check the checkpoint arguments and open the distributed run (:mod:`.distributed`);
2. resolve the device and the precision, place the training cells (:func:`.data.prepare_data`)
   and move the module;
3. ask the model's batch builder for the epoch's minibatches, make the run data-parallel
   (DDP wrapper, sharded minibatches), build the :class:`~sctopic.train.trainer.Trainer`;
4. inside one ``seeded(seed + rank)`` block: restore a checkpoint when resuming, then fit,
   passing each loss weight's value for the epoch to the module's forward pass;
5. close the distributed run and return a :class:`TrainingResult`.

With ``plan.early_stopping`` a seeded fraction of the cells is held out before step 2 (the
batch builder then sees only the others: :attr:`TrainingData.cells`), checked after epochs,
and the best check's weights are restored after step 4 (:mod:`sctopic.train.early_stopping`).

Randomness: minibatch order and the model's own draws (e.g. neighbour sampling) come from a
``torch.Generator`` seeded with ``seed``, the same on every process; reparameterisation noise
and dropout from torch's global generator seeded with ``seed + rank`` inside the block. The
same seed therefore gives the same model on the same machine, and a resumed run the same
model as an uninterrupted one (:mod:`sctopic.train.checkpoint`).
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from sctopic.errors import InputError
from sctopic.nn.precision import resolve_precision
from sctopic.train import distributed
from sctopic.train.checkpoint import check_checkpoint_args, make_checkpointer
from sctopic.train.data import TrainingData, is_backed, prepare_data
from sctopic.train.early_stopping import EarlyStopper, EarlyStopping, HeldOutCells, split_cells
from sctopic.train.lr import STEP_SCHEDULES, check_schedule_args
from sctopic.utils.device import resolve_device
from sctopic.train.schedules import Schedule
from sctopic.train.static_step import check_graph_safe
from sctopic.train.trainer import Trainer
from sctopic.utils.random import seeded

#: ``(data, generator) -> (epoch -> iterable of (n_cells, forward-pass keyword arguments))``.
BatchBuilder = Callable[[TrainingData, torch.Generator], Callable[[int], Iterable[tuple[int, dict]]]]


@dataclass
class RunOptions:
    """How a training run executes; the keyword arguments every model's ``train()`` accepts.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:N]"``.
    progress
        Show a progress bar.
    storage
        Minibatch layout. ``"csr"``: sparse CSR minibatches, so the encoder's first layer and
        the likelihood's data term cost O(non-zeros); ``"dense"``; ``"auto"`` (default): the
        layout :func:`sctopic.data.loader.minibatch_layout` picks from the data's density.
    write_results
        Write the outputs into the training AnnData when done (see ``write_results``).
    checkpoint_path
        Checkpoint file for ``checkpoint_every`` and ``resume`` (see
        :mod:`sctopic.train.checkpoint`). It is kept after training.
    checkpoint_every
        Write a checkpoint (atomically) after every this many epochs (0: never).
    resume
        Continue from ``checkpoint_path`` up to ``max_epochs``: the result is bit-for-bit that
        of an uninterrupted run with the same seed and settings (other settings or data raise
        :class:`~sctopic.errors.InputError`). Without the file yet, warn and start from epoch 0.
    distributed
        Data-parallel training across the processes of a ``torchrun`` launch (see
        :mod:`sctopic.train.distributed`): ``"auto"`` (default) when torchrun started more than
        one process, ``True`` or a backend (``"gloo"``, ``"nccl"``) to require it, ``False``
        never. Only rank 0 shows progress, writes checkpoints and writes the results.
    num_workers, block_size, pool_blocks
        Out of core only (``backed=True``): reader threads prefetching ahead (1), cells per
        contiguous read (8192) and blocks shuffled together into minibatches (4).
    precision
        ``"32"`` (default), ``"bf16"`` (dense matrix products in bfloat16 under autocast;
        parameters, distances, Sinkhorn and losses stay float32; see
        :mod:`sctopic.nn.precision`) or ``"auto"`` (bf16 on GPUs and CPUs with native bf16
        units, else 32).
    compile
        Run the forward pass through :func:`torch.compile` (meant for GPUs; dense minibatches
        only; the first steps pay the compilation).
    cuda_graphs
        Capture the whole training step (forward, backward, optimiser) as CUDA graphs and
        replay them (:mod:`sctopic.train.static_step`): the GPU step is no longer bound by
        kernel launches and host synchronisations. The step must read no device value on the
        host (SCE2TM then solves Sinkhorn with a fixed number of iterations, see its
        ``sinkhorn_iterations``); the losses are read once per epoch; minibatches are dense;
        not with distributed training. On a device other than CUDA the same graph-safe step
        runs without capture, with a warning.
    fused_optimizer
        On CUDA, the fused Adam/AdamW step or the multi-tensor RMSprop step (see
        :func:`sctopic.train.trainer.make_optimizer`); ignored on the CPU.
    """

    device: str | torch.device = "auto"
    progress: bool = True
    storage: str = "auto"
    write_results: bool = True
    checkpoint_path: str | os.PathLike | None = None
    checkpoint_every: int = 0
    resume: bool = False
    distributed: bool | str = "auto"
    num_workers: int = 1
    block_size: int | None = None
    pool_blocks: int | None = None
    precision: str = "32"
    compile: bool = False
    cuda_graphs: bool = False
    fused_optimizer: bool = True

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "RunOptions":
        """Options from ``train(**kwargs)``; an unknown name raises an error listing the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputError(f"train() got unknown argument(s) {', '.join(unknown)}; the run options "
                             f"are {', '.join(names)} (plus the model's own training arguments).")
        return cls(**kwargs)


@dataclass(frozen=True)
class Optimisation:
    """Optimiser and learning-rate schedule (see :class:`~sctopic.train.trainer.Trainer`).

    ``lr_step_epochs`` halves the rate every that many epochs (scE2TM's schedule);
    ``lr_decay`` multiplies it by ``exp(-lr_decay)`` after every step (scETM's);
    ``lr_schedule`` (``"cosine"`` or ``"onecycle"``, with ``lr_warmup`` and ``lr_floor``)
    replaces both by a per-step schedule over the whole run (:mod:`sctopic.train.lr`).
    """

    optimizer: str = "rmsprop"
    lr: float = 1e-3
    lr_step_epochs: int | None = None
    lr_decay: float = 0.0
    lr_schedule: str | None = None
    lr_warmup: float | None = None
    lr_floor: float = 0.01

    def describe(self) -> dict[str, Any]:
        """The per-step schedule's settings (empty without one, so the settings, and with them
        the checkpoint fingerprints, of runs on the classic schedules stay as they were)."""
        if self.lr_schedule is None:
            return {}
        from sctopic.train.lr import resolve_warmup

        out = {"lr_schedule": self.lr_schedule, "lr_warmup": resolve_warmup(self.lr_schedule, self.lr_warmup)}
        if self.lr_schedule == "cosine":
            out["lr_floor"] = float(self.lr_floor)
        return out


@dataclass
class TrainingPlan:
    """What a model's ``train()`` decides.

    Parameters
    ----------
    max_epochs, batch_size, seed
        Passes over the cells, cells per minibatch, seed of the run.
    optimisation
        Optimiser and learning-rate schedule.
    weights
        Loss weights by forward-pass keyword, each a :class:`~sctopic.train.schedules.Schedule`
        evaluated once per epoch.
    settings
        The model's own training settings: part of the checkpoint fingerprint (a checkpoint
        resumes only with the same values) and recorded in ``train_settings_``.
    early_stopping
        Hold out cells and stop on their reconstruction (None: train all ``max_epochs`` on
        all cells); see :mod:`sctopic.train.early_stopping`.
    """

    max_epochs: int
    batch_size: int
    seed: int
    optimisation: Optimisation
    weights: dict[str, Schedule] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    early_stopping: EarlyStopping | None = None

    def check(self) -> None:
        if self.max_epochs < 1 or self.batch_size < 2:
            raise InputError("max_epochs must be >= 1 and batch_size >= 2.")
        opt = self.optimisation
        if not (np.isfinite(opt.lr) and opt.lr > 0):
            raise InputError(f"lr must be a positive number, got {opt.lr}.")
        if not (np.isfinite(opt.lr_decay) and opt.lr_decay >= 0):
            raise InputError(f"lr_decay must be >= 0, got {opt.lr_decay}.")
        if opt.lr_step_epochs is not None and opt.lr_step_epochs < 0:
            raise InputError(f"lr_step_epochs must be >= 1 (0 or None: a constant rate), got "
                             f"{opt.lr_step_epochs}.")
        if opt.lr_schedule is not None:
            if opt.lr_schedule not in STEP_SCHEDULES:
                raise InputError(f"unknown learning-rate schedule {opt.lr_schedule!r}; one of {STEP_SCHEDULES} "
                                 "(or None for lr_step_epochs / lr_decay).")
            if opt.lr_step_epochs or opt.lr_decay:
                raise InputError(f"lr_schedule={opt.lr_schedule!r} replaces lr_step_epochs and lr_decay; "
                                 "leave them off.")
            check_schedule_args(opt.lr_schedule, opt.lr_warmup, opt.lr_floor)
        if self.early_stopping is not None:
            self.early_stopping.check()

    def weights_at(self, epoch: int) -> dict[str, float]:
        """Every loss weight's value in ``epoch`` (0-based)."""
        return {name: s(epoch, self.max_epochs) for name, s in self.weights.items()}

    def weights_final_from(self) -> int:
        """The first epoch (0-based) from which every loss weight keeps its final value (0 when
        none changes): before it, the objective itself is still changing."""
        final = self.weights_at(self.max_epochs - 1)
        epoch = self.max_epochs - 1
        while epoch > 0 and self.weights_at(epoch - 1) == final:
            epoch -= 1
        return epoch


@dataclass
class TrainingResult:
    """What a run leaves: per-epoch history, wall time, the settings to record, the device,
    and whether this process is the one that writes files (rank 0)."""

    history: dict[str, list[float]]
    seconds: float
    settings: dict[str, Any]
    device: torch.device
    is_main: bool
    #: resumes of the run from a checkpoint (``from_epoch``, ``checkpoint``, ``at``); empty
    #: for a run trained in one go
    resumes: list[dict[str, Any]] = field(default_factory=list)
    #: the training data's fingerprint when a checkpoint computed it (else None)
    data_fingerprint: dict[str, Any] | None = None
    #: early stopping's outcome (:meth:`~sctopic.train.early_stopping.EarlyStopper.summary`), or None
    early_stopping: dict[str, Any] | None = None
    #: positions (among the cells handed to :func:`run_plan`) of the held-out cells
    heldout: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def run_plan(plan: TrainingPlan, options: RunOptions, *, module: torch.nn.Module, X: Any,
             codes: np.ndarray | None, batch_builder: BatchBuilder, identity: Any,
             step_stats: Callable[[], dict[str, float]] | None = None,
             obs_names: Sequence[Any] | None = None,
             eval_views: Mapping[str, np.ndarray] | None = None) -> TrainingResult:
    """Train ``module`` on the cells of ``X`` according to ``plan`` (see the module docstring).

    Parameters
    ----------
    plan, options
        What the model decided and how the user wants it run.
    module
        The torch module; its forward pass takes a batch builder's keyword arguments plus the
        loss weights and returns a dict of losses with ``"loss"``.
    X
        The training cells' counts (scipy CSR or ``BackedCounts``).
    codes
        Batch index of every training cell, or None.
    batch_builder
        ``(data, generator) -> (epoch -> iterable of (n_cells, kwargs))``. Called once the
        data are placed; it must read ``data.batches`` and ``data.shard`` when iterated (the
        distributed set-up replaces them).
    identity
        The model, for the checkpoint fingerprint (class, ``init_params``, genes, batches).
    step_stats
        Called after every step; its values are averaged into the history.
    obs_names
        Names of the cells of ``X`` (part of a checkpoint's data fingerprint, which covers all
        of them, held-out cells included).
    eval_views
        Per-cell inputs of the encoder besides the counts (one row per cell of ``X``, passed by
        name to the module's ``reconstruction_nll``) for the held-out check; e.g. the external
        view of SCE2TM's ``external_concat``.
    """
    check_checkpoint_args(options.checkpoint_path, options.checkpoint_every, options.resume)
    plan.check()
    es = plan.early_stopping
    t_start = time.perf_counter()
    train_pos = heldout_pos = None
    if es is not None:  # before any work: too few cells is an input error
        train_pos, heldout_pos = split_cells(int(X.shape[0]), es.validation_fraction, plan.seed)
    dist = distributed.setup(options.distributed, options.device)
    if es is not None and dist.enabled:
        raise InputError("early_stopping is not supported with distributed training yet; train with "
                         "distributed=False, or without early_stopping.")
    dev = resolve_device(options.device if dist.device is None else dist.device)
    storage, capture = _graph_options(options, plan.optimisation, module, dist, dev)
    X_train, codes_train = X, codes
    if es is not None:
        X_train = X[train_pos]
        codes_train = None if codes is None else np.asarray(codes)[train_pos]
    data = prepare_data(X_train, codes_train, dev, storage, options.compile, options.num_workers,
                        options.block_size, options.pool_blocks)
    data.cells = train_pos
    prec = resolve_precision(options.precision, dev)
    module.to(dev)
    gen = torch.Generator().manual_seed(int(plan.seed))
    model_batches = batch_builder(data, gen)
    opt = plan.optimisation
    ddp = distributed.prepare(module, data, dist, plan.batch_size)
    stopper = None
    if es is not None:
        views = {k: np.asarray(v)[heldout_pos] for k, v in (eval_views or {}).items()}
        heldout = HeldOutCells(X[heldout_pos], None if codes is None else np.asarray(codes)[heldout_pos],
                               views, dev)
        # checks count once an epoch has been trained at the final loss weights
        stopper = EarlyStopper(es, heldout, module, plan.max_epochs, counted_from=plan.weights_final_from() + 1)
    total_steps = None
    if opt.lr_schedule is not None:
        total_steps = plan.max_epochs * _steps_per_epoch(data, plan.batch_size, dist)
    trainer = Trainer(module, lr=opt.lr, optimizer=opt.optimizer, lr_step_epochs=opt.lr_step_epochs,
                      lr_decay=opt.lr_decay, wrapper=ddp, precision=prec, compile=options.compile,
                      reduce_sum=dist.all_reduce_sum if dist.enabled else None,
                      lr_schedule=opt.lr_schedule, lr_warmup=opt.lr_warmup, lr_floor=opt.lr_floor,
                      total_steps=total_steps, stopper=stopper, fused_optimizer=options.fused_optimizer,
                      static_step=options.cuda_graphs, cuda_graphs=capture)

    def epoch_batches(epoch: int) -> Iterator[tuple[int, dict]]:
        weights = plan.weights_at(epoch)
        for n_cells, batch in model_batches(epoch):
            yield n_cells, {**batch, **weights}

    common = dict(max_epochs=plan.max_epochs, batch_size=plan.batch_size, lr=opt.lr,
                  seed=int(plan.seed), optimizer=opt.optimizer, precision=prec)
    # Only when set: the settings (and checkpoint fingerprints) of other runs stay as they were.
    common.update(opt.describe())
    if es is not None:
        common["early_stopping"] = es.describe()
    if options.cuda_graphs:
        common["cuda_graphs"] = capture  # False: the graph-safe step ran without capture
    # The fingerprint covers every cell handed over (held-out ones too): the split follows
    # from the seed and the settings.
    ckpt = make_checkpointer(
        options.checkpoint_path, options.checkpoint_every, options.resume, model=identity, X=X,
        settings={**common, **plan.settings, "layout": data.layout, "device": dev.type},
        module=module, trainer=trainer, generator=gen, device=dev, dist=dist, obs_names=obs_names)
    with seeded(plan.seed + dist.rank, dev):  # noise differs between processes, not the batches
        if options.resume:
            ckpt.restore()
        history = trainer.fit(epoch_batches, plan.max_epochs, progress=options.progress and dist.is_main,
                              extra_stats=step_stats, on_epoch_end=ckpt)
    stopped = None
    if stopper is not None:
        stopper.restore_best()  # the best check's weights, also when the run went to max_epochs
        stopped = stopper.summary(trainer.epoch)
    dist_info = distributed.finish(module, dist)
    module.eval()
    settings = {**common, **plan.settings, "device": str(dev), "n_cells": data.n,
                "world_size": dist.world_size}
    if dist_info:
        settings["distributed"] = dist_info
    return TrainingResult(history={k: [float(v) for v in vals] for k, vals in history.items()},
                          seconds=time.perf_counter() - t_start, settings=settings, device=dev,
                          is_main=dist.is_main, resumes=list(ckpt.resumes) if ckpt is not None else [],
                          data_fingerprint=dict(ckpt.fingerprint["data"]) if ckpt is not None else None,
                          early_stopping=stopped,
                          heldout=heldout_pos if heldout_pos is not None else np.zeros(0, dtype=np.int64))


def _graph_options(options: RunOptions, opt: Optimisation, module: torch.nn.Module, dist: Any,
                   dev: torch.device) -> tuple[str, bool]:
    """The minibatch storage and whether to capture CUDA graphs, after checking ``cuda_graphs``
    (the same checks on every device, so the uncaptured step off CUDA runs what CUDA would)."""
    if not options.cuda_graphs:
        return options.storage, False
    if opt.lr_schedule == "onecycle" and opt.optimizer != "rmsprop":
        raise InputError(f"lr_schedule='onecycle' cycles {opt.optimizer}'s beta1, which a captured step cannot "
                         "see; use lr_schedule='cosine' or optimizer='rmsprop' with cuda_graphs.")
    if dist.enabled:
        raise InputError("cuda_graphs=True does not support distributed training yet; train in one process "
                         "(distributed=False), or without cuda_graphs.")
    if options.storage == "csr":
        raise InputError("cuda_graphs=True needs dense minibatches (a CUDA graph has fixed shapes, a sparse "
                         "minibatch does not); pass storage='dense' or 'auto'.")
    check_graph_safe(module)
    if dev.type != "cuda":
        warnings.warn(f"cuda_graphs=True needs a CUDA device; on {dev} the same graph-safe step runs "
                      "without capture (losses read once per epoch).", UserWarning, stacklevel=3)
    return "dense", dev.type == "cuda"


def _steps_per_epoch(data: TrainingData, batch_size: int, dist: Any) -> int:
    """Optimiser steps per epoch for planning a per-step schedule: exact in memory (in a
    distributed run less a last global minibatch too small to shard; see
    :func:`~sctopic.train.distributed.skip_small_batches`), estimated out of core."""
    if data.steps is None:  # pragma: no cover - prepare_data always sets it
        raise InputError("per-step learning-rate schedules need the number of minibatches per epoch.")
    if dist.enabled and not is_backed(data.X):
        from sctopic.data.loader import count_batches

        return max(1, count_batches(data.n, batch_size, min_size=2 * dist.world_size))
    return max(1, int(data.steps(batch_size)))


__all__ = ["BatchBuilder", "Optimisation", "RunOptions", "TrainingPlan", "TrainingResult", "run_plan"]
