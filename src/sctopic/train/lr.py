"""Learning-rate schedules stepped after every optimiser step: cosine with warm-up, one-cycle.

The classic schedules stay where they were (:class:`~sctopic.train.trainer.Trainer`): scE2TM's
halving every ``lr_step_epochs`` (``"step"``) and scETM's ``exp(-lr_decay)`` per step
(``"exponential"``). This module adds two schedules over the whole run, both per optimiser
step, so they need the run's number of steps (:func:`sctopic.data.loader.count_batches`
times the epochs):

* ``"cosine"``: linear warm-up over the first ``warmup`` fraction of the steps, then a
  cosine decay from ``lr`` to ``floor * lr`` (:func:`cosine_factor`, through
  :class:`torch.optim.lr_scheduler.LambdaLR`);
* ``"onecycle"``: :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine annealing from
  ``lr / 25`` up to ``lr`` over the first ``warmup`` fraction, then down to
  ``lr / 2.5e5``), with the first moment cycled between 0.95 and 0.85 for Adam/AdamW (the
  one-cycle policy) but not for RMSprop, whose recipes run without momentum (cycling it
  would change the optimiser, not only its rate).

Both are plain torch schedulers: their ``state_dict`` holds numbers only, so checkpoints keep
them and a resumed run continues on the same curve, bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sctopic.errors import InputError

#: Every schedule name a model's ``train(lr_schedule=...)`` may accept (each model states which).
LR_SCHEDULES = ("step", "exponential", "constant", "cosine", "onecycle")
#: The schedules this module builds (the others are the Trainer's classic ones).
STEP_SCHEDULES = ("cosine", "onecycle")
#: ``lr_warmup=None``: each schedule's customary warm-up fraction (cosine: a short linear
#: warm-up; one-cycle: PyTorch's and fastai's default ``pct_start``).
DEFAULT_WARMUP = {"cosine": 0.05, "onecycle": 0.25}
#: one-cycle's start (``lr / DIV``) and end (``lr / (DIV * FINAL_DIV)``), PyTorch's defaults
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4


def check_lr_schedule(name: str | None, allowed: Sequence[str], model: str) -> None:
    """Refuse a schedule name ``model`` does not offer, listing those it does.

    Raises
    ------
    InputError
        ``name`` is not None and not in ``allowed``.
    """
    if name is not None and (not isinstance(name, str) or name not in allowed):
        raise InputError(f"lr_schedule must be None (the model's own) or one of {tuple(allowed)} for "
                         f"{model}, got {name!r}.")


def resolve_warmup(schedule: str, warmup: float | None) -> float:
    """The warm-up fraction of ``schedule`` (``None``: :data:`DEFAULT_WARMUP`)."""
    return DEFAULT_WARMUP[schedule] if warmup is None else float(warmup)


def check_schedule_args(schedule: str | None, warmup: float | None, floor: float) -> None:
    """Validate a per-step schedule's settings (see :func:`make_step_scheduler`).

    Raises
    ------
    InputError
        An unknown per-step schedule, a warm-up fraction outside [0, 1) (one-cycle: (0, 1)),
        or a floor outside [0, 1].
    """
    if schedule is None:
        return
    if schedule not in STEP_SCHEDULES:
        raise InputError(f"unknown learning-rate schedule {schedule!r}; the per-step schedules are "
                         f"{STEP_SCHEDULES} (and 'step', 'exponential', 'constant' through the model).")
    w = resolve_warmup(schedule, warmup)
    low_ok = w > 0 if schedule == "onecycle" else w >= 0
    if isinstance(warmup, bool) or not (math.isfinite(w) and low_ok and w < 1):
        bound = "(0, 1)" if schedule == "onecycle" else "[0, 1)"
        raise InputError(f"lr_warmup must be a fraction of the steps in {bound} for lr_schedule="
                         f"{schedule!r}, got {warmup!r}.")
    if isinstance(floor, bool) or not (isinstance(floor, (int, float)) and math.isfinite(floor)
                                       and 0 <= floor <= 1):
        raise InputError(f"lr_floor must be a fraction of lr in [0, 1], got {floor!r}.")


def cosine_factor(step: int, total_steps: int, warmup: float, floor: float) -> float:
    """Multiplier of the base rate for optimiser step ``step`` (0-based) of ``total_steps``.

    ``n_w = round(warmup * total_steps)`` warm-up steps rise linearly, ``(step + 1) / n_w``
    (the first step already moves); then ``floor + (1 - floor) (1 + cos(pi t)) / 2`` with
    ``t = (step - n_w) / (total_steps - n_w)``, clamped to 1, so the rate after the last step
    (and on any step past the planned count) is ``floor``.
    """
    n_w = int(round(warmup * total_steps))
    if step < n_w:
        return (step + 1) / n_w
    t = min(1.0, (step - n_w) / max(1, total_steps - n_w))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class _CosineLambda:
    """``step -> cosine_factor(step, ...)``. A callable object rather than a closure: LambdaLR's
    ``state_dict`` then records its three numbers, so a checkpoint states the curve it was on."""

    def __init__(self, total_steps: int, warmup: float, floor: float):
        self.total_steps, self.warmup, self.floor = int(total_steps), float(warmup), float(floor)

    def __call__(self, step: int) -> float:
        return cosine_factor(step, self.total_steps, self.warmup, self.floor)


class _ClampedOneCycle(torch.optim.lr_scheduler.OneCycleLR):
    """OneCycleLR that holds the rate of its last planned step (``lr / 2.5e5``) afterwards.

    Torch's own extrapolates one step past the curve's end (its rate after the last step is
    the cosine continued beyond its minimum) and raises on the step after; the planned step
    count is exact in memory but an estimate out of core (a pool can change an epoch's count
    by one), so a run may take a step or two more than planned.
    """

    def step(self, epoch=None):  # noqa: D401 - torch's signature
        if self.last_epoch >= self.total_steps - 1:
            return
        super().step(epoch)


def make_step_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                        warmup: float | None, floor: float,
                        cycle_momentum: bool) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of a per-step ``schedule``, to be stepped after every optimiser step.

    Parameters
    ----------
    optimizer
        The optimiser; its ``lr`` is the peak rate.
    schedule
        ``"cosine"`` or ``"onecycle"`` (see the module docstring).
    total_steps
        Optimiser steps in the whole run (>= 1).
    warmup
        Fraction of the steps spent warming up (``None``: :data:`DEFAULT_WARMUP`).
    floor
        ``"cosine"``: the final rate as a fraction of ``lr`` (one-cycle has its own end,
        ``lr / 2.5e5``).
    cycle_momentum
        ``"onecycle"``: cycle Adam's first moment (see the module docstring).
    """
    check_schedule_args(schedule, warmup, floor)
    total_steps = max(1, int(total_steps))
    w = resolve_warmup(schedule, warmup)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _CosineLambda(total_steps, w, floor))
    lr = float(optimizer.param_groups[0]["lr"])  # a number, also when it is a device tensor (CUDA graphs)
    return _ClampedOneCycle(optimizer, max_lr=lr, total_steps=total_steps, pct_start=w,
                            anneal_strategy="cos", div_factor=ONECYCLE_DIV,
                            final_div_factor=ONECYCLE_FINAL_DIV, cycle_momentum=cycle_momentum)


__all__ = ["DEFAULT_WARMUP", "LR_SCHEDULES", "STEP_SCHEDULES", "check_lr_schedule", "check_schedule_args",
           "cosine_factor", "make_step_scheduler", "resolve_warmup"]
