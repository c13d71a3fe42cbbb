"""The α,β-CROWN adapter: ``Customized(...)`` hooks, the external-tool locator, the VNN-COMP runner.

Only this sub-package reads α,β-CROWN's global config (``arguments.Config``),
and only inside the hooks α,β-CROWN calls; everything else takes the project's
own types. Hooks are reached as ``Customized("abcrown_plugins.abcrown.hooks", ...)``.
"""
