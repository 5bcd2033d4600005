"""A small, generic training loop: optimiser, learning-rate schedule, progress, history, and
an optional early-stopping check after each epoch."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from sctopic.errors import InputError, SctopicError
from sctopic.nn.precision import autocast
from sctopic.train.lr import make_step_scheduler
from sctopic.train.static_step import CUDAGraphStep, StaticStep, check_graph_safe, finite_or_raise

OPTIMIZERS = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: optimisers with a fused CUDA kernel in torch 2.13 (RMSprop has none)
FUSED = frozenset({"adam", "adamw"})


def make_optimizer(name: str, params, lr: float, device: torch.device, fused: bool = True,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``params``.

    On CUDA with ``fused``: Adam and AdamW run their fused kernel (one launch for all
    parameters); RMSprop has no fused kernel in torch 2.13, so it runs the multi-tensor
    (``foreach``) implementation, which torch also picks by default there. ``capturable``
    (CUDA graphs): the step count and the learning rate live on the device (the rate as a
    tensor that the schedulers update in place), so a captured step reads their current values.
    On the CPU both are ignored: torch's defaults, as before.
    """
    kwargs: dict = {}
    if torch.device(device).type == "cuda":
        if fused:
            kwargs["fused" if name in FUSED else "foreach"] = True
        if capturable:
            kwargs["capturable"] = True
            lr = torch.tensor(float(lr), dtype=torch.float32, device=device)
    return OPTIMIZERS[name](params, lr=lr, **kwargs)


class TrainingDiverged(SctopicError):
    """The loss became NaN or infinite."""


class Trainer:
    """Runs epochs of minibatch steps on a module that returns a dict of losses with ``"loss"``.

    Parameters
    ----------
    module
        The torch module to optimise.
    lr
        Learning rate.
    optimizer
        ``"rmsprop"`` (the paper's), ``"adam"`` or ``"adamw"``.
    lr_step_epochs
        Halve the learning rate every this many epochs (None: constant).
    lr_gamma
        Factor applied at each step of the schedule (0.5).
    lr_decay
        Multiply the learning rate by ``exp(-lr_decay)`` after every optimiser step (scETM's
        schedule; 0: off). Exclusive with ``lr_step_epochs``.
    lr_schedule, lr_warmup, lr_floor, total_steps
        A per-step schedule over the whole run instead: ``"cosine"`` or ``"onecycle"`` with
        its warm-up fraction and (cosine) final fraction of ``lr``, planned over
        ``total_steps`` optimiser steps (see :mod:`sctopic.train.lr`). Exclusive with
        ``lr_step_epochs`` and ``lr_decay``. ``None`` (default): the classic schedules above.
    stopper
        Called after every epoch with the number of epochs done; returns the held-out value
        recorded as ``heldout_reconstruction`` (NaN when it did not check) and says when to
        stop through its ``stopped`` attribute (see
        :class:`~sctopic.train.early_stopping.EarlyStopper`). Its state joins
        :meth:`state_dict`.
    wrapper
        A module wrapping ``module`` that runs the forward pass instead of it, e.g.
        :class:`~torch.nn.parallel.DistributedDataParallel` (which averages gradients across
        processes). The optimiser, its state and checkpoints stay on ``module``.
    reduce_sum
        ``tensor -> tensor`` summing over processes (see
        :meth:`sctopic.train.distributed.DistContext.all_reduce_sum`). The per-epoch sums of
        the losses and the number of cells are reduced with it once per epoch, so the history
        holds the mean over all processes' cells (the same on every process).
    compile
        Run the forward pass through :func:`torch.compile` (the optimiser, checkpoints and
        the state stay on ``module``).
    precision
        ``"32"`` or ``"bf16"``: run the forward pass under bfloat16 autocast (see
        :mod:`sctopic.nn.precision`); the backward pass follows the forward's dtypes.
    fused_optimizer
        On CUDA, the fused (Adam, AdamW) or multi-tensor (RMSprop) optimiser step (see
        :func:`make_optimizer`); no effect on the CPU.
    static_step
        Run the graph-safe step (:class:`~sctopic.train.static_step.StaticStep`): no host
        read during a step, the loss terms read once per epoch (a NaN loss is then reported
        at the end of its epoch).
    cuda_graphs
        Capture that step as CUDA graphs and replay them
        (:class:`~sctopic.train.static_step.CUDAGraphStep`). Needs a CUDA device, a module
        whose forward pass reads no device value on the host, no ``wrapper`` (DDP), and a
        schedule that changes only the learning rate (not ``"onecycle"`` with Adam, whose
        beta1 it cycles).
    """

    def __init__(self, module: torch.nn.Module, lr: float = 1e-3, optimizer: str = "rmsprop",
                 lr_step_epochs: int | None = None, lr_gamma: float = 0.5, lr_decay: float = 0.0,
                 wrapper: torch.nn.Module | None = None,
                 reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 precision: str = "32", compile: bool = False, lr_schedule: str | None = None,
                 lr_warmup: float | None = None, lr_floor: float = 0.01, total_steps: int | None = None,
                 stopper: Any = None, fused_optimizer: bool = True, static_step: bool = False,
                 cuda_graphs: bool = False):
        if optimizer not in OPTIMIZERS:
            raise SctopicError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if lr_step_epochs and lr_decay:
            raise SctopicError("choose one learning-rate schedule: lr_step_epochs or lr_decay")
        if lr_schedule is not None and (lr_step_epochs or lr_decay):
            raise SctopicError(f"lr_schedule={lr_schedule!r} replaces lr_step_epochs and lr_decay; leave them off")
        if lr_schedule is not None and not total_steps:
            raise SctopicError("a per-step learning-rate schedule needs the run's total_steps")
        device = next(module.parameters()).device
        if cuda_graphs:
            if lr_schedule == "onecycle" and optimizer != "rmsprop":
                raise InputError(f"lr_schedule='onecycle' cycles {optimizer}'s beta1, which a captured step "
                                 "cannot see; use lr_schedule='cosine' or optimizer='rmsprop' with cuda_graphs.")
            if wrapper is not None:
                raise InputError("cuda_graphs=True does not support distributed training yet; train in one "
                                 "process, or without cuda_graphs.")
            if device.type != "cuda":
                raise InputError(f"cuda_graphs=True needs a CUDA device; the module is on {device}.")
            check_graph_safe(module)
        self.module = module
        self.forward = module if wrapper is None else wrapper
        self.precision = precision
        if compile:
            # Fuses the step's elementwise work (GPUs; on a CPU it needs a C++ compiler).
            self.forward = torch.compile(self.forward, dynamic=True)
        self.reduce_sum = reduce_sum
        self.capturable = bool(cuda_graphs)
        self.optimizer = make_optimizer(optimizer, module.parameters(), lr, device, fused=fused_optimizer,
                                        capturable=self.capturable)
        self.step_runner: StaticStep | None = None
        if cuda_graphs:
            self.step_runner = CUDAGraphStep(self.forward, self.optimizer, device, precision)
        elif static_step:
            self.step_runner = StaticStep(self.forward, self.optimizer, device, precision)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=lr_step_epochs, gamma=lr_gamma)
            if lr_step_epochs else None
        )
        self.step_scheduler = (
            torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=math.exp(-lr_decay))
            if lr_decay else None
        )
        if lr_schedule is not None:
            # RMSprop runs without momentum in the recipes: one-cycle cycles Adam's beta1 only.
            self.step_scheduler = make_step_scheduler(self.optimizer, lr_schedule, int(total_steps), lr_warmup,
                                                      lr_floor, cycle_momentum=optimizer != "rmsprop")
        self.stopper = stopper
        self.history: dict[str, list[float]] = defaultdict(list)
        self.epoch = 0

    def state_dict(self) -> dict:
        """Optimiser, schedulers, epoch, history and the early-stopping state as plain
        tensors, numbers and lists.

        Everything :meth:`load_state_dict` needs to continue training exactly where this
        trainer stands (the data order and noise are the caller's: see
        :mod:`sctopic.train.checkpoint`).
        """
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "step_scheduler": self.step_scheduler.state_dict() if self.step_scheduler else {},
            "epoch": self.epoch,
            "history": {k: [float(x) for x in v] for k, v in self.history.items()},
        }
        if self.stopper is not None:  # only then: runs without it keep their checkpoint layout
            state["early_stopping"] = self.stopper.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state returned by :meth:`state_dict` (same module and settings)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.step_scheduler and state.get("step_scheduler"):
            self.step_scheduler.load_state_dict(state["step_scheduler"])
        if self.stopper is not None and state.get("early_stopping"):
            self.stopper.load_state_dict(state["early_stopping"])
        self._restore_lr_type()
        self.epoch = int(state["epoch"])
        self.history = defaultdict(list, {k: [float(x) for x in v]
                                          for k, v in (state.get("history") or {}).items()})

    def _restore_lr_type(self) -> None:
        """A loaded optimiser state holds the learning rate as saved (a number, or a tensor from
        a run with CUDA graphs): make it what this trainer's optimiser reads."""
        for group in self.optimizer.param_groups:
            for key in ("lr", "initial_lr"):
                if key not in group:
                    continue
                value = group[key]
                if self.capturable and not isinstance(value, torch.Tensor):
                    group[key] = torch.tensor(float(value), dtype=torch.float32,
                                              device=group["params"][0].device)
                elif not self.capturable and isinstance(value, torch.Tensor):
                    group[key] = float(value)

    def fit(
        self,
        epoch_batches: Callable[[int], Iterable[tuple[int, dict]]],
        max_epochs: int,
        step_kwargs: dict | None = None,
        progress: bool = True,
        on_epoch_end: Callable[[int], None] | None = None,
        extra_stats: Callable[[], dict[str, float]] | None = None,
    ) -> dict[str, list[float]]:
        """Train from the current epoch up to ``max_epochs``, or until the stopper stops it.

        Parameters
        ----------
        epoch_batches
            ``epoch -> iterable of (n_cells, batch kwargs)``; each batch is passed to the module.
        max_epochs
            Total number of epochs (training resumes from ``self.epoch``).
        step_kwargs
            Extra keyword arguments for every module call.
        progress
            Show a tqdm progress bar.
        on_epoch_end
            Called with the finished epoch number (checkpoints).
        extra_stats
            Called after each step; values are averaged into the history (e.g. Sinkhorn
            iterations).
        """
        step_kwargs = step_kwargs or {}
        if self.step_runner is not None:
            self.step_runner.stats = extra_stats
        bar = tqdm(range(self.epoch, max_epochs), disable=not progress, desc="training",
                   unit="epoch", initial=self.epoch, total=max_epochs)
        for epoch in bar:
            if self.stopper is not None and self.stopper.stopped:
                break  # resumed from a checkpoint written after the stopping epoch
            self.forward.train()
            t0 = time.perf_counter()
            if self.step_runner is not None:
                sums, n_seen = self._static_epoch(epoch, epoch_batches(epoch), step_kwargs)
            else:
                sums, n_seen = self._eager_epoch(epoch, epoch_batches(epoch), step_kwargs, extra_stats)
            if self.scheduler:
                self.scheduler.step()
            self.epoch = epoch + 1
            if self.reduce_sum is not None:
                sums, n_seen = self._reduce(sums, n_seen)
            self._record(epoch, {k: v / max(n_seen, 1) for k, v in sums.items()})
            self.history["epoch_seconds"].append(time.perf_counter() - t0)
            self.history["lr"].append(float(self.optimizer.param_groups[0]["lr"]))
            if self.stopper is not None:
                # before the checkpoint hook, so a checkpoint of this epoch holds its check
                self.history["heldout_reconstruction"].append(self.stopper(self.epoch))
            bar.set_postfix(loss=f"{self.history['loss'][-1]:.4g}")
            if on_epoch_end is not None:
                on_epoch_end(self.epoch)
            if self.stopper is not None and self.stopper.stopped:
                break
        bar.close()
        return dict(self.history)

    def _eager_epoch(self, epoch: int, batches: Iterable[tuple[int, dict]], step_kwargs: dict,
                     extra_stats: Callable[[], dict[str, float]] | None) -> tuple[dict[str, float], int]:
        """An epoch of plain steps; every step's losses are read on the host (and checked)."""
        sums: dict[str, float] = defaultdict(float)
        n_seen = 0
        for n_cells, batch in batches:
            with autocast(next(self.module.parameters()).device, self.precision):
                out = self.forward(**batch, **step_kwargs)
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.step_scheduler:
                self.step_scheduler.step()
            vals = {k: float(v.detach()) for k, v in out.items()}
            if not math.isfinite(vals["loss"]):
                raise TrainingDiverged(
                    f"the loss became {vals['loss']} at epoch {epoch + 1}; lower the learning "
                    "rate (lr) or check the input for extreme values."
                )
            if extra_stats is not None:
                vals.update({k: float(v) for k, v in extra_stats().items()})
            for k, v in vals.items():
                sums[k] += v * n_cells
            n_seen += n_cells
        return sums, n_seen

    def _static_epoch(self, epoch: int, batches: Iterable[tuple[int, dict]],
                      step_kwargs: dict) -> tuple[dict[str, float], int]:
        """An epoch of graph-safe steps; the losses are read once, at its end."""
        for n_cells, batch in batches:
            self.step_runner(n_cells, {**batch, **step_kwargs})
            if self.step_scheduler:
                self.step_scheduler.step()
        sums, n_seen = self.step_runner.epoch_sums()
        finite_or_raise({k: v / max(n_seen, 1) for k, v in sums.items()}, epoch, TrainingDiverged)
        return sums, n_seen

    #: history columns appended after the epoch's means, not loss terms
    _APPENDED = frozenset({"epoch_seconds", "lr", "heldout_reconstruction"})

    def _record(self, epoch: int, means: dict[str, float]) -> None:
        """Append the epoch's means; a term absent in some epochs (e.g. ECR while its weight is
        still 0) gets NaN there, so every history list stays aligned with the epochs."""
        for k in set(self.history) - set(means) - self._APPENDED:
            means[k] = math.nan
        for k, v in means.items():
            hist = self.history[k]
            hist.extend([math.nan] * (epoch - len(hist)))
            hist.append(v)

    def _reduce(self, sums: dict[str, float], n_seen: int) -> tuple[dict[str, float], float]:
        """Sum the epoch's loss sums and cell count over processes (one collective call)."""
        keys = sorted(sums)
        vec = torch.tensor([sums[k] for k in keys] + [float(n_seen)], dtype=torch.float64)
        vec = self.reduce_sum(vec)
        return dict(zip(keys, vec[:-1].tolist())), float(vec[-1])
