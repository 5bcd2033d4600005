"""Loss-weight schedules: declarative objects the training plan evaluates once per epoch.

A model states its loss weights as a ``{name: schedule}`` mapping (e.g. scETM's KL warm-up,
scETM+adv's adversary ramp, scE2TM's ECR weight); the plan passes ``name=schedule(epoch,
max_epochs)`` to the module's forward pass for every step of that epoch. Schedules are plain
frozen dataclasses: they compare, print and serialise (:meth:`Schedule.describe`) as what
they are, unlike closures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Schedule:
    """Base class: a weight as a function of the epoch (0-based) and the run's length."""

    def __call__(self, epoch: int, max_epochs: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-able description (the class name and its fields)."""
        return {"schedule": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class Constant(Schedule):
    """The same weight in every epoch."""

    value: float

    def __call__(self, epoch: int, max_epochs: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Ramp(Schedule):
    """0 until ``start * max_epochs``, then linear up to ``top`` over ``length * max_epochs``
    epochs, then ``top``.

    Parameters
    ----------
    top
        The final weight.
    start
        Fraction of the run before the ramp begins (0: from the first epoch).
    length
        Fraction of the run the ramp lasts (0: a step to ``top`` just after ``start``).

    Examples
    --------
    scETM's KL warm-up over the first third of training is ``Ramp(1e-7, 0.0, 1 / 3)``; the
    adversary of scETM+adv, silent for a sixth and ramped over the next third, is
    ``Ramp(0.005, 1 / 6, 1 / 3)``.
    """

    top: float
    start: float = 0.0
    length: float = 0.0

    def __call__(self, epoch: int, max_epochs: int) -> float:
        e0, span = self.start * max_epochs, max(self.length * max_epochs, 1e-9)
        return float(self.top * min(1.0, max(0.0, (epoch - e0) / span)))


def warmup(top: float, fraction: float, delay: float = 0.0) -> Schedule:
    """0 for the first ``delay`` of training, then a linear warm-up to ``top`` over the next
    ``fraction`` (both 0: ``top`` throughout)."""
    return Ramp(top, delay, fraction) if fraction > 0 or delay > 0 else Constant(top)


__all__ = ["Constant", "Ramp", "Schedule", "warmup"]
