"""abcrown_plugins: pruning, certified training and certification plugins for α,β-CROWN."""

__version__ = "0.1.0"
