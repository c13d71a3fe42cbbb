#!/usr/bin/env bash
# VNN-COMP tool interface: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Runs α,β-CROWN (ABCROWN_HOME, ABCROWN_PYTHON) on one instance with this project's CPU
# settings; the first line of RESULTS_FILE is sat/unsat/timeout/unknown/error, a sat is
# followed by its witness. Needs abcrown-plugins on PATH (pip install -e . in this repo).
set -euo pipefail
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
  echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2; exit 1
fi
exec abcrown-plugins vnncomp run-instance "$3" "$4" "$5" "$6"
