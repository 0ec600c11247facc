#!/usr/bin/env bash
# Create the two reference-library venvs that bench/speed.py drives in subprocesses:
#   bench/.venvs/devinterp-1.3.2   devinterp==1.3.2  (estimate_learning_coeff_with_summary)
#   bench/.venvs/devinterp-2.0.1   devinterp==2.0.1  (llc)
# Each gets its own venv because the two versions pin different stacks (2.0.1 pulls in transformers,
# datasets, xarray, zarr, pydantic). Both declare torch>=2.0.1, so we install the same CPU build of
# torch (2.13.0) that lambdahat uses FIRST: otherwise pip may resolve a multi-GB CUDA build. Pinning the
# same torch in all three environments also keeps the comparison about the libraries, not the kernels.
# Idempotent: an existing venv whose devinterp import works is left alone. Usage:
#   bash bench/setup_devinterp.sh            # both versions
#   bash bench/setup_devinterp.sh 1.3.2      # one version
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(1.3.2 2.0.1)

for version in "${versions[@]}"; do
  venv=".venvs/devinterp-${version}"
  if [ -x "${venv}/bin/python" ] && "${venv}/bin/python" -c "import devinterp, torch" 2>/dev/null; then
    echo "${venv}: already set up ($("${venv}/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
    continue
  fi
  echo "${venv}: creating"
  rm -rf "${venv}"
  "${PYTHON}" -m venv "${venv}"
  "${venv}/bin/pip" install -q --upgrade pip
  # CPU torch first (a bare requirement could pull a CUDA build); fall back to the CPU index.
  "${venv}/bin/pip" install -q "${TORCH_SPEC}" \
    || "${venv}/bin/pip" install -q "${TORCH_SPEC}" --index-url https://download.pytorch.org/whl/cpu
  "${venv}/bin/pip" install -q "devinterp==${version}"
  # The torch we installed must still be the one in the venv (pip must not have swapped it).
  "${venv}/bin/python" - <<PY
import importlib.metadata as md, torch
print("${venv}: devinterp", md.version("devinterp"), "torch", torch.__version__)
assert md.version("devinterp") == "${version}"
PY
done
