"""Batch builders: how a model's minibatches are drawn from its :class:`~sctopic.train.data.TrainingData`.

A batch builder is ``(data, generator) -> (epoch -> iterable of (n_cells, kwargs))``; the
training plan calls it once the cells are placed and feeds each ``kwargs`` (plus the epoch's
loss weights) to the module's forward pass. Builders read ``data.batches`` and ``data.shard``
only while iterating, because the distributed set-up replaces them after the call.

Per-cell arrays a builder holds have one row per cell the model handed to the plan; with early
stopping ``data.X`` holds only the cells trained on, so builders take their rows with
``data.select`` (and build neighbour graphs on those cells alone).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sctopic.data.loader import resolve_ahead, sample_neighbours
from sctopic.train.plan import BatchBuilder

#: ``(device, cells) -> {"expr": (neighbours, degree), "ext": (neighbours, degree)}``: padded
#: neighbour lists of the expression graph and of the external view's graph over ``cells``
#: (positions among the cells handed to the plan; None: all), as tensors on ``device``.
GraphMaker = Callable[[torch.device, "np.ndarray | None"], dict[str, tuple[torch.Tensor, torch.Tensor]]]


def plain_batches(batch_size: int, views: dict[str, np.ndarray] | None = None) -> BatchBuilder:
    """Shuffled minibatches: ``x`` (counts), ``batch`` (codes, when the model has batches) and
    each per-cell matrix of ``views`` (rows: the training cells; e.g. ``{"v": external view}``)."""

    def build(data, gen):
        on_device = {name: torch.as_tensor(data.select(m), device=data.device) for name, m in (views or {}).items()}

        def epoch(_: int):
            for idx in data.batches(batch_size, gen):
                idx = data.shard(idx)
                batch = {"x": data.rows(idx)}
                if data.codes is not None:
                    batch["batch"] = data.batch_of(idx)
                for name, t in on_device.items():
                    batch[name] = t.index_select(0, idx)
                yield idx.shape[0], batch
        return epoch

    return build


def cross_view_batches(batch_size: int, view: np.ndarray, graphs: GraphMaker) -> BatchBuilder:
    """Minibatches for scE2TM's Cross-view Encoder: each anchor comes with one sampled neighbour
    in the expression graph (its counts, after the anchors' in ``x``) and one in the external
    view's graph (its view, ``v_nb``); ``v`` is the anchors' view.

    Neighbours are drawn for the whole global minibatch before sharding, so every process draws
    the same numbers and the generators stay in step. Out of core, the neighbours' rows of
    steps t+1 and t+2 are read while step t trains.
    """

    def build(data, gen):
        view_t = torch.as_tensor(data.select(view), device=data.device)
        g = graphs(data.device, data.cells)

        def planned():
            for idx in data.batches(batch_size, gen):
                nb_x = data.shard(sample_neighbours(*g["expr"], idx, gen))
                nb_v = data.shard(sample_neighbours(*g["ext"], idx, gen))
                idx = data.shard(idx)
                # Anchors and their expression neighbours in one gather (one encoder pass).
                batch = {"x": data.fetch(torch.cat([idx, nb_x])), "v": view_t.index_select(0, idx),
                         "v_nb": view_t.index_select(0, nb_v)}
                if data.codes is not None:
                    batch["batch"] = data.batch_of(idx)
                yield idx.shape[0], batch

        return lambda epoch: resolve_ahead(planned(), depth=2)

    return build


__all__ = ["GraphMaker", "cross_view_batches", "plain_batches"]
