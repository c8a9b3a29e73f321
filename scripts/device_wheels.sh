#!/usr/bin/env bash
# Fetches, into .whl/, the wheels r3jax needs on a GPU machine whose Python
# (3.12) already holds jax[cuda], flax, optax, orbax, tensorstore, numpy,
# scipy, pandas, matplotlib, pillow, sentencepiece, einops, tqdm and absl (the
# lent H200 image does; nothing can be fetched there). Run here, with network:
#
#   bash scripts/device_wheels.sh        # then carry .whl to the GPU machine
#
# There, scripts/device_check.sh installs them with
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# The set was checked by importing r3jax and running benchmarks/mfu.py in a
# Python 3.12 environment with jax 0.11.2, flax and those packages only.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  array_record==0.8.6 dm_tree==0.1.10 docstring_parser==0.18.0 \
  googleapis_common_protos==1.76.0 grain==0.2.18 immutabledict==4.3.1 \
  ml_collections==1.1.0 portpicker==1.6.0 simple_parsing==0.1.9 \
  tensorboardX==2.6.5 tensorflow_datasets==4.9.10 \
  tensorflow_metadata==1.21.0 termcolor==3.3.0 toml==0.10.2
# promise is published as a source archive only: build its (pure Python) wheel.
python3 -m pip wheel -q --no-deps -w .whl promise==2.3
ls .whl
