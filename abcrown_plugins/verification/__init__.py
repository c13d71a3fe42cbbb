"""Verification of trained networks: clean and verified accuracy, stability."""

from abcrown_plugins.verification.evaluate import EvalResult, evaluate
from abcrown_plugins.verification.memory import PeakMemory

__all__ = ["EvalResult", "PeakMemory", "evaluate"]
