"""Training objectives, one per ``training.method``; each returns the loss and the bounds it computed.

An objective is called per batch as ``objective(model, x, y, eps_t) -> StepOutput``
(``eps_t`` is the scheduled radius in [0,1] pixel units). ``StepOutput.bounds`` holds the
per-ReLU pre-activation bounds the objective computed on the way (IBP: the
:class:`IBPResult`; CROWN-IBP: auto_LiRPA's intermediate bounds as :class:`ReluBounds`),
so a stability regulariser reuses them instead of propagating again; None when the
objective computed none (standard, FGSM, or ``eps_t == 0``).

* ``standard``: cross-entropy;
* ``fgsm``: FGSM+GradAlign (Andriushchenko & Flammarion 2020), see :mod:`abcrown_plugins.attacks.fgsm`;
* ``ibp``: ``(1 - w) CE + w CE(IBP worst-case logits)``, ``w = robust_weight * eps_t / eps``;
* ``crown-ibp``: the same with the lower bound ``k * CROWN-IBP + (1 - k) * IBP``,
  ``k = 1 - eps_t / eps`` (auto_LiRPA's training recipe: CROWN-IBP early, IBP at the
  full radius); needs auto_LiRPA and raises a :class:`UserError` saying how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from abcrown_plugins.attacks.fgsm import fgsm_gradalign_loss
from abcrown_plugins.bounds import CleanBatchStats, IBPResult, ReluBounds, input_box, margin_spec
from abcrown_plugins.bounds.lirpa import INSTALL_HINT, lirpa_available
from abcrown_plugins.errors import UserError
from abcrown_plugins.training.losses import ibp_loss, robust_logits

TRAINING_METHODS = {
    "standard": "cross-entropy on clean inputs",
    "fgsm": "FGSM+GradAlign adversarial training (Andriushchenko & Flammarion 2020)",
    "ibp": "IBP certified training (Gowal et al. 2018; Shi et al. 2021 warm-up)",
    "crown-ibp": "CROWN-IBP certified training through auto_LiRPA (Zhang et al. 2020)",
}


@dataclass
class StepOutput:
    loss: Tensor
    logits: Tensor                                   # clean (or adversarial, fgsm) logits, for accuracy
    bounds: IBPResult | list[ReluBounds] | None = None


def standard_objective(model: nn.Module, x: Tensor, y: Tensor, eps_t: float) -> StepOutput:
    logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), logits)


@dataclass
class IBPObjective:
    """``(1 - w) CE + w CE(IBP worst-case logits)``.

    ``bn_stats``: what a train-mode BatchNorm normalises the bounds with: ``clean``, the
    statistics of the clean forward pass of the same batch (auto_LiRPA's default, and the
    ones the running averages, so eval mode, are made of) or ``centre``, those of the box
    centre at that layer.
    """

    eps: float
    robust_weight: float
    num_classes: int
    bn_stats: str = "centre"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps_t: float) -> StepOutput:
        if self.bn_stats == "clean" and eps_t > 0:
            with CleanBatchStats(model) as recorded:
                logits = model(x)
            stats = recorded.stats
        else:
            logits, stats = model(x), None
        loss = F.cross_entropy(logits, y)
        if eps_t <= 0:
            return StepOutput(loss, logits)
        robust, res = ibp_loss(model, x, y, eps_t, self.num_classes, bn_stats=stats)
        w = self.robust_weight * eps_t / self.eps
        return StepOutput((1 - w) * loss + w * robust, logits, res)


@dataclass
class FGSMObjective:
    alpha: float            # in units of eps_t
    init: str
    grad_align: float

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps_t: float) -> StepOutput:
        loss, logits = fgsm_gradalign_loss(model, x, y, eps_t, self.alpha * eps_t, self.init, self.grad_align)
        return StepOutput(loss, logits)


class CrownIBPObjective:
    """CROWN-IBP through auto_LiRPA; the bounded graph shares the model's parameters and buffers.

    The ``BoundedModule`` is built on the first batch; its parameter and buffer nodes are
    re-pointed at the model's own tensors, so the optimiser, masks and checkpoints keep
    working on ``model`` unchanged.
    """

    def __init__(self, eps: float, robust_weight: float, num_classes: int):
        if not lirpa_available():
            raise UserError(f"training.method crown-ibp needs auto_LiRPA: {INSTALL_HINT}")
        self.eps, self.robust_weight, self.num_classes = eps, robust_weight, num_classes
        self.bounded = None
        self._model_id = None

    def _build(self, model: nn.Module, x: Tensor) -> None:
        from auto_LiRPA import BoundedModule
        from auto_LiRPA.operators import BoundBuffers, BoundParams

        was_training = model.training
        snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        bounded = BoundedModule(model, torch.zeros_like(x[:1]), device=x.device, bound_opts={"verbosity": 0})
        model.load_state_dict(snapshot)  # tracing ran a forward pass; undo its running-stat update
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        for node in bounded.nodes():
            if isinstance(node, BoundParams) and node.ori_name in params:
                node.register_parameter("param", params[node.ori_name])
            elif isinstance(node, BoundBuffers) and node.ori_name in buffers:
                node._buffers["buffer"] = buffers[node.ori_name]
        bounded.train(was_training)
        self.bounded, self._model_id = bounded, id(model)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, eps_t: float) -> StepOutput:
        if self.bounded is None or self._model_id != id(model):
            self._build(model, x)
        from auto_LiRPA import BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm

        b = self.bounded
        b.train(model.training)
        if eps_t <= 0:
            logits = b(x)
            return StepOutput(F.cross_entropy(logits, y), logits)
        lower, upper = input_box(x, eps_t)
        bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
        logits = b(bx)
        spec = margin_spec(y, self.num_classes)
        ilb, _ = b.compute_bounds(x=(bx,), C=spec, method="IBP", bound_upper=False)
        relus = self._relu_bounds(model)
        k = 1.0 - eps_t / self.eps
        lb = ilb
        if k > 1e-5:
            clb, _ = b.compute_bounds(x=(bx,), C=spec, method="CROWN-IBP", bound_upper=False)
            lb = k * clb + (1 - k) * ilb
        robust = F.cross_entropy(robust_logits(lb), torch.zeros_like(y))
        w = self.robust_weight * eps_t / self.eps
        loss = (1 - w) * F.cross_entropy(logits, y) + w * robust
        return StepOutput(loss, logits, relus)

    def _relu_bounds(self, model: nn.Module) -> list[ReluBounds]:
        """Pre-activation (and pre-BN) IBP bounds of every ReLU, from the last bound computation."""
        from auto_LiRPA.operators import BoundBatchNormalization, BoundRelu

        modules = dict(model.named_modules())
        out: list[ReluBounds] = []
        for node in self.bounded.nodes():
            if not isinstance(node, BoundRelu):
                continue
            pre = node.inputs[0]
            rb = ReluBounds(node.name, pre.lower, pre.upper)
            if isinstance(pre, BoundBatchNormalization):
                gamma_name = pre.inputs[1].ori_name  # "<bn module>.weight"
                rb.bn = modules.get(gamma_name.rsplit(".", 1)[0])
                rb.set_pre_bn_box(pre.inputs[0].lower, pre.inputs[0].upper)
                rb.bn_mean, rb.bn_var = pre.current_mean, pre.current_var
            out.append(rb)
        return out


def make_objective(settings, num_classes: int) -> Callable[[nn.Module, Tensor, Tensor, float], StepOutput]:
    """The objective of ``settings.method`` (a :class:`TrainSettings`)."""
    m = settings.method
    if m == "standard":
        return standard_objective
    if m == "ibp":
        return IBPObjective(settings.eps, settings.robust_weight, num_classes, settings.ibp_bn_stats)
    if m == "fgsm":
        return FGSMObjective(settings.fgsm_alpha, settings.fgsm_init, settings.grad_align)
    if m == "crown-ibp":
        return CrownIBPObjective(settings.eps, settings.robust_weight, num_classes)
    raise UserError(f"unknown training method '{m}' (valid: {', '.join(TRAINING_METHODS)})")
