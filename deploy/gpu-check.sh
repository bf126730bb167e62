#!/usr/bin/env bash
# The TensorRT path on a real NVIDIA GPU (a Jetson, or any x86 GPU: the same TensorRT
# API), as one script: the TensorRT contract tests, then edge-device-check --build at
# fp32, fp16 and int8 on the quickstart's engines. Figures go to $OUT (default
# runs/gpu-check): the test log, each precision's device_check.json, and the device.
#
#   bash deploy/gpu-check.sh            # TensorRT, pycuda and a driver must already be there
#
# On a Jetson, TensorRT is JetPack's (python3-libnvinfer); elsewhere `pip install
# tensorrt-cu12` (or -cu13 for 11.x) where pypi.nvidia.com can be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"

python3 -m venv --system-site-packages .venv-gpu   # sees a system TensorRT (JetPack's)
.venv-gpu/bin/pip install -q -e '.[test,vision,device]' pycuda
.venv-gpu/bin/python - <<'PY' | tee "$OUT/device.txt"
from edge.backends.tensorrt_device import device_identity
print("tensorrt %s on %s (compute capability %s)" % device_identity())
PY

.venv-gpu/bin/python -m pytest -q -ra tests/test_backend_contract.py tests/test_tensorrt_logic.py tests/test_tensorrt_api.py \
    2>&1 | tee "$OUT/tests.log"

ENGINES=runs/quickstart/engines
[ -f "$ENGINES/manifest.json" ] || .venv-gpu/bin/edge-quickstart
rm -rf runs/gpu-check-engines
.venv-gpu/bin/edge-device-variants --engines "$ENGINES" --out runs/gpu-check-engines
cp runs/gpu-check-engines/device_variants.json "$OUT/"
status=0
for precision in fp32 fp16 int8; do
    .venv-gpu/bin/edge-device-check --engines runs/gpu-check-engines --build --precision "$precision" \
        2>&1 | tee "$OUT/device-check-$precision.log" || status=1
    cp runs/gpu-check-engines/device_check.json "$OUT/device-check-$precision.json"
done
exit $status
