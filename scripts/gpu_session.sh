#!/usr/bin/env bash
# Everything a short turn on a GPU machine should run, in one go, its results in OUT (default
# gpu-out/): the tests that only run on a GPU, then loadtests/gpu_check.py with the py-spy records
# of the model process, the gateway with several workers and with smaller batches beside it.
#
#   scripts/gpu_wheels.sh                  # here, once: the gateway's dependencies as wheels in .whl/
#   scripts/gpu_session.sh "$OUT"          # there, with .whl carried along (about 4-5 minutes)
#
# Where .whl/ holds wheels they are installed into /tmp/site first (the lent GPU machines have
# torch and transformers but not FastAPI and the rest, and cannot reach a registry). Arguments
# after OUT go to gpu_check.py in place of the defaults below (see loadtests/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-out}
shift || true
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1  # at most 8 files come back
timeout 180 python3 -m pytest -q -p no:randomly -p no:cacheprovider -W default \
    tests/serving/runtime/test_fast_images.py tests/serving/runtime/test_device_jpeg.py \
    tests/serving/test_devices.py > "$OUT/gpu-tests.txt" 2>&1
echo "GPU tests: $(tail -1 "$OUT/gpu-tests.txt")"
workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))  # the model process and the load generator keep a core each
if [ "$#" -eq 0 ]; then
    set -- --workers "1,$workers" --also-max-batch-size 64 --concurrency 64,256 --duration 8
fi
timeout 480 python3 loadtests/gpu_check.py "$@" --profile-dir "$OUT/spy" --json "$OUT/gpu.json" \
    > "$OUT/gpu.log" 2>&1
status=$?
grep -E "^(device|precision|nvJPEG|forward|  maas|  model process|  litserve)" "$OUT/gpu.log" | cut -c1-400
python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['summary'], indent=1))" \
    "$OUT/gpu.json" 2>/dev/null
echo "gpu_check exit status: $status"
exit "$status"
