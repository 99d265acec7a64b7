#!/usr/bin/env bash
# The device check of issue 10, in one go on a machine with a GPU (its image has torch, triton, numba,
# transformers; pydantic travels as wheels in .whl/). Results land in $OUT (or ./gpu-check).
set -uo pipefail
OUT=${OUT:-gpu-check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, numba, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__, 'transformers', transformers.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_crossover.py 2>&1 | tee "$OUT/test_crossover.txt" | tail -4
python3 -m bench.offspring --device cuda --legacy 2>&1 | tee "$OUT/offspring_cuda.txt"
python3 -m bench.offspring --device cuda --params 1000 2>&1 | tee "$OUT/offspring_cuda_1b.txt"
python3 -m bench.gpu 2>&1 | tee "$OUT/gpu_bfloat16.txt"
python3 -m bench.gpu --dtype float32 2>&1 | tee "$OUT/gpu_float32.txt"
python3 -m bench.offspring --device cpu 2>&1 | tee "$OUT/offspring_cpu.txt"
