#!/usr/bin/env bash
# The GPU check, on the nvidia-h200 device machine, in ONE device call (about 8-10 minutes):
#
#   here first:   python3 benchmarks/gpu_e2e/prepare.py      # wheels into .whl/ (git-ignored), size check
#   device call:  carry [".whl"], timeout_s 600,
#                 command: bash benchmarks/gpu_e2e/run.sh
#
# Installs the carried wheels into /tmp/site (the image has torch but no ray/mlflow/optuna/fvcore/pydantic),
# then runs check.py: `dynconv tune` end to end through Ray on the GPU, then the packing measurement.
# Results: $OUT/gpu_e2e.md (report section for docs/benchmarks.md), $OUT/e2e_stdout.txt, $OUT/log.txt.
# Extra arguments go to check.py (e.g. --packings 1,4 --trials 4 to shorten a rerun).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_e2e_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "wheel install failed" | tee "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python3 -c 'import ray, mlflow, optuna, fvcore, pydantic, torch; print("ray", ray.__version__, "mlflow",
mlflow.__version__, "optuna", optuna.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'
  python3 -m pip check 2>&1 | grep -iE "ray|mlflow|optuna|pydantic|protobuf|fvcore" | head -20 || true
  timeout 560 python3 benchmarks/gpu_e2e/check.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/log.txt"
