"""Adversarial attacks: FGSM with GradAlign (training) and PGD (evaluation), L-inf, [0,1] pixels."""

from abcrown_plugins.attacks.fgsm import fgsm_gradalign_loss, fgsm_perturb, grad_align
from abcrown_plugins.attacks.pgd import PGDResult, pgd_accuracy, pgd_attack

__all__ = ["PGDResult", "fgsm_gradalign_loss", "fgsm_perturb", "grad_align", "pgd_accuracy", "pgd_attack"]
