#!/usr/bin/env bash
# The GPU checks, as one command for a lent accelerator machine (about 10
# minutes on an H100/H200): MFU of ViT-B/16 + 6 x 768 decoder in bfloat16,
# KV-cache decoding, the R3 round's latency with and without prompt lookup,
# and the model and decoding tests on the GPU. Prepare here:
#
#   bash scripts/device_wheels.sh                     # .whl/
#   python -m experiments.run r3 --seeds 1 --arms r3_sft   # a trained R3 model
#
# and carry .whl, data and experiments/r3/runs/r3_sft/seed0/checkpoints.
# Results go to $OUT (default /tmp/out).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export R3JAX_DATA_DIR=$PWD/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
run() { echo "== $*"; timeout 240 "$@" 2>&1 | grep -v WARNING | tail -20; }
{
  run python3 benchmarks/mfu.py --json "$OUT/mfu.json"
  run python3 benchmarks/decode.py --json "$OUT/decode.json"
  for lookup in 0 8; do
    run python3 benchmarks/r3_latency.py \
      --workdir experiments/r3/runs/r3_sft/seed0 --lookup $lookup
  done
  run python3 -m pytest -q -x -p no:cacheprovider tests/test_decoding.py \
    tests/test_model.py
} | tee "$OUT/log.txt"
