"""Training: the one loop (:mod:`.loop`), :func:`train` on it, objectives, schedules and initialisations."""

from abcrown_plugins.training.init import ibp_init
from abcrown_plugins.training.loop import BatchStep, LoopHook, LoopSettings, run_epochs
from abcrown_plugins.training.losses import ibp_loss, robust_logits
from abcrown_plugins.training.schedule import EpsSchedule, lr_at, ramp_fraction
from abcrown_plugins.training.objectives import TRAINING_METHODS, StepOutput, make_objective
from abcrown_plugins.training.trainer import TrainSettings, backward_step, make_optimizer, train

__all__ = ["BatchStep", "EpsSchedule", "LoopHook", "LoopSettings", "StepOutput", "TRAINING_METHODS", "TrainSettings",
           "backward_step", "make_objective", "ibp_init", "ibp_loss", "lr_at", "make_optimizer", "ramp_fraction",
           "robust_logits", "run_epochs", "train"]
