#!/usr/bin/env python3
"""Regenerate this benchmark's VNNLIB properties and instances.csv.

    python generate_properties.py SEED

The seed picks which test images become instances (a seeded permutation of the
test split, misclassified images skipped). Needs the abcrown_plugins package
(pip install abcrown-plugins, see its README) and the data set named in
benchmark.json.
"""

import sys
from pathlib import Path

from abcrown_plugins.export.benchmark import generate_properties_main

if __name__ == "__main__":
    sys.exit(generate_properties_main(Path(__file__).resolve().parent, sys.argv[1:]))
