#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (torch there, no plotly):
#   bash scripts/gpu_check.sh OUT_DIR
# Runs the probe's CUDA rows and the runtime on the GPU; writes JSON and logs into OUT_DIR.
# Needs labkit's core on PYTHONPATH and gguf importable (carry its wheel where it is missing).
set -uo pipefail
out="${1:?usage: gpu_check.sh OUT_DIR}"
mkdir -p "$out"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
    --format=csv > "$out/gpu.csv" 2>&1
python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name())' \
    | tee "$out/versions.txt"
python3 scripts/gpu_check_probe.py --size-mib 1024 --repeats 5 > "$out/probe.json" 2> "$out/probe.log"
echo "probe exit $?"; cat "$out/probe.log"
python3 scripts/gpu_check_runtime.py --tokens 32 --out "$out/runtime.json" > "$out/runtime.log" 2>&1
echo "runtime exit $?"; tail -n 40 "$out/runtime.log"
python3 scripts/gpu_check_graphs.py --tokens 64 --out "$out/graphs.json" > "$out/graphs.log" 2>&1
echo "graphs exit $?"; tail -n 40 "$out/graphs.log"
python3 -m pytest -q -m gpu tests/test_probe.py tests/test_model.py tests/test_runtime_graphs.py -p no:cacheprovider > "$out/pytest_gpu.log" 2>&1
echo "pytest -m gpu exit $?"; tail -n 15 "$out/pytest_gpu.log"
