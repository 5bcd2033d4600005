"""Training: the one training plan every model uses, its loop, devices, checkpoints, DDP."""
from sctopic.utils.device import resolve_device
from sctopic.train.early_stopping import EarlyStopping
from sctopic.train.plan import Optimisation, RunOptions, TrainingPlan, TrainingResult, run_plan
from sctopic.train.schedules import Constant, Ramp, Schedule, warmup
from sctopic.train.trainer import Trainer

__all__ = ["Constant", "EarlyStopping", "Optimisation", "Ramp", "RunOptions", "Schedule", "Trainer",
           "TrainingPlan", "TrainingResult", "resolve_device", "run_plan", "warmup"]
