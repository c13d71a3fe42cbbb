"""Schedules that depend only on (epoch, step), so a resumed run reproduces them exactly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpsSchedule:
    """eps = 0 for ``warmup_epochs``, then a ramp to ``eps`` over ``ramp_epochs``, then ``eps``.

    ``shape="linear"`` ramps linearly; ``"smooth"`` grows polynomially (t^4) over
    the first quarter of the ramp and linearly after it with a matching slope,
    in the spirit of Shi et al. (2021)'s exponential-then-linear warm-up.
    """

    eps: float
    warmup_epochs: int
    ramp_epochs: int
    steps_per_epoch: int
    shape: str = "smooth"

    def __call__(self, epoch: int, step: int) -> float:
        t = (epoch - self.warmup_epochs) * self.steps_per_epoch + step + 1
        ramp = self.ramp_epochs * self.steps_per_epoch
        if t <= 0:
            return 0.0
        if t >= ramp:
            return self.eps
        return self.eps * ramp_fraction(t / ramp, self.shape)


def ramp_fraction(t: float, shape: str, knee: float = 0.25, power: int = 4) -> float:
    """Monotone map of [0,1] onto [0,1]."""
    if shape == "linear":
        return t
    a = 1.0 / (knee ** power + power * knee ** (power - 1) * (1 - knee))
    if t <= knee:
        return a * t ** power
    return a * (knee ** power + power * knee ** (power - 1) * (t - knee))


def lr_at(epoch: int, base_lr: float, milestones: tuple[int, ...], decay: float) -> float:
    """Step decay: ``base_lr * decay ** (number of milestones <= epoch)``."""
    return base_lr * decay ** sum(1 for m in milestones if epoch >= m)
