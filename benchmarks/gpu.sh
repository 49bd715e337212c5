#!/usr/bin/env bash
# The GPU checks and benchmarks (``make bench-gpu``, or by hand on a machine with CUDA):
# the device tests on cuda, the half-precision policy study, the layer step in bf16 and
# float32, and a SmolLM2-135M-shaped training step in bf16. Results go to $1 (default
# benchmarks/results), one file each. Uses $PYTHON (default python3) with tera importable.
set -euo pipefail
out=${1:-benchmarks/results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TERA_TEST_DEVICE=cuda "$py" -m pytest -q -p no:cacheprovider tests/test_devices.py \
  tests/tn/test_kernels.py tests/adapters/test_tera_kernel.py tests/adapters/test_engine.py tests/adapters/test_dtypes.py
"$py" benchmarks/half_policy.py --device cuda --size 4096 --tokens 2048,8192 \
  --out "$out/gpu_half_policy.md"
"$py" benchmarks/layer_step.py --device cuda --dtype bfloat16 --sizes 1024,4096 \
  --tokens 16,512,2048,8192 --memory --memory-size 4096,8192 --out "$out/gpu_layer_step_bf16.md"
"$py" benchmarks/layer_step.py --device cuda --dtype float32 --sizes 4096 \
  --tokens 512,2048,8192 --out "$out/gpu_layer_step_fp32.md"
"$py" benchmarks/model_step.py --model smollm2-shape --device cuda --dtype bfloat16 \
  --batch 8 --length 512 --reps 9 --out "$out/gpu_model_step_bf16.md"
