"""Verification of trained networks: clean and verified accuracy, stability."""

from abcrown_plugins.verification.evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
