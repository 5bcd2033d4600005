"""Early stopping on held-out cells.

With ``train(early_stopping=True)`` the training plan (:func:`sctopic.train.plan.run_plan`)
holds a seeded random fraction of the cells out of training (:func:`split_cells`): they are
never an anchor nor a sampled neighbour of a minibatch, and SCE2TM's neighbour graphs are
built without them. Every ``check_every`` epochs, and after the last one, the module's
reconstruction term on the held-out cells is measured (:class:`HeldOutCells`: evaluation
mode, so no depth thinning, dropout or reparameterisation noise, and batch norm with its
running statistics) and recorded in the history as ``heldout_reconstruction``. It is the mean
per-cell negative log-likelihood in the units of the training ``reconstruction`` column
(scE2TM: the multinomial NLL of the raw counts, summed over genes; scETM with
``normed_loss``: that of the library-normalised counts), not normalised per count.

Training stops once ``patience`` checks in a row have not improved on the best value by more
than ``min_delta`` (relative: ``value < best * (1 - min_delta)`` counts as an improvement, so
one setting fits models and data whose NLL scales differ by orders of magnitude). The
weights, buffers included, of the best check are then restored (:class:`EarlyStopper`).

Only checks after the loss weights have reached their final values (and one epoch has been
trained at them) count: before, the objective itself is still changing (scE2TM's ECR joins
half-way and ramps up, scETM's KL weight warms up), its reconstruction is expected to rise
when a regulariser joins, and stopping there would restore a model trained without it. Those
earlier checks are recorded in the history all the same (``counted_from_epoch`` in the
summary says where counting starts).

The check runs in full precision (no autocast), on the module itself (not a compiled
wrapper). Distributed training is refused with it.

The stopper's state (best value and epoch, checks without improvement, the stopping epoch
and the best weights) travels in the checkpoint with the trainer's, so a resumed run checks
at the same epochs, stops at the same epoch and restores the same weights as an
uninterrupted one. Evaluating draws no random numbers and changes no buffer, so it leaves
the training trajectory itself untouched.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sctopic.errors import InputError

#: Fewest held-out cells (a mean over fewer is noise) for early stopping.
MIN_HELDOUT_CELLS = 10
#: Largest held-out fraction (beyond it, more cells are checked than trained on).
MAX_VALIDATION_FRACTION = 0.5
#: Mixed into the split's seed so that the split does not share a stream with other draws.
_SPLIT_STREAM = 0x5C7091C


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class EarlyStopping:
    """Settings of early stopping on held-out cells (see the module docstring).

    Parameters
    ----------
    validation_fraction
        Fraction of the cells held out, in (0, 0.5].
    check_every
        Measure the held-out reconstruction every this many epochs (and after the last).
    patience
        Stop after this many checks in a row without improvement (>= 1).
    min_delta
        Smallest relative improvement of the best value that counts (>= 0).
    """

    validation_fraction: float = 0.1
    check_every: int = 5
    patience: int = 3
    min_delta: float = 1e-3

    def check(self) -> None:
        """Raise :class:`~sctopic.errors.InputError` for a setting out of range."""
        f = self.validation_fraction
        if isinstance(f, bool) or not (isinstance(f, numbers.Real) and math.isfinite(f)
                                       and 0 < f <= MAX_VALIDATION_FRACTION):
            raise InputError(f"validation_fraction must be in (0, {MAX_VALIDATION_FRACTION}], got {f!r}.")
        if not _is_int(self.check_every) or self.check_every < 1:
            raise InputError(f"check_every must be a whole number of epochs >= 1, got {self.check_every!r}.")
        if not _is_int(self.patience) or self.patience < 1:
            raise InputError(f"patience must be a whole number of checks >= 1, got {self.patience!r}.")
        d = self.min_delta
        if isinstance(d, bool) or not (isinstance(d, numbers.Real) and math.isfinite(d) and d >= 0):
            raise InputError(f"min_delta must be a relative improvement >= 0, got {d!r}.")

    def describe(self) -> dict[str, Any]:
        """The settings as plain JSON types."""
        d = asdict(self)
        return {"validation_fraction": float(d["validation_fraction"]), "check_every": int(d["check_every"]),
                "patience": int(d["patience"]), "min_delta": float(d["min_delta"])}


def split_cells(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)``: increasing positions of ``n`` cells, a seeded random ``fraction``
    (rounded) held out.

    The draw uses its own numpy generator, seeded from ``seed``, so it consumes nothing from
    the generators training draws from.

    Raises
    ------
    InputError
        Fewer than :data:`MIN_HELDOUT_CELLS` cells would be held out.
    """
    n_held = int(round(float(fraction) * n))
    if n_held < MIN_HELDOUT_CELLS:
        raise InputError(
            f"validation_fraction={fraction} of {n} cells holds out {n_held} cells; early stopping needs "
            f"at least {MIN_HELDOUT_CELLS} held-out cells (and as many left to train on). Raise "
            f"validation_fraction (at most {MAX_VALIDATION_FRACTION}), or train without early_stopping.")
    rng = np.random.default_rng([int(seed) % (1 << 63), _SPLIT_STREAM])
    held = np.sort(rng.choice(n, n_held, replace=False)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep).astype(np.int64), held


class HeldOutCells:
    """The held-out cells on the device, and their mean reconstruction NLL under a module.

    Parameters
    ----------
    X
        Held-out cells x genes: scipy CSR (kept on ``device`` as CSR arrays) or a
        ``BackedCounts`` view (read in blocks at each check, so memory stays constant).
    codes
        Batch index of every held-out cell (for batch intercepts), or None.
    views
        Per-cell inputs of the encoder besides the counts, one row per held-out cell (e.g.
        ``{"v": external view}`` for SCE2TM's ``external_concat``); passed by name.
    device
        Where to compute.
    chunk
        Cells per evaluation pass.
    """

    def __init__(self, X: Any, codes: np.ndarray | None, views: dict[str, np.ndarray] | None,
                 device: torch.device, chunk: int = 4096):
        from sctopic.data.loader import RowStore
        from sctopic.train.data import is_backed

        self.X, self.device, self.chunk = X, torch.device(device), int(chunk)
        self.n = int(X.shape[0])
        self.backed = is_backed(X)
        self.store = None if self.backed else RowStore(X, self.device, storage="csr")
        self.codes = None if codes is None else torch.as_tensor(np.asarray(codes), device=self.device)
        self.views = {k: torch.as_tensor(np.asarray(v), device=self.device) for k, v in (views or {}).items()}

    def _chunks(self):
        """``(i0, i1, counts)`` over the held-out cells in order (sparse CSR tensors)."""
        if self.backed:
            from sctopic.data.backed import to_torch

            for i0, i1, B in self.X.iter_blocks(self.chunk):
                yield i0, i1, to_torch(B, "csr", self.device)
        else:
            for i0 in range(0, self.n, self.chunk):
                i1 = min(i0 + self.chunk, self.n)
                idx = torch.arange(i0, i1, device=self.device)
                yield i0, i1, self.store.rows_csr(idx)

    @torch.no_grad()
    def reconstruction(self, module: torch.nn.Module) -> float:
        """Mean per-cell reconstruction NLL of the held-out cells under ``module`` in
        evaluation mode (its training mode is restored afterwards).

        ``module`` must implement ``reconstruction_nll(x, batch=None, **views)`` (see
        :meth:`sctopic.nn.base.TopicModule.reconstruction_nll`).
        """
        if not hasattr(module, "reconstruction_nll"):
            raise InputError(f"early stopping needs the module's reconstruction_nll(); "
                             f"{type(module).__name__} has none.")
        was_training = module.training
        module.eval()
        total = 0.0
        try:
            for i0, i1, x in self._chunks():
                batch = None if self.codes is None else self.codes[i0:i1]
                views = {k: v[i0:i1] for k, v in self.views.items()}
                total += float(module.reconstruction_nll(x, batch=batch, **views).double().sum())
        finally:
            module.train(was_training)
        return total / max(self.n, 1)


class EarlyStopper:
    """Checks the held-out reconstruction after epochs and decides when to stop.

    Called by :meth:`sctopic.train.trainer.Trainer.fit` after each epoch with the number of
    epochs done; it measures on the check epochs (every ``check_every``-th and the last),
    keeps a copy of the best check's weights and buffers, and sets :attr:`stopped_epoch`.

    Parameters
    ----------
    config
        The settings.
    heldout
        The held-out cells.
    module
        The module being trained (not a DDP or compiled wrapper).
    max_epochs
        The run's planned epochs (the last one is always checked).
    counted_from
        The first check that counts is the one after this many epochs or more (1: every
        check; see the module docstring). At most ``max_epochs``, so the last check counts.
    """

    def __init__(self, config: EarlyStopping, heldout: HeldOutCells, module: torch.nn.Module,
                 max_epochs: int, counted_from: int = 1):
        self.config, self.heldout, self.module = config, heldout, module
        self.max_epochs = int(max_epochs)
        self.counted_from = min(max(1, int(counted_from)), self.max_epochs)
        self.best = math.inf
        self.best_epoch = 0
        self.bad_checks = 0
        #: the epoch training stopped after (0: it has not stopped)
        self.stopped_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def stopped(self) -> bool:
        """Whether the stopping rule has fired."""
        return self.stopped_epoch > 0

    def due(self, epoch: int) -> bool:
        """Whether the held-out cells are checked after ``epoch`` (1-based) epochs."""
        return epoch % self.config.check_every == 0 or epoch >= self.max_epochs

    def __call__(self, epoch: int) -> float:
        """After ``epoch`` epochs: the held-out reconstruction (NaN when no check is due)."""
        if not self.due(epoch):
            return math.nan
        value = self.heldout.reconstruction(self.module)
        if epoch < self.counted_from:  # the objective is still changing: recorded, not compared
            return value
        if math.isfinite(value) and (self.best_epoch == 0 or value < self.best * (1.0 - self.config.min_delta)):
            self.best, self.best_epoch, self.bad_checks = value, int(epoch), 0
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        else:
            self.bad_checks += 1
            if self.bad_checks >= self.config.patience:
                self.stopped_epoch = int(epoch)
        return value

    def restore_best(self) -> bool:
        """Load the best check's weights and buffers into the module; False without a check."""
        if self.best_state is None:
            return False
        self.module.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The stopping state as plain numbers and CPU tensors (for checkpoints)."""
        return {"best": float(self.best), "best_epoch": int(self.best_epoch), "bad_checks": int(self.bad_checks),
                "stopped_epoch": int(self.stopped_epoch),
                "best_state": {} if self.best_state is None else
                {k: v.detach().cpu() for k, v in self.best_state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_checks = int(state["bad_checks"])
        self.stopped_epoch = int(state["stopped_epoch"])
        best = state.get("best_state") or {}
        self.best_state = dict(best) if best else None

    def summary(self, epochs_trained: int) -> dict[str, Any]:
        """What ``train.json`` and the model file record: settings, held-out cell count,
        ``stopped_epoch`` (the last epoch trained, ``epochs_trained``), ``stopped_early``,
        ``best_epoch`` and its ``best_heldout_reconstruction``, and ``restored_best`` (the
        weights kept are the best check's)."""
        return {**self.config.describe(), "n_heldout_cells": int(self.heldout.n),
                "counted_from_epoch": self.counted_from,
                "stopped_epoch": int(epochs_trained), "stopped_early": self.stopped,
                "best_epoch": int(self.best_epoch),
                "best_heldout_reconstruction": float(self.best) if self.best_epoch else None,
                "restored_best": self.best_state is not None,
                "heldout_metric": "mean per-cell reconstruction NLL (the training 'reconstruction' term, "
                                  "evaluation mode)"}


__all__ = ["EarlyStopper", "EarlyStopping", "HeldOutCells", "MAX_VALIDATION_FRACTION", "MIN_HELDOUT_CELLS",
           "split_cells"]
