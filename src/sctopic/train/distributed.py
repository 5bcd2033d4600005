"""Data-parallel training with PyTorch DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc-per-node N -m sctopic fit DATA --out DIR`` (or ``SCE2TM(...).train()`` in a
script started by ``torchrun``) trains one model with N processes:

* **Backend.** ``gloo`` on CPU, ``nccl`` on GPUs (each process uses ``cuda:LOCAL_RANK``).
  The process group is read from torchrun's environment (``WORLD_SIZE``, ``RANK``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). A group the caller initialised already is
  used as it is. A group sctopic opens stays open for later ``train()`` calls of the same
  process (torchrun's store keeps the keys of a destroyed default group, so re-creating it in
  the same process can hang) and is destroyed by :func:`shutdown`, which ``sctopic fit`` calls
  when done and which also runs at interpreter exit.
* **Sharding.** Every process draws the same *global* minibatches from a generator seeded
  identically (same permutation, same sampled neighbours), then keeps its own part
  (:meth:`DistContext.shard`: every N-th cell of the global minibatch, ``t[rank::N]``) before
  rows are gathered. One epoch therefore has the same number of optimiser steps, and each step
  the same global batch, as single-process training with the same ``batch_size``; a last
  global minibatch with fewer than 2 cells per process is skipped (batch norm needs at least
  2 rows; see :func:`skip_small_batches`).
* **Gradients.** DDP averages the gradients of the per-process losses. Per-cell terms
  (reconstruction, KL, consistency) are means over each shard, so their average is the global
  mean (up to one cell of imbalance between shards). Model-level terms that do not depend on
  the cells, such as ECR, are computed identically on every process (same parameters and the
  same Sinkhorn warm start: DDP broadcasts rank 0's buffers, which hold the dual potentials,
  before each forward pass), so averaging leaves them as they are.
* **Batch normalisation.** On GPUs the batch-norm layers become
  :class:`torch.nn.SyncBatchNorm` for training (statistics over the global minibatch) and are
  turned back into ordinary ``BatchNorm1d`` afterwards. ``SyncBatchNorm`` does not run on the
  CPU; there each process normalises with its own shard's statistics (as per-GPU batch norm
  does in standard DDP), and DDP's buffer broadcast (``broadcast_buffers``) copies rank 0's
  running statistics to every process before each forward pass, so inference uses rank 0's
  running averages (each an estimate of the same population statistics).
* **Other minibatch-level terms.** The Cross-view Encoder's entropy of the mean assignment
  and its cluster-level contrast are computed on each shard (on any device). With batch norm
  on the CPU, this makes the result equal in distribution to, not bit-for-bit the same as,
  single-process training; shards of a few hundred cells keep these statistics close (keep
  ``batch_size`` at a few hundred cells per process).
* **Randomness.** Reparameterisation noise and dropout draw from torch's global generator
  seeded with ``seed + rank`` (different noise for different cells); minibatch order and
  neighbour sampling draw from a generator seeded with ``seed`` on every process.
* **Files.** Only rank 0 writes (checkpoints, ``model.pt``, results); the others write nothing.
* **Check.** At the end the parameters of all processes are compared
  (:func:`max_param_diff`, normally exactly 0) and recorded in ``train_settings_``.

Nothing here keeps global state beyond what :mod:`torch.distributed` itself keeps.
"""
from __future__ import annotations

import atexit
import inspect
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from sctopic.errors import InputError

BACKENDS = ("gloo", "nccl")

#: Values accepted by ``train(distributed=...)``.
DISTRIBUTED_CHOICES = ("auto", True, False, "gloo", "nccl")


def _dist():
    import torch.distributed as dist

    return dist


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise InputError(f"invalid torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {exc}") from exc
    return rank, world, local


def env_rank() -> int:
    """This process's rank under torchrun (0 outside torchrun): who may write files."""
    w = env_world()
    return 0 if w is None else w[0]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) training run.

    Attributes
    ----------
    rank, world_size, local_rank
        From torchrun (0, 1, 0 in a single process).
    device
        The device this process trains on (None: the caller's choice stands).
    backend
        ``"gloo"`` or ``"nccl"`` when training is distributed, else None.
    owns_group
        Whether this call initialised the process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None
    owns_group: bool = False
    _saved: dict = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        """True when training runs under DDP."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This process's part of a global minibatch index tensor: every ``world_size``-th
        entry starting at ``rank`` (the identity in a single process)."""
        if self.world_size <= 1:
            return t
        return t[self.rank::self.world_size]

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over processes (returns ``t`` itself in a single process)."""
        if not self.enabled:
            return t
        dev = self.device if self.backend == "nccl" else torch.device("cpu")
        buf = t.to(dev)
        _dist().all_reduce(buf)
        return buf.to(t.device)

    def barrier(self) -> None:
        if self.enabled:
            _dist().barrier()

    def info(self) -> dict[str, Any]:
        """JSON-able summary: ``world_size`` and ``backend``."""
        return {"world_size": self.world_size, "backend": self.backend}


def check_backend(backend: str | None) -> None:
    """Fail early, with one line, on a backend this machine cannot run (nccl without GPUs)."""
    if backend in (None, "auto", "gloo"):
        return
    if backend != "nccl":
        raise InputError(f"backend must be 'gloo' or 'nccl', got {backend!r}.")
    if not (torch.cuda.is_available() and _dist().is_available() and _dist().is_nccl_available()):
        raise InputError("the nccl backend needs CUDA GPUs and a torch built with NCCL; none is "
                         "available here: use the gloo backend (CPU) instead.")


def setup(distributed: bool | str = "auto", device: str | torch.device = "auto") -> DistContext:
    """Decide whether this ``train()`` call is distributed and open the process group if needed.

    Parameters
    ----------
    distributed
        ``"auto"``: distributed when launched by torchrun with ``WORLD_SIZE > 1`` (or when the
        caller initialised a process group of more than one process); ``True``: distributed
        (DDP even with one process), which needs torchrun's environment; ``"gloo"`` or
        ``"nccl"``: the same with that backend; ``False``: never (each process would train
        its own model).
    device
        The ``train(device=...)`` argument. ``"auto"`` and ``"cuda"`` become
        ``cuda:LOCAL_RANK`` when CUDA is available; the backend follows the device (``nccl``
        on CUDA, ``gloo`` on the CPU) unless given.

    Raises
    ------
    InputError
        An unknown value, ``nccl`` without CUDA GPUs, ``True`` outside torchrun, or an
        explicit ``cuda:N`` with several processes.
    """
    if distributed not in DISTRIBUTED_CHOICES or isinstance(distributed, int) and not isinstance(distributed, bool):
        raise InputError(f"distributed must be one of {DISTRIBUTED_CHOICES}, got {distributed!r}.")
    if distributed is False:
        return DistContext()
    backend = distributed if distributed in BACKENDS else None
    check_backend(backend)
    dist = _dist()
    initialised = dist.is_available() and dist.is_initialized()
    world = env_world()
    if initialised:
        rank, size = dist.get_rank(), dist.get_world_size()
        local = world[2] if world is not None else rank
    elif world is not None:
        rank, size, local = world
    else:
        if distributed == "auto":
            return DistContext()
        raise InputError(
            f"distributed={distributed!r} needs processes started by torchrun, e.g. "
            "`torchrun --nproc-per-node 2 -m sctopic fit ...` (no WORLD_SIZE/RANK in the "
            "environment)."
        )
    if distributed == "auto" and size <= 1:
        return DistContext(rank=rank, world_size=size, local_rank=local)
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed support.")
    # The device of this process.
    dev_s = str(device)
    want_cuda = (dev_s in ("auto", "cuda") and torch.cuda.is_available()) or backend == "nccl"
    if dev_s.startswith("cuda:") and size > 1:
        raise InputError(f"device={dev_s!r} with {size} processes: under torchrun each process "
                         "uses cuda:LOCAL_RANK; pass device='cuda' or 'auto'.")
    if dev_s == "cpu" and backend == "nccl":
        raise InputError("the nccl backend needs device='cuda'; use the gloo backend on the CPU.")
    if dev_s.startswith("cuda") or want_cuda:
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu'.")
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA GPU(s) "
                             "are visible; start at most one process per GPU.")
        dev = torch.device(dev_s) if dev_s.startswith("cuda:") else torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if backend is None and initialised:
        backend = "nccl" if "nccl" in str(dist.get_backend()).lower() else "gloo"
    if backend is None:
        backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    owns = False
    if initialised:
        group_backend = str(dist.get_backend()).lower()
        if backend not in group_backend:
            raise InputError(f"the process group already uses the {group_backend} backend, "
                             f"not {backend}.")
    else:
        kw = {"device_id": dev} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend=backend, init_method="env://", **kw)
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise InputError(f"could not start the {backend} process group: {first}") from exc
        owns = True
        atexit.register(shutdown, barrier=False)
    return DistContext(rank=rank, world_size=size, local_rank=local, device=dev, backend=backend,
                       owns_group=owns)


def check_sizes(n_cells: int, batch_size: int, ctx: DistContext) -> None:
    """Refuse runs whose shards would hold fewer than 2 cells (batch norm needs 2 rows)."""
    if not ctx.enabled:
        return
    need = 2 * ctx.world_size
    if n_cells < need or batch_size < need:
        raise InputError(
            f"{ctx.world_size} processes need at least {need} training cells and batch_size >= "
            f"{need} (2 cells per process and minibatch); got {n_cells} cells and batch_size "
            f"{batch_size}."
        )


def skip_small_batches(batches: Callable, min_size: int) -> Callable:
    """Wrap ``(batch_size, generator) -> iterator of index tensors`` so that a global minibatch
    smaller than ``min_size`` is skipped.

    Only a last, short minibatch of an epoch can be that small (fewer than 2 cells per process,
    which batch norm cannot train on); its few cells (at most ``min_size - 1``, different ones
    each epoch) sit out that epoch. Skipping, rather than merging into the previous minibatch,
    needs no look-ahead, so out-of-core readers keep their current block in memory.
    """

    def wrapped(batch_size, gen):
        for b in batches(batch_size, gen):
            if b.shape[0] >= min_size:
                yield b

    return wrapped


def prepare(module: nn.Module, data: Any, ctx: DistContext, batch_size: int) -> nn.Module | None:
    """Make a training run data-parallel; returns the DDP wrapper (None in a single process).

    Sets ``data.shard`` (see :meth:`DistContext.shard`), wraps ``data.batches`` so that every
    shard has at least 2 cells (:func:`skip_small_batches`), converts batch norm to ``SyncBatchNorm`` on CUDA, and wraps
    ``module`` (already on ``ctx.device``) in :class:`~torch.nn.parallel.DistributedDataParallel`
    with rank 0's buffers broadcast before each forward pass. Call :func:`finish` when training is done.
    """
    if not ctx.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel

    check_sizes(int(data.n), batch_size, ctx)
    data.shard = ctx.shard
    data.batches = skip_small_batches(data.batches, 2 * ctx.world_size)
    if ctx.device is not None and ctx.device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)  # converts the children in place
        ctx._saved["sync_bn"] = True
    kw = {"device_ids": [ctx.device.index], "output_device": ctx.device.index} \
        if ctx.device is not None and ctx.device.type == "cuda" else {}
    # Rank 0's buffers (batch-norm running statistics, Sinkhorn potentials) are copied to every
    # process before each forward pass; newer torch renamed the option.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kw["forward_sync_buffers"] = True
    else:  # pragma: no cover - older torch
        kw["broadcast_buffers"] = True
    # Every parameter takes part in every step of sctopic's models, so no unused-parameter
    # search (which would cost a graph traversal per step).
    return DistributedDataParallel(module, find_unused_parameters=False, **kw)


@torch.no_grad()
def max_param_diff(module: nn.Module, ctx: DistContext, buffers: bool = False) -> float:
    """Largest absolute difference between any parameter of this process and rank 0's.

    Every process gathers the flattened parameters (and buffers, if asked) of all processes;
    the same number is returned everywhere (0.0 in a single process). A collective call: all
    processes must call it.
    """
    if not ctx.enabled:
        return 0.0
    dist = _dist()
    tensors = list(module.parameters()) + (list(module.buffers()) if buffers else [])
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    flat = torch.cat([t.detach().reshape(-1).to(device=dev, dtype=torch.float64) for t in tensors]) \
        if tensors else torch.zeros(0, dtype=torch.float64, device=dev)
    gathered = [torch.empty_like(flat) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, flat)
    diff = max((float((g - gathered[0]).abs().max()) if g.numel() else 0.0) for g in gathered)
    return diff


@torch.no_grad()
def sync_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (batch-norm running statistics, Sinkhorn potentials) to all
    processes. A collective call."""
    if not ctx.enabled:
        return
    dist = _dist()
    comm_dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    for b in module.buffers():
        if b.dtype == torch.bool:  # not every backend broadcasts bool tensors
            tmp = b.to(device=comm_dev, dtype=torch.uint8)
            dist.broadcast(tmp, src=0)
            b.copy_(tmp.to(dtype=torch.bool))
        else:
            tmp = b.to(comm_dev)
            dist.broadcast(tmp, src=0)
            if tmp is not b:
                b.copy_(tmp)


def _revert_sync_batchnorm(module: nn.Module) -> None:
    """Turn ``SyncBatchNorm`` children back into ``BatchNorm1d`` (same parameters and buffers)."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats, device=child.weight.device
                                if child.weight is not None else None)
            if child.affine:
                bn.weight, bn.bias = child.weight, child.bias
            if child.track_running_stats:
                bn.running_mean, bn.running_var = child.running_mean, child.running_var
                bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            _revert_sync_batchnorm(child)


def finish(module: nn.Module, ctx: DistContext) -> dict[str, Any]:
    """End a data-parallel run: check parameters agree, copy rank 0's buffers everywhere and
    undo the ``SyncBatchNorm`` conversion. The process group stays open (see :func:`shutdown`).

    Returns
    -------
    dict
        ``{}`` in a single process, else ``world_size``, ``backend``, ``batch_norm``
        (``"sync"`` on CUDA, ``"per-process, rank 0's running statistics"`` on the CPU) and
        ``max_param_diff_across_ranks`` (0.0 when the processes stayed in step).
    """
    if not ctx.enabled:
        return {}
    diff = max_param_diff(module, ctx)
    sync_buffers(module, ctx)
    if ctx._saved.pop("sync_bn", False):
        _revert_sync_batchnorm(module)
    if diff != 0.0:
        warnings.warn(f"parameters differ across processes after training (max |diff| {diff:.3g}).",
                      RuntimeWarning, stacklevel=2)
    info = {**ctx.info(),
            "batch_norm": "sync" if ctx.device is not None and ctx.device.type == "cuda"
            else "per-process, rank 0's running statistics",
            "max_param_diff_across_ranks": diff}
    return info


def shutdown(barrier: bool = True) -> None:
    """Destroy the default process group (a no-op when none is open).

    ``sctopic fit`` calls it when its outputs are written; it also runs at interpreter exit
    (without the barrier, so a process leaving after an error does not wait for the others)
    when :func:`setup` opened the group.

    Parameters
    ----------
    barrier
        Wait for every process first (then every process must call it).
    """
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def gather_rng_states(ctx: DistContext) -> list[torch.Tensor] | None:
    """torch's global CPU (and CUDA) random state of every process, for checkpoints.

    Returns ``[state of rank 0, state of rank 1, ...]`` (uint8 tensors) on every process, or
    None in a single process. A collective call.
    """
    if not ctx.enabled:
        return None
    dist = _dist()
    state = torch.get_rng_state()
    if ctx.device is not None and ctx.device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(ctx.device)])
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    local = state.to(dev)
    out = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(out, local)
    return [o.cpu() for o in out]


def set_rng_state(state: torch.Tensor, ctx: DistContext) -> None:
    """Restore one entry of :func:`gather_rng_states` on this process."""
    n_cpu = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n_cpu].clone())
    if ctx.device is not None and ctx.device.type == "cuda" and state.numel() > n_cpu:
        torch.cuda.set_rng_state(state[n_cpu:].clone(), ctx.device)


__all__ = ["DistContext", "check_backend", "check_sizes", "env_rank", "env_world", "finish",
           "gather_rng_states", "max_param_diff", "skip_small_batches", "prepare", "set_rng_state",
           "setup", "shutdown", "sync_buffers"]
