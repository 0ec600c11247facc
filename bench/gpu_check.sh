#!/usr/bin/env bash
# The GPU checks of issue 2 in one script, for a CUDA machine whose python3 already has torch and
# numpy (the estimator needs nothing else):
#
#     bash bench/gpu_check.sh [OUTPUT_DIR]        # default bench/out/gpu
#
# 1. the estimator tests on the GPU: tests/estimator/test_cuda.py, plus the API and fast-validation
#    tests, whose default device "auto" means CUDA there;
# 2. bench/speed.py --device cuda: bare steps vs lambdahat for the MLP and the CNN of the issue, and
#    1 vs 8 vmapped MLP chains (devinterp is left out: its venvs are CPU builds made by
#    bench/setup_devinterp.sh);
# 3. the same with 10x the draws, where per-call fixed costs no longer dominate.
# Each part has its own time limit so that one slow part cannot starve the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD PYTHONDONTWRITEBYTECODE=1
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$python -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"

timeout 120 $python -m pytest -q -p no:cacheprovider -p no:logging tests/estimator/test_cuda.py \
    2>&1 | tee "$out/pytest_cuda.log"
timeout 180 $python bench/speed.py --device cuda --contenders bare,lambdahat --repeats 3 \
    --work-dir /tmp/lambdahat-speed --json-out "$out/speed_cuda.json" 2>&1 | tee "$out/speed_cuda.log"
timeout 100 $python bench/speed.py --device cuda --contenders bare,lambdahat --repeats 1 \
    --mlp-draws 2000 --cnn-draws 500 --work-dir /tmp/lambdahat-speed \
    --json-out "$out/speed_cuda_long.json" 2>&1 | tee "$out/speed_cuda_long.log"
timeout 200 $python -m pytest -q -p no:cacheprovider -p no:logging tests/estimator/test_api.py \
    tests/estimator/test_validation.py 2>&1 | tee "$out/pytest_auto_cuda.log"
