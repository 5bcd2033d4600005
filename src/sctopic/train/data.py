"""The training cells on the device, and how minibatches of them are drawn.

:func:`prepare_data` turns a model's training matrix (scipy CSR in memory, or a
:class:`~sctopic.data.backed.BackedCounts` on disk) into a :class:`TrainingData`: minibatch
index streams, row gathers in the layout :func:`~sctopic.data.loader.minibatch_layout`
picks, and the batch codes of the cells. A model's batch builder draws from it; the training
plan (:mod:`sctopic.train.plan`) makes it data-parallel by setting :attr:`TrainingData.shard`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from sctopic.data.loader import RowStore, batch_indices, count_batches, minibatch_layout
from sctopic.errors import InputError

#: ``index tensor -> minibatch``: a dense or sparse-CSR tensor of the cells' counts.
Gather = Callable[[torch.Tensor], torch.Tensor]
#: ``(batch_size, generator) -> iterator of index tensors`` covering the cells once (an epoch).
BatchStream = Callable[[int, torch.Generator], Iterator[torch.Tensor]]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class TrainingData:
    """What a training run draws its minibatches from.

    Attributes
    ----------
    X
        The training cells' counts (scipy CSR, or a ``BackedCounts`` out of core).
    layout
        ``"dense"`` or ``"csr"``: the layout of the minibatch tensors.
    device
        Where minibatches are built.
    codes
        Batch index of every training cell on ``device``, or None without batches.
    rows
        Gathers the rows of cells (positions among the training cells) now.
    batches
        The epoch's minibatch index stream.
    fetch
        Like ``rows``, but out of core it may return a callable that finishes a read started
        in the background (resolve with :func:`sctopic.data.loader.resolve_ahead`).
    shard
        The part of a global minibatch this process trains on (identity in one process; see
        :mod:`sctopic.train.distributed`). Apply it to indices before gathering rows.
    steps
        ``batch_size -> number of minibatches per epoch`` (exact in memory, an estimate out
        of core; per-step learning-rate schedules plan with it).
    cells
        Positions, among the cells the model handed to the plan, of the rows of ``X`` (None:
        all of them, in order). With early stopping the held-out cells are left out of ``X``;
        a batch builder holding per-cell arrays (external views, neighbour graphs) indexes
        them with :meth:`select`.
    """

    X: object
    layout: str
    device: torch.device
    codes: torch.Tensor | None
    rows: Gather
    batches: BatchStream
    fetch: Callable[[torch.Tensor], object]
    shard: Callable[[torch.Tensor], torch.Tensor] = field(default=_identity)
    steps: Callable[[int], int] | None = None
    cells: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of training cells."""
        return int(self.X.shape[0])

    def select(self, per_cell: np.ndarray) -> np.ndarray:
        """The rows of a per-cell array (one row per cell handed to the plan) that belong to
        the cells of ``X``."""
        return per_cell if self.cells is None else per_cell[self.cells]

    def batch_of(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Batch codes of cells ``idx`` (None without batches)."""
        return None if self.codes is None else self.codes.index_select(0, idx)


def is_backed(X) -> bool:
    """True for an out-of-core :class:`~sctopic.data.backed.BackedCounts` matrix."""
    from sctopic.data.backed import BackedCounts

    return isinstance(X, BackedCounts)


def prepare_data(X, codes: np.ndarray | None, device: torch.device, storage: str = "auto",
                 compile: bool = False, num_workers: int = 1, block_size: int | None = None,
                 pool_blocks: int | None = None) -> TrainingData:
    """Place the training cells for minibatch training.

    Parameters
    ----------
    X
        Training cells x genes: scipy CSR (sliced from one :class:`~sctopic.data.loader.RowStore`
        on the device) or a ``BackedCounts`` (read by
        :class:`~sctopic.data.backed.BackedMinibatches`: ``num_workers`` reader threads,
        ``block_size`` cells per read, ``pool_blocks`` blocks shuffled together).
    codes
        Batch index of every training cell, or None.
    device
        The training device.
    storage
        ``"auto"``, ``"dense"`` or ``"csr"`` (see :func:`~sctopic.data.loader.minibatch_layout`).
    compile
        Whether the step runs through ``torch.compile``, which cannot trace sparse CSR
        tensors: refused with a sparse layout.
    """
    layout = minibatch_layout(X, storage)
    if compile and layout == "csr":
        raise InputError("compile=True needs dense minibatches (torch.compile does not trace "
                         "sparse CSR tensors): pass storage='dense'.")
    code_t = None if codes is None else torch.as_tensor(codes, device=device)
    if is_backed(X):
        from sctopic.data.backed import DEFAULT_BLOCK_SIZE, DEFAULT_POOL_BLOCKS, BackedMinibatches

        mb = BackedMinibatches(X, layout, device, block_size=block_size or DEFAULT_BLOCK_SIZE,
                               pool_blocks=pool_blocks or DEFAULT_POOL_BLOCKS, num_workers=num_workers)
        return TrainingData(X=X, layout=layout, device=device, codes=code_t, rows=mb.rows,
                            batches=mb.batches, fetch=mb.fetch, steps=mb.count_batches)
    store = RowStore(X, device, storage="auto" if layout == "dense" else "csr")
    rows = store.rows if layout == "dense" else store.rows_csr
    n = X.shape[0]

    def batches(batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        return batch_indices(n, batch_size, True, gen, device)

    def steps(batch_size: int) -> int:
        return count_batches(n, batch_size)

    return TrainingData(X=X, layout=layout, device=device, codes=code_t, rows=rows,
                        batches=batches, fetch=rows, steps=steps)


__all__ = ["BatchStream", "Gather", "TrainingData", "is_backed", "prepare_data"]
