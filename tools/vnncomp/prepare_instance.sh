#!/usr/bin/env bash
# VNN-COMP tool interface: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Nothing to prepare per instance beyond checking the inputs and α,β-CROWN's location.
set -euo pipefail
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
  echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2; exit 1
fi
[ -f "$3" ] || { echo "ONNX file '$3' not found" >&2; exit 1; }
[ -f "$4" ] || { echo "VNNLIB file '$4' not found" >&2; exit 1; }
[ -f "${ABCROWN_HOME:-}/complete_verifier/abcrown.py" ] || {
  echo "set ABCROWN_HOME to an alpha-beta-CROWN checkout (and ABCROWN_PYTHON to its interpreter)" >&2; exit 1; }
exit 0
