#!/usr/bin/env bash
# The device check of the multi-tensor offspring kernel, in one go on a lent GPU machine whose image has torch,
# triton, numba and transformers. pydantic and pytest, where the image lacks them, come from the wheels in .whl/
# (git-ignored: name .whl in the run's carry). Each step runs on its own under a timeout, the most important
# first, so one that fails or hangs costs only its own figures, and all of them together stop by the deadline
# (330 s: the whole check stays under 6 minutes). Each step's output lands in $OUT/<step>.txt (or ./gpu-check),
# the setup and one line per step in $OUT/summary.txt, and the same lines on stdout.
#
# .whl/ is not kept between checkouts; refill it (about 11 MB) before a run with:
#   for v in 3.10 3.11 3.12 3.13; do pip download -q -d .whl -c constraints.txt --only-binary=:all: \
#       --python-version $v --platform manylinux2014_x86_64 pydantic pytest; done
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
DEADLINE=${GPU_CHECK_SECONDS:-330}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONPATH=$PWD

{
    python3 --version
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
} 2>&1 | tee "$SUMMARY"

# Only what is missing is installed, into a folder of its own; pip picks the pydantic-core wheel of this Python.
missing=()
python3 -c "import pydantic" 2>/dev/null || missing+=(pydantic)
python3 -c "import pytest" 2>/dev/null || missing+=(pytest)
if ((${#missing[@]})); then
    echo "installing from .whl/: ${missing[*]}" | tee -a "$SUMMARY"
    python3 -m pip install -q --no-index --find-links .whl --target /tmp/site --no-compile --disable-pip-version-check "${missing[@]}" 2>&1 | tail -5 | tee -a "$SUMMARY"
    export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import os, torch, triton, numba, transformers, pydantic, pytest; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__,
    'transformers', transformers.__version__, 'pydantic', pydantic.VERSION, 'pytest', pytest.__version__, 'cpus', os.cpu_count())" 2>&1 | tee -a "$SUMMARY"

# step NAME SECONDS COMMAND...: COMMAND's output into $OUT/NAME.txt, for at most SECONDS and never past the deadline.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if ((left < 15)); then
        echo "== $name: not run, the deadline has passed" | tee -a "$SUMMARY"
        return
    fi
    ((limit > left)) && limit=$left
    local began=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - began)) s (limit $limit s)" | tee -a "$SUMMARY"
    tail -n 9 "$OUT/$name.txt" | tee -a "$SUMMARY"
}

step test_crossover 120 python3 -m pytest -q -rs --noconftest -p no:cacheprovider tests/test_crossover.py
step offspring_cuda 60 python3 -m bench.offspring --device cuda
step offspring_cuda_1b 90 python3 -m bench.offspring --device cuda --params 1000
step gpu_bfloat16 90 python3 -m bench.gpu --device cuda
step gpu_float32 100 python3 -m bench.gpu --device cuda --dtype float32
step offspring_cpu 60 python3 -m bench.offspring --device cpu
echo "== all steps: $SECONDS s" | tee -a "$SUMMARY"
