"""Joint training: captioning (generation) + VQA + ITA (understanding) through one decoder.

  python -m r3jax.main --config configs/joint.py --workdir runs/joint
  python -m r3jax.main --config configs/joint.py:runlocal --workdir /tmp/joint
  args: runlocal (CPU smoke run), seed=N, steps=N, method=NAME, gen_weight=R
        base=DIR (start from that run or exported base, e.g.
        experiments/competence/base, with its world and model settings)
"""

from r3jax import config as config_lib

TASKS = ("caption", "vqa", "ita")


def get_config(arg: str | None = None):
  return config_lib.world_experiment(arg, TASKS)
