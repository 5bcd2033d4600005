"""Training steps that never wait for the device, and their capture as CUDA graphs.

A GPU step of a small model is latency-bound: the host launches hundreds of small kernels and,
each time it reads a device value (a loss for the log, a convergence check), waits for all of
them to finish. :class:`StaticStep` runs forward, backward and the optimiser step without any
host read: the loss terms are accumulated, weighted by cells, into device tensors that are read
once per epoch (:meth:`StaticStep.epoch_means`), and the loss weights of the epoch are device
tensors filled in place. With that, nothing in a step depends on device values, and
:class:`CUDAGraphStep` captures it as a CUDA graph and replays it: one launch per step.

What the module must provide: a forward pass without host reads and without Python branches on
device values (for SCE2TM: the fixed-iteration Sinkhorn solve, ``ECR.n_iter``). A submodule
that cannot promise this says so with a ``graph_safe`` attribute that is False
(:func:`check_graph_safe`).

A weight of exactly 0 stays the Python number 0.0, so the module may skip the term (SCE2TM skips
the Sinkhorn solve); any other value is a device tensor, so a ramp from one epoch to the next
does not need a new graph. A graph is captured per *signature*: the shapes and dtypes of the
minibatch tensors, which weights are zero, and the number of cells (an epoch's last, smaller
minibatch has its own graph).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sctopic.errors import InputError
from sctopic.nn.precision import autocast


def check_graph_safe(module: torch.nn.Module) -> None:
    """Raise :class:`~sctopic.errors.InputError` if a submodule of ``module`` reads device
    values on the host during its forward pass (its ``graph_safe`` attribute is False)."""
    for name, sub in module.named_modules():
        if getattr(sub, "graph_safe", True) is False:
            raise InputError(
                f"cuda_graphs=True needs a training step that never reads a device value on the host, "
                f"but {name or 'the module'} ({type(sub).__name__}) does (e.g. a Sinkhorn solve to a "
                "tolerance, or ecr_grad='unrolled'); give the solver a fixed iteration count "
                "(SCE2TM.train(sinkhorn_iterations=N)), or train without cuda_graphs.")


class StaticStep:
    """One optimisation step with no host read; the loss terms stay on the device.

    Parameters
    ----------
    forward
        The module (or its wrapper) called with the minibatch's keyword arguments; returns a
        dict of 0-d loss tensors with ``"loss"``.
    optimizer
        The optimiser of the module's parameters.
    device
        The training device.
    precision
        ``"32"`` or ``"bf16"`` (see :mod:`sctopic.nn.precision`).
    stats
        Called after each step's forward pass; its values are averaged like the loss terms
        (device tensors on the device, inside a captured graph; numbers on the host).
    """

    def __init__(self, forward: Callable[..., dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                 device: torch.device, precision: str = "32",
                 stats: Callable[[], dict[str, Any]] | None = None):
        self.forward, self.optimizer, self.stats = forward, optimizer, stats
        self.device, self.precision = torch.device(device), precision
        self.sums: dict[str, torch.Tensor] = {}  # float64 on the device: sum over steps of term x cells
        self.host_sums: dict[str, float] = {}
        self.cells = 0
        self._epoch_keys: dict[str, None] = {}  # terms accumulated this epoch, in order
        self._weights: dict[str, torch.Tensor] = {}
        self._weight_values: dict[str, float] = {}

    # ------------------------------------------------------------------ per step
    def __call__(self, n_cells: int, kwargs: dict[str, Any]) -> None:
        """Train on one minibatch (``kwargs``: the forward pass's keyword arguments, tensors and
        float loss weights) of ``n_cells`` cells."""
        tensors, weights, _ = self.split(n_cells, kwargs)
        keys = self.body(n_cells, {**tensors, **weights})
        self._finish(n_cells, keys)

    def _finish(self, n_cells: int, keys: list[str]) -> None:
        """Host-side bookkeeping after a step: cells, the terms it accumulated, and the
        statistics that are numbers."""
        self.cells += n_cells
        self._epoch_keys.update(dict.fromkeys(keys))
        for k, v in (self.stats() if self.stats is not None else {}).items():
            if not isinstance(v, torch.Tensor):
                self.host_sums[k] = self.host_sums.get(k, 0.0) + float(v) * n_cells

    def body(self, n_cells: int, kwargs: dict[str, Any]) -> list[str]:
        """Forward, backward, optimiser step and accumulation: the part a CUDA graph captures.
        Returns the names of the terms it accumulates."""
        # set_to_none: backward then writes fresh gradients (in a graph: into its own pool)
        self.optimizer.zero_grad(set_to_none=True)
        # autocast's weight cache would hold casts made during capture; off, as CUDA graphs need
        with autocast(self.device, self.precision, cache_enabled=False):
            out = self.forward(**kwargs)
        out["loss"].backward()
        self.optimizer.step()
        stats = self.stats() if self.stats is not None else {}
        keys = []
        for k, v in [*out.items(), *stats.items()]:
            if isinstance(v, torch.Tensor):
                self._accumulator(k).add_(v.detach().to(torch.float64), alpha=n_cells)
                keys.append(k)
        return keys

    def split(self, n_cells: int, kwargs: dict[str, Any]) -> tuple[dict, dict, tuple]:
        """Tensors, weights (0.0 or a device tensor filled with the value) and the signature."""
        tensors, weights, key = {}, {}, [("cells", n_cells)]
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                if value.layout != torch.strided:
                    raise InputError("the graph-safe training step needs dense minibatches; pass storage='dense'.")
                tensors[name] = value
                key.append((name, tuple(value.shape), value.dtype))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                weights[name] = self._weight(name, float(value))
                key.append((name, "zero" if value == 0 else "weight"))
            else:  # None, flags: part of the signature, passed as they are
                weights[name] = value
                key.append((name, repr(value)))
        return tensors, weights, tuple(key)

    # ------------------------------------------------------------------ per epoch
    def epoch_sums(self) -> tuple[dict[str, float], int]:
        """The epoch's sums (term x cells) and its number of cells, read with one host
        synchronisation; the accumulators are reset for the next epoch."""
        keys = list(self._epoch_keys)
        values = torch.stack([self.sums[k] for k in keys]).tolist() if keys else []
        out = dict(zip(keys, values))
        for k, v in self.host_sums.items():
            out[k] = out.get(k, 0.0) + v
        n = self.cells
        for t in self.sums.values():
            t.zero_()
        self.host_sums, self.cells, self._epoch_keys = {}, 0, {}
        return out, n

    def _accumulator(self, key: str) -> torch.Tensor:
        acc = self.sums.get(key)
        if acc is None:
            acc = self.sums[key] = torch.zeros((), dtype=torch.float64, device=self.device)
        return acc

    def _weight(self, name: str, value: float) -> float | torch.Tensor:
        if value == 0:
            return 0.0
        t = self._weights.get(name)
        if t is None:
            t = self._weights[name] = torch.tensor(value, dtype=torch.float32, device=self.device)
            self._weight_values[name] = value
        elif self._weight_values[name] != value:
            t.fill_(value)  # an asynchronous fill, no host read
            self._weight_values[name] = value
        return t


@dataclass
class _Graph:
    """A captured step and its static inputs."""

    seen: int = 0
    replay: Callable[[], None] | None = None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # the terms the step accumulates


class CUDAGraphStep(StaticStep):
    """:class:`StaticStep` captured as one CUDA graph per signature and replayed.

    The first ``warmup`` steps of each signature run eagerly on a side stream (they create the
    optimiser's state, cuBLAS/cuSOLVER handles and the accumulators); the next one is captured
    and then replayed, like every later step: its minibatch is copied into the graph's static
    input tensors first. Every step, captured or not, trains on its minibatch exactly once.

    The optimiser must be capturable (its step count and learning rate on the device, see
    :func:`sctopic.train.trainer.make_optimizer`), and the learning-rate schedule must change
    only the rate, which the schedulers do in place on that tensor. The module and optimiser
    must be on a CUDA device (the trainer checks).
    """

    def __init__(self, *args, warmup: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup = int(warmup)
        self.graphs: dict[tuple, _Graph] = {}
        self.captures = 0

    def __call__(self, n_cells: int, kwargs: dict[str, Any]) -> None:
        tensors, weights, key = self.split(n_cells, kwargs)
        entry = self.graphs.setdefault(key, _Graph())
        if entry.seen < self.warmup:
            def warm():
                entry.keys = self.body(n_cells, {**tensors, **weights})
            self._on_side_stream(warm)
        else:
            if entry.replay is None:
                entry.inputs = {k: t.clone() for k, t in tensors.items()}

                def step():
                    entry.keys = self.body(n_cells, {**entry.inputs, **weights})
                n_acc = len(self.sums)
                entry.replay = self._capture(step)
                if len(self.sums) != n_acc:  # created in the graph, it would be zeroed at every replay
                    raise RuntimeError("a loss term first appeared during a CUDA graph capture; its warm-up "
                                       "steps must produce the same terms")
                self.captures += 1
            else:
                for k, t in tensors.items():
                    entry.inputs[k].copy_(t, non_blocking=True)
            entry.replay()  # capture only records: the step runs here, every time
        entry.seen += 1
        self._finish(n_cells, entry.keys)

    def _on_side_stream(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` eagerly on a side stream (the warm-up before a capture, as PyTorch's
        whole-network capture recipe does)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Record ``fn`` as a CUDA graph (without running it); returns its replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay


def finite_or_raise(means: dict[str, float], epoch: int, error: type[Exception]) -> None:
    """Raise ``error`` when the epoch's mean loss is NaN or infinite (the graph-safe step sees
    the loss once per epoch, not after every step)."""
    loss = means.get("loss", 0.0)
    if not math.isfinite(loss):
        raise error(f"the loss became {loss} in epoch {epoch + 1}; lower the learning rate (lr) or "
                    "check the input for extreme values.")


__all__ = ["CUDAGraphStep", "StaticStep", "check_graph_safe", "finite_or_raise"]
