"""Commands of the pruning toolkit: ``methods`` lists the pruning methods with one line each."""

from __future__ import annotations

from abcrown_plugins.pruning import ALIASES, CRITERIA, METHODS
from abcrown_plugins.regularizers import REGULARIZERS
from abcrown_plugins.training import TRAINING_METHODS


def _cmd_methods(args) -> int:
    width = max(len(n) for n in METHODS)
    print("pruning methods (pruning.method):")
    for name, m in METHODS.items():
        print(f"  {name:<{width}}  {m.description}")
    for alias, target in ALIASES.items():
        print(f"  {alias:<{width}}  alias of {target}")
    if args.all:
        print("importance criteria:")
        for name, c in CRITERIA.items():
            print(f"  {name:<{width}}  [{c.unit}] {c.description}")
        print("regularisers:")
        for name, (_, desc) in REGULARIZERS.items():
            print(f"  {name:<{width}}  {desc}")
        print("training methods (training.method):")
        for name, desc in TRAINING_METHODS.items():
            print(f"  {name:<{width}}  {desc}")
    return 0
