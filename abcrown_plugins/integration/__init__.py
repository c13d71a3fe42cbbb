"""Deprecated name of :mod:`abcrown_plugins.abcrown` (the α,β-CROWN adapter).

α,β-CROWN configs written for earlier versions name the hooks
``Customized("abcrown_plugins.integration.hooks", ...)`` and
``Customized("abcrown_plugins.integration.smoothing", ...)``; those two modules
still resolve, with a ``DeprecationWarning``. Write ``abcrown_plugins.abcrown``.
"""

import warnings

warnings.warn("abcrown_plugins.integration is now abcrown_plugins.abcrown; update the Customized(...) module names "
              "in your α,β-CROWN config", DeprecationWarning, stacklevel=2)
