"""Training loop, devices and progress reporting."""
from sctopic.train.device import resolve_device
from sctopic.train.trainer import Trainer

__all__ = ["Trainer", "resolve_device"]
